"""Reacher2d-v0, LaMo's sparse-reward arm: the real MuJoCo env, its facts, reward and scores."""

from __future__ import annotations

import os
import subprocess
import sys

import gymnasium as gym
import mujoco
import numpy as np
import pytest

import rllib_lamo  # noqa: F401  (registers Reacher2d-v0)
from rllib_lamo.envs import REACHER2D_ID
from rllib_lamo.scores import reference_scores, task_of_env


def _place(env: gym.Env, angles: tuple[float, float], target: tuple[float, float]) -> None:
    """Puts the arm at rest at `angles` and the target at `target`."""
    base = env.unwrapped
    base.set_state(np.array(angles, dtype=np.float64), np.zeros(2))
    base.data.mocap_pos[0, :2] = target
    mujoco.mj_forward(base.model, base.data)


@pytest.fixture
def env():
    env = gym.make(REACHER2D_ID)
    env.reset(seed=0)
    yield env
    env.close()


def test_spaces_and_physics_are_the_papers(env):
    assert env.observation_space.shape == (12,)
    assert env.action_space == gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    assert env.spec.max_episode_steps == 100
    model = env.unwrapped.model
    assert model.opt.timestep == 0.01 and env.unwrapped.frame_skip == 15
    assert model.opt.integrator == mujoco.mjtIntegrator.mjINT_RK4
    assert np.all(model.opt.gravity == 0)
    assert model.nq == 2 and np.all(model.dof_damping == 1.0)
    assert list(model.jnt_limited) == [0, 1]
    np.testing.assert_allclose(model.jnt_range[1], [-2.0, 3.5])
    np.testing.assert_allclose(model.actuator_gear[:, 0], [1.0, 1.0])
    np.testing.assert_allclose(model.actuator_ctrlrange, [[-1, 1], [-1, 1]])
    # Links 0.6 and 0.4 (+ the fingertip's end cap, 0.05): stretched out, then folded back.
    _place(env, (-0.785, 0.785), (0.5, 0.0))
    np.testing.assert_allclose(env.unwrapped.fingertip, [1.05, 0.0], atol=1e-3)
    _place(env, (-0.785, 0.785 + np.pi), (0.5, 0.0))
    np.testing.assert_allclose(env.unwrapped.fingertip, [0.15, 0.0], atol=1e-3)


@pytest.mark.parametrize(
    ("offset", "reward"),
    [
        ((0.0, 0.0), 1.0),
        ((0.05, -0.04), 1.0),  # L1 0.09
        ((0.06, 0.06), 0.0),  # L2 0.085 but L1 0.12: the paper's measure is L1
        ((0.3, 0.0), 0.0),
    ],
)
def test_reward_is_one_on_the_target_by_l1_distance(env, offset, reward):
    _place(env, (0.3, -0.5), (0.0, 0.0))
    tip = env.unwrapped.fingertip
    _place(env, (0.3, -0.5), tuple(tip + np.array(offset)))
    # At rest, with no torque and no gravity, the arm stays where it is.
    obs, r, terminated, truncated, info = env.step(np.zeros(2, np.float32))
    assert r == reward == info["sparse_reward"]
    assert info["distance"] == pytest.approx(sum(abs(o) for o in offset), abs=1e-6)
    assert not terminated and not truncated


def test_dense_reward_option_subtracts_the_distance_and_keeps_the_sparse_one():
    env = gym.make(REACHER2D_ID, reward_type="dense")
    env.reset(seed=0)
    _place(env, (0.3, -0.5), (0.0, 0.0))
    tip = env.unwrapped.fingertip
    _place(env, (0.3, -0.5), tuple(tip + np.array([0.03, 0.0])))
    _, reward, *_, info = env.step(np.zeros(2, np.float32))
    assert info["sparse_reward"] == 1.0 and reward == pytest.approx(1.0 - 0.03, abs=1e-6)
    with pytest.raises(ValueError, match=r"Reacher2d-v0: `reward_type` must be one of"):
        gym.make(REACHER2D_ID, reward_type="shaped")


def test_reset_distribution(env):
    targets, angles = [], []
    for seed in range(400):
        obs, _ = env.reset(seed=seed)
        targets.append(obs[8:10])
        angles.append(env.unwrapped.data.qpos.copy())
        assert np.all(env.unwrapped.data.qvel == 0) and np.all(obs[4:6] == 0)
    radii = np.linalg.norm(targets, axis=1)
    angles = np.array(angles)
    assert radii.min() >= 0.5 and radii.max() <= 1.0
    # Uniform by area: half of the annulus' area lies within sqrt((0.25 + 1) / 2).
    assert 0.42 < np.mean(radii < np.sqrt(0.625)) < 0.58
    polar = np.arctan2(*np.array(targets).T[::-1])
    assert np.histogram(polar, bins=4, range=(-np.pi, np.pi))[0].min() > 70
    assert np.abs(angles).max() <= 2.0 and np.abs(angles).min(axis=0).max() < 0.1
    assert np.all(angles.max(axis=0) > 1.9) and np.all(angles.min(axis=0) < -1.9)


