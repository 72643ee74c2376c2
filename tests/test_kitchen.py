"""LaMoKitchen-v0 (Franka Kitchen, D4RL's four tasks): the real env, its scores, the scripted
demonstrations and the Minari converter on a kitchen-layout dataset."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import gymnasium as gym
import mujoco
import numpy as np
import pytest

import rllib_lamo  # noqa: F401  (registers LaMoKitchen-v0)
from rllib_lamo.data import kitchen_demos
from rllib_lamo.data.cli import main as lamo_data
from rllib_lamo.data.converters import convert_minari
from rllib_lamo.data.format import DatasetError, iter_episodes
from rllib_lamo.data.validation import validate_dataset
from rllib_lamo.envs import KITCHEN_ID, KITCHEN_TASKS
from rllib_lamo.envs.mujoco_compat import enum_comparison_is_broken
from rllib_lamo.scores import reference_scores, task_of_env

# FrankaKitchen-v1's goal joint values of the four tasks (qpos indices, values).
GOALS = {
    "microwave": ([22], [-0.75]),
    "slide cabinet": ([19], [0.37]),
    "light switch": ([17, 18], [-0.69, -0.05]),
    "kettle": ([23, 24, 25, 26, 27, 28, 29], [-0.23, 0.75, 1.62, 0.99, 0.0, 0.0, -0.06]),
}


@pytest.fixture(scope="module")
def env():
    env = gym.make(KITCHEN_ID)
    yield env
    env.close()


def _set_goal(env: gym.Env, task: str) -> None:
    indices, values = GOALS[task]
    data = env.unwrapped.data
    data.qpos[indices] = values
    data.qvel[:] = 0.0
    mujoco.mj_forward(env.unwrapped.model, data)


def test_spaces_time_limit_and_score_references(env):
    assert env.observation_space == gym.spaces.Box(-np.inf, np.inf, (59,), np.float64)
    assert env.action_space == gym.spaces.Box(-1.0, 1.0, (9,), np.float64)
    assert env.spec.max_episode_steps == 280
    assert task_of_env(KITCHEN_ID) == task_of_env("kitchen-partial-v0") == "kitchen"
    # FrankaKitchen-v1's default has seven tasks: its returns are not on the 0-4 scale.
    assert task_of_env("FrankaKitchen-v1") is None
    refs = reference_scores(KITCHEN_ID)
    assert (refs.random, refs.expert) == (0.0, 4.0)
    assert refs.normalise(1.0) == pytest.approx(25.0) and refs.normalise(4.0) == 100.0


def test_observation_is_the_state_vector_without_goals():
    env = gym.make(KITCHEN_ID, robot_noise_ratio=0.0, object_noise_ratio=0.0)
    obs, info = env.reset(seed=0)
    data = env.unwrapped.data
    np.testing.assert_array_equal(obs[:9], data.qpos[:9])  # robot joint positions
    np.testing.assert_array_equal(obs[9:18], data.qvel[:9])  # robot joint velocities
    np.testing.assert_array_equal(obs[18:39], data.qpos[9:])  # objects' positions
    np.testing.assert_array_equal(obs[39:], data.qvel[9:])  # objects' velocities
    assert sorted(info["tasks_to_complete"]) == sorted(KITCHEN_TASKS)
    env.close()
    # With the env's default observation noise the same start differs slightly per seed.
    noisy = gym.make(KITCHEN_ID)
    first, _ = noisy.reset(seed=0)
    second, _ = noisy.reset(seed=1)
    assert 0 < np.abs(first - second).max() < 0.05
    noisy.close()


def test_reward_counts_tasks_completed_each_once_and_all_four_terminate(env):
    env.reset(seed=0)
    _set_goal(env, "microwave")
    _set_goal(env, "slide cabinet")
    _, reward, terminated, truncated, info = env.step(np.zeros(9))
    assert reward == 2.0 and sorted(info["step_task_completions"]) == [
        "microwave",
        "slide cabinet",
    ]
    assert not terminated and not truncated
    _, reward, terminated, _, _ = env.step(np.zeros(9))
    assert reward == 0.0 and not terminated  # a task pays once
    _set_goal(env, "light switch")
    _set_goal(env, "kettle")
    _, reward, terminated, _, info = env.step(np.zeros(9))
    assert reward == 2.0 and terminated
    assert sorted(info["episode_task_completions"]) == sorted(KITCHEN_TASKS)


def test_the_mujoco_4_patch_applies_exactly_where_needed():
    major = int(mujoco.__version__.split(".")[0])
    assert enum_comparison_is_broken() == (major >= 4)
    from gymnasium_robotics.envs.franka_kitchen import franka_env
    from gymnasium_robotics.utils import mujoco_utils

    from rllib_lamo.envs import mujoco_compat

    gym.make(KITCHEN_ID).close()
    # Only the kitchen robot's reference is replaced; the library's own function stays.
    assert (franka_env.robot_get_obs is mujoco_compat.robot_get_obs) == (major >= 4)
    assert mujoco_utils.robot_get_obs is not mujoco_compat.robot_get_obs


def test_renders_offscreen():
    """In a subprocess: an EGL context in the test process can crash later CUDA/triton imports."""
    script = (
        "import gymnasium as gym, rllib_lamo\n"
        f"env = gym.make({KITCHEN_ID!r}, render_mode='rgb_array', width=96, height=64)\n"
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
    assert float(std) > 1.0
    # `gym.make` (videos do) checks the render mode against the class's modes.
    assert "not in the possible render_modes" not in completed.stderr


# ------------------------------------------------------------------ scripted demonstrations
def _record(kind: str, num_steps: int, num_envs: int) -> dict[int, kitchen_demos.ScriptedEpisode]:
    episodes: dict[int, kitchen_demos.ScriptedEpisode] = {}
    kitchen_demos.run_scripted_episodes(
        kind,
        num_steps=num_steps,
        seed=0,
        num_envs=num_envs,
        on_episode=lambda episode: episodes.setdefault(episode.index, episode),
    )
    return episodes


def test_scripted_demonstrations_solve_tasks_and_differ():
    episodes = _record("complete", num_steps=300, num_envs=2)
    assert len(episodes) >= 2
    for episode in episodes.values():
        assert episode.planned == KITCHEN_TASKS
        assert len(episode.completed) >= 1  # each solves at least one subtask
        assert episode.rewards.sum() == len(episode.completed)
        assert episode.obs.shape == (len(episode.rewards), 59)
        assert np.abs(episode.actions).max() <= 1.0
    # Across the episodes every task was solved at least once, in D4RL's order.
    solved = {task for episode in episodes.values() for task in episode.completed}
    assert solved == set(KITCHEN_TASKS)
    first, second = episodes[0], episodes[1]
    assert not np.array_equal(first.actions[:20], second.actions[:20])  # noise
    # An episode's content depends on its index and seed only, not on how many envs ran.
    alone = _record("complete", num_steps=1, num_envs=8)
    assert list(alone) == [0]
    np.testing.assert_array_equal(alone[0].actions, first.actions)
    np.testing.assert_array_equal(alone[0].obs, first.obs)


def test_kinds_plan_as_d4rl():
    rng = np.random.default_rng(0)
    plans = {
        kind: [kitchen_demos.plan_tasks(kind, rng) for _ in range(300)]
        for kind in kitchen_demos.KITCHEN_KINDS
    }
    assert all(plan == KITCHEN_TASKS for plan in plans["complete"])
    assert not any(plan == KITCHEN_TASKS for plan in plans["mixed"])
    assert {len(plan) for plan in plans["mixed"]} == {2, 3}
    full = np.mean([plan == KITCHEN_TASKS for plan in plans["partial"]])
    assert 0.2 < full < 0.5 and {len(plan) for plan in plans["partial"]} == {1, 2, 3, 4}
    for plan in plans["partial"] + plans["mixed"]:  # always in D4RL's order
        assert list(plan) == sorted(plan, key=KITCHEN_TASKS.index)


def test_generate_command_writes_a_kitchen_dataset(tmp_path, capsys):
    out = tmp_path / "kitchen-mixed-v0"
    assert (
        lamo_data(
            [
                "generate",
                "kitchen",
                "--kind",
                "mixed",
                "--steps",
                "1",
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    meta = validate_dataset(out)
    assert meta["env_id"] == KITCHEN_ID and meta["num_episodes"] == 1
    counts = meta["kitchen"]["episodes_by_tasks_completed"]
    assert sum(counts.values()) == 1 and counts["4"] == 0
    (episode,) = iter_episodes(out)
    assert counts[str(int(episode.rewards.sum()))] == 1
    assert meta["normalised_return"]["mean"] == pytest.approx(25.0 * episode.rewards.sum())
    assert meta["source"]["command"].startswith("lamo-data generate kitchen --kind mixed")


# ------------------------------------------------------------------------- Minari converter
def _kitchen_minari_dataset(
    dataset_id: str, observation_space: gym.spaces.Dict | None = None
) -> list[dict]:
    """A Minari dataset in the layout of D4RL/kitchen/*-v2: FrankaKitchen-v1's dict
    observations for the four tasks, recorded here with random actions."""
    import minari
    from minari.data_collector import EpisodeBuffer

    env = gym.make(KITCHEN_ID)
    kitchen = env.unwrapped.kitchen  # FrankaKitchen-v1's own env: dict observations
    rng = np.random.default_rng(0)
    episodes = []
    for index in range(2):
        obs, _ = kitchen.reset(seed=index)
        observations, actions, rewards = [obs], [], []
        for _ in range(15):
            actions.append(rng.uniform(-1, 1, 9))
            obs, reward, *_ = kitchen.step(actions[-1])
            observations.append(obs)
            rewards.append(reward)
        episodes.append(
            {
                "observations": {
                    "observation": np.array([o["observation"] for o in observations]),
                    **{
                        key: {
                            task: np.array([o[key][task] for o in observations])
                            for task in KITCHEN_TASKS
                        }
                        for key in ("achieved_goal", "desired_goal")
                    },
                },
                "actions": np.array(actions),
                "rewards": np.array(rewards),
                "terminations": np.zeros(15, bool),
                "truncations": np.arange(15) == 14,
            }
        )
    spec = dataclasses.replace(
        gym.spec("FrankaKitchen-v1"), kwargs={"tasks_to_complete": list(KITCHEN_TASKS)}
    )
    minari.create_dataset_from_buffers(
        dataset_id,
        [EpisodeBuffer(id=i, **episode) for i, episode in enumerate(episodes)],
        env=spec,
        observation_space=observation_space or kitchen.observation_space,
        action_space=kitchen.action_space,
        algorithm_name="random",
        data_format="arrow",
    )
    env.close()
    return episodes


def test_from_minari_flattens_the_kitchen_layout(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    episodes = _kitchen_minari_dataset("D4RL/kitchen/complete-v2")
    meta = convert_minari("D4RL/kitchen/complete-v2", tmp_path / "kitchen-complete")
    assert meta["env_id"] == KITCHEN_ID and meta["observation_space"]["shape"] == [59]
    assert (meta["ref_min_score"], meta["ref_max_score"]) == (0.0, 4.0)
    for source, episode in zip(episodes, iter_episodes(tmp_path / "kitchen-complete"), strict=True):
        np.testing.assert_allclose(
            episode.obs, source["observations"]["observation"][:-1], rtol=1e-6
        )
        np.testing.assert_allclose(episode.actions, source["actions"], rtol=1e-6)
    # The command, as a user with the real set would run it.
    assert lamo_data(["from-minari", "D4RL/kitchen/complete-v2", str(tmp_path / "cli")]) == 0
    validate_dataset(tmp_path / "cli")


def _edit_observation_space(folder, edit) -> None:
    """Rewrite the observation space a Minari dataset's metadata.json declares."""
    path = folder / "metadata.json"
    metadata = json.loads(path.read_text())
    space = json.loads(metadata["observation_space"])
    edit(space["subspaces"])
    metadata["observation_space"] = json.dumps(space)
    path.write_text(json.dumps(metadata))


def _observation_of_60(subspaces: dict) -> None:
    box = subspaces["observation"]
    box["shape"], box["low"], box["high"] = [60], box["low"] + [box["low"][0]], box["high"] * 1
    box["high"].append(box["high"][0])


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (
            _observation_of_60,
            r"field 'observations\['observation'\]': is Box\(-inf, inf, \(60,\), float64\), "
            r"but LaMoKitchen-v0 observes Box\(-inf, inf, \(59,\)\)",
        ),
        (
            lambda subspaces: subspaces["desired_goal"]["subspaces"].pop("kettle"),
            r"field 'observations\['desired_goal'\]': holds the tasks \['light switch', "
            r"'microwave', 'slide cabinet'\], but LaMoKitchen-v0 scores D4RL's four",
        ),
    ],
    ids=["observation-size", "other-tasks"],
)
def test_from_minari_refuses_a_kitchen_set_of_another_size_or_tasks(
    tmp_path, monkeypatch, edit, expected
):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    _kitchen_minari_dataset("kitchen/edited-v0")
    folder = tmp_path / "minari" / "kitchen" / "edited-v0" / "data"
    _edit_observation_space(folder, edit)
    with pytest.raises(DatasetError, match=f"^{folder}: {expected}"):
        convert_minari(str(folder), tmp_path / "out")
    assert not (tmp_path / "out").exists()