def test_observation_layout(env):
    env.reset(seed=5)
    rng = np.random.default_rng(0)
    for _ in range(7):
        obs, *_ = env.step(rng.uniform(-1, 1, 2).astype(np.float32))
    base = env.unwrapped
    q, dq = base.data.qpos, base.data.qvel
    assert base.dt == pytest.approx(0.15)
    np.testing.assert_allclose(obs[0:2], np.sin(q))
    np.testing.assert_allclose(obs[2:4], np.cos(q))
    np.testing.assert_allclose(obs[4:6], 0.15 * dq)
    assert np.any(obs[4:6] != 0)
    np.testing.assert_allclose(obs[6:8], base.fingertip)
    np.testing.assert_allclose(obs[8:10], base.target)
    np.testing.assert_allclose(obs[10:12], obs[6:8] - obs[8:10])


def test_same_seed_same_episode():
    def run(seed: int) -> tuple[np.ndarray, list[float]]:
        env = gym.make(REACHER2D_ID)
        obs, _ = env.reset(seed=seed)
        env.action_space.seed(seed)
        observations, rewards = [obs], []
        done = False
        while not done:
            obs, reward, terminated, truncated, _ = env.step(env.action_space.sample())
            observations.append(obs)
            rewards.append(reward)
            done = terminated or truncated
        return np.array(observations), rewards

    first, second, other = run(7), run(7), run(8)
    assert len(first[1]) == 100  # truncated by the time limit, never terminated
    np.testing.assert_array_equal(first[0], second[0])
    assert first[1] == second[1]
    assert not np.array_equal(first[0][0], other[0][0])


def test_renders_offscreen():
    """In a subprocess: an EGL context in the test process can crash later CUDA/triton imports."""
    script = (
        "import gymnasium as gym, numpy as np, rllib_lamo\n"
        f"env = gym.make({REACHER2D_ID!r}, render_mode='rgb_array', width=96, height=64)\n"
        "env.reset(seed=0)\n"
        "frame = env.render()\n"
        "print(frame.shape, frame.dtype, float(frame.std()))\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    *shape_words, dtype, std = completed.stdout.split()
    assert " ".join(shape_words) == "(64, 96, 3)" and dtype == "uint8"
    assert float(std) > 1.0  # the arm and target are drawn, not a blank image


def test_scores_map_reacher2d_to_the_papers_references():
    assert task_of_env(REACHER2D_ID) == "reacher2d"
    refs = reference_scores(REACHER2D_ID)
    assert (refs.random, refs.expert) == (0.0, 100.0)
    assert refs.normalise(33.0) == pytest.approx(33.0)  # return / 100, in percent
    # gymnasium's dense-reward Reacher is another task, without references.
    assert reference_scores("Reacher-v5") is None


def test_a_reacher2d_dataset_with_nan_rewards_is_refused_naming_file_and_field(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from rllib_lamo.data.format import DatasetError, list_shards
    from rllib_lamo.data.validation import validate_dataset
    from rllib_lamo.data.writer import EpisodeDatasetWriter

    env = gym.make(REACHER2D_ID)
    rng = np.random.default_rng(0)
    with EpisodeDatasetWriter(
        tmp_path / "reacher2d-nan",
        observation_space=env.observation_space,
        action_space=env.action_space,
        env_id=REACHER2D_ID,
        source={"generator": "test"},
    ) as writer:
        for seed in range(2):
            obs, _ = env.reset(seed=seed)
            actions = rng.uniform(-1, 1, (100, 2)).astype(np.float32)
            observations, rewards = [], []
            for action in actions:
                observations.append(obs)
                obs, reward, *_ = env.step(action)
                rewards.append(reward)
            writer.add_episode(np.array(observations), actions, np.array(rewards), False)
    shard = list_shards(tmp_path / "reacher2d-nan")[0]
    table = pq.read_table(shard)
    rewards = table.column("rewards").to_pylist()
    rewards[1][50] = float("nan")
    index = table.schema.get_field_index("rewards")
    table = table.set_column(index, "rewards", pa.array(rewards, table.schema.field(index).type))
    pq.write_table(table, shard)
    with pytest.raises(DatasetError, match=r"episodes-00000\.parquet.*field 'rewards'.*NaN"):
        validate_dataset(tmp_path / "reacher2d-nan")
