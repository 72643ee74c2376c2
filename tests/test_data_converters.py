"""Converters on real inputs: Minari datasets, D4RL-layout HDF5 files, RLlib recordings."""

from __future__ import annotations

import shutil
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

from rllib_lamo.data.cli import main
from rllib_lamo.data.converters import convert_d4rl, convert_minari, iter_d4rl_episodes
from rllib_lamo.data.format import DatasetError, iter_episodes, read_metadata
from rllib_lamo.data.rllib_output import convert_rllib
from rllib_lamo.data.validation import validate_dataset


def _random_rollouts(env_id: str, episodes: int, seed: int, max_steps: int = 40) -> list[dict]:
    """Real env episodes with random actions: T+1 observations, T actions (Minari's layout)."""
    env = gym.wrappers.TimeLimit(gym.make(env_id).unwrapped, max_episode_steps=max_steps)
    env.action_space.seed(seed)
    rollouts = []
    for index in range(episodes):
        obs, _ = env.reset(seed=seed + index)
        observations, actions, rewards, terms, truncs = [obs], [], [], [], []
        while True:
            action = env.action_space.sample()
            obs, reward, terminated, truncated, _ = env.step(action)
            observations.append(obs)
            actions.append(action)
            rewards.append(reward)
            terms.append(terminated)
            truncs.append(truncated)
            if terminated or truncated:
                break
        rollouts.append(
            {
                "observations": np.array(observations),
                "actions": np.array(actions),
                "rewards": np.array(rewards),
                "terminations": np.array(terms),
                "truncations": np.array(truncs),
            }
        )
    env.close()
    return rollouts


# ------------------------------------------------------------------------------------ Minari
@pytest.mark.parametrize("data_format", ["arrow", "hdf5"])
def test_from_minari_any_backend(tmp_path, monkeypatch, data_format):
    import minari
    from minari.data_collector import EpisodeBuffer

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    rollouts = _random_rollouts("Hopper-v5", episodes=4, seed=3)
    buffers = [EpisodeBuffer(id=i, **r) for i, r in enumerate(rollouts)]
    dataset_id = f"hopper/random-{data_format}-v0"
    minari.create_dataset_from_buffers(
        dataset_id, buffers, env="Hopper-v5", algorithm_name="random", data_format=data_format
    )
    meta = convert_minari(dataset_id, tmp_path / "by-id")
    assert meta["env_id"] == "Hopper-v5" and meta["ref_max_score"] == pytest.approx(3234.3)
    assert meta["num_steps"] == sum(len(r["rewards"]) for r in rollouts)
    episodes = list(iter_episodes(tmp_path / "by-id"))
    for rollout, episode in zip(rollouts, episodes, strict=True):
        np.testing.assert_allclose(episode.obs, rollout["observations"][:-1], rtol=1e-6)
        np.testing.assert_allclose(episode.actions, rollout["actions"], rtol=1e-6)
        assert episode.terminated == bool(rollout["terminations"][-1])
    # The same dataset through its folder, and through the command.
    folder = tmp_path / "minari" / dataset_id
    assert main(["from-minari", str(folder), str(tmp_path / "by-path")]) == 0
    assert read_metadata(tmp_path / "by-path")["num_steps"] == meta["num_steps"]
    validate_dataset(tmp_path / "by-path")


def test_from_minari_unknown_id_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    assert main(["from-minari", "nothing/here-v0", str(tmp_path / "out")]) == 1
    assert "no such local Minari dataset" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# -------------------------------------------------------------------------------------- D4RL
def _write_d4rl(path: Path, rollouts: list[dict], **override: np.ndarray) -> None:
    """D4RL's flat layout: rows of all episodes back to back, terminals/timeouts flags."""
    import h5py

    columns = {
        "observations": np.concatenate([r["observations"][:-1] for r in rollouts]),
        "actions": np.concatenate([r["actions"] for r in rollouts]),
        "rewards": np.concatenate([r["rewards"] for r in rollouts]),
        "terminals": np.concatenate([r["terminations"] for r in rollouts]),
        "timeouts": np.concatenate([r["truncations"] for r in rollouts]),
        "next_observations": np.concatenate([r["observations"][1:] for r in rollouts]),
    }
    columns.update(override)
    with h5py.File(path, "w") as file:
        for name, values in columns.items():
            if values is not None:
                file.create_dataset(name, data=values)


@pytest.fixture(scope="module")
def hopper_rollouts() -> list[dict]:
    return _random_rollouts("Hopper-v5", episodes=6, seed=11, max_steps=25)


def test_from_d4rl_splits_episodes_across_chunks(tmp_path, hopper_rollouts):
    partial = {k: v[:5] for k, v in _random_rollouts("Hopper-v5", 1, 99, max_steps=30)[0].items()}
    partial["truncations"] = np.zeros(5, bool)
    partial["terminations"] = np.zeros(5, bool)
    partial["observations"] = np.concatenate([partial["observations"], partial["observations"][:1]])
    _write_d4rl(tmp_path / "hopper.hdf5", [*hopper_rollouts, partial])
    chunked = list(iter_d4rl_episodes(tmp_path / "hopper.hdf5", chunk_steps=7))
    assert len(chunked) == len(hopper_rollouts)  # the unfinished tail is dropped
    for rollout, (obs, _actions, rewards, terminated, _first) in zip(
        hopper_rollouts, chunked, strict=True
    ):
        np.testing.assert_array_equal(obs, rollout["observations"][:-1].astype(np.float32))
        np.testing.assert_array_equal(rewards, rollout["rewards"].astype(np.float32))
        assert terminated == bool(rollout["terminations"][-1])
    code = main(
        [
            "from-d4rl",
            str(tmp_path / "hopper.hdf5"),
            str(tmp_path / "out"),
            "--env-id",
            "hopper-medium-v2",
        ]
    )
    assert code == 0
    meta = validate_dataset(tmp_path / "out")
    assert meta["num_episodes"] == len(hopper_rollouts)
    assert meta["action_space"]["low"] == [-1.0, -1.0, -1.0]
    assert meta["normalised_return"] is not None


@pytest.mark.parametrize(
    ("override", "field_name"),
    [
        ({"timeouts": None}, "timeouts"),
        ({"observations": "nan"}, "obs"),
        ({"actions": "outside"}, "actions"),
        ({"rewards": "text"}, "rewards"),
        ({"terminals": "short"}, "terminals"),
        ({"timeouts": "text"}, "timeouts"),
    ],
)
def test_from_d4rl_refuses_bad_files_and_writes_nothing(
    tmp_path, hopper_rollouts, override, field_name
):
    name, change = next(iter(override.items()))
    flat = {
        "observations": np.concatenate([r["observations"][:-1] for r in hopper_rollouts]),
        "actions": np.concatenate([r["actions"] for r in hopper_rollouts]),
        "rewards": np.concatenate([r["rewards"] for r in hopper_rollouts]),
        "terminals": np.concatenate([r["terminations"] for r in hopper_rollouts]),
    }
    values = {
        None: None,
        "nan": np.where(
            np.arange(flat["observations"].shape[1]) == 2, np.nan, flat["observations"]
        ),
        "outside": flat["actions"] * 4.0,
        "text": np.array([b"x"] * len(flat["rewards"])),  # strings where numbers belong
        "short": flat["terminals"][:-3] if name == "terminals" else None,
    }[change]
    path = tmp_path / "bad.hdf5"
    _write_d4rl(path, hopper_rollouts, **{name: values})
    with pytest.raises(DatasetError, match=f"^{path}.*field '{field_name}'"):
        convert_d4rl(path, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.hdf5"]


# ------------------------------------------------------------------------------------- RLlib
def _pack_numpy(obj):
    """msgpack_numpy's wire format for arrays and numpy scalars (what RLlib packs with)."""
    if isinstance(obj, np.ndarray):
        return {
            b"nd": True,
            b"type": obj.dtype.str,
            b"kind": b"",
            b"shape": obj.shape,
            b"data": obj.tobytes(),
        }
    if isinstance(obj, np.bool_ | np.number):
        return {b"nd": False, b"type": obj.dtype.str, b"data": obj.tobytes()}
    raise TypeError(type(obj))


def _recorded_episode_chunks(env_id: str, seed: int, steps: int, cut_every: int):
    """Real SingleAgentEpisode chunks as an env runner makes them (cut with a lookback)."""
    from ray.rllib.env.single_agent_episode import SingleAgentEpisode

    env = gym.make(env_id)
    env.action_space.seed(seed)
    obs, _ = env.reset(seed=seed)
    episode = SingleAgentEpisode(
        observation_space=env.observation_space, action_space=env.action_space
    )
    episode.add_env_reset(obs)
    chunks, full = [], {"obs": [obs], "actions": [], "rewards": []}
    for step in range(1, steps + 1):
        action = env.action_space.sample()
        obs, reward, terminated, truncated, _ = env.step(action)
        truncated = truncated or step == steps
        episode.add_env_step(obs, action, reward, terminated=terminated, truncated=truncated)
        full["obs"].append(obs)
        full["actions"].append(action)
        full["rewards"].append(reward)
        if terminated or truncated:
            chunks.append(episode)
            break
        if step % cut_every == 0:
            chunks.append(episode)
            episode = episode.cut(len_lookback_buffer=1)
    env.close()
    return chunks, full


def _write_with_ray(rows: list[dict], folder: Path) -> None:
    import ray

    ray.data.from_items(rows).write_parquet(str(folder))


def test_from_rllib_episode_layout(ray_cluster, tmp_path):
    """Chunks over several runs, each run repeating the earlier ones (as RLlib 2.60 writes)."""
    import msgpack

    chunks_a, full_a = _recorded_episode_chunks("Pendulum-v1", seed=1, steps=30, cut_every=12)
    chunks_b, _ = _recorded_episode_chunks("Pendulum-v1", seed=2, steps=30, cut_every=12)
    packed = [msgpack.packb(c.get_state(), default=_pack_numpy) for c in chunks_a]
    unfinished = msgpack.packb(chunks_b[0].get_state(), default=_pack_numpy)
    recording = tmp_path / "recording" / "pendulumenv"
    _write_with_ray([{"item": packed[0]}], recording / "run-000000-00001")
    _write_with_ray([{"item": p} for p in packed[:2]], recording / "run-000000-00002")
    _write_with_ray([{"item": p} for p in [*packed, unfinished]], recording / "run-000000-00003")

    meta = convert_rllib(tmp_path / "recording", tmp_path / "out")  # spaces from the episodes
    assert meta["num_episodes"] == 1
    assert meta["source"]["dropped_unfinished_episodes"] == 1
    assert meta["source"]["repeated_steps_skipped"] == 12 + 12 + 12
    (episode,) = iter_episodes(tmp_path / "out")
    np.testing.assert_allclose(episode.obs, np.array(full_a["obs"][:-1]), rtol=1e-6)
    np.testing.assert_allclose(episode.rewards, np.array(full_a["rewards"]), rtol=1e-6)
    # RLlib's default normalize_actions=True: env actions = unsquash(clip(a, -1, 1)).
    expected = np.clip(np.clip(np.array(full_a["actions"]), -1, 1) * 2.0, -2.0, 2.0)
    np.testing.assert_allclose(episode.actions, expected, rtol=1e-6)
    assert not episode.terminated


def test_from_rllib_column_layout(ray_cluster, tmp_path):
    """Step rows with compressed observations, as `output_write_episodes=False` writes them."""
    from ray.rllib.utils.compression import pack

    rng = np.random.default_rng(0)
    lengths = {"ep-a": 9, "ep-b": 5, "ep-c": 4}
    rows = {}
    for eps_id, length in lengths.items():
        obs = rng.normal(size=(length + 1, 4)).astype(np.float32)
        rows[eps_id] = [
            {
                "eps_id": eps_id,
                "agent_id": None,
                "module_id": None,
                "obs": pack(obs[t]),
                "actions": int(rng.integers(2)),
                "rewards": 1.0,
                "new_obs": pack(obs[t + 1]),
                "terminateds": eps_id == "ep-a" and t == length - 1,
                "truncateds": eps_id == "ep-b" and t == length - 1,
                "action_logp": -0.69,
            }
            for t in range(length)
        ]
    recording = tmp_path / "rec" / "cartpoleenv"
    first = rows["ep-a"][:4] + rows["ep-b"]
    _write_with_ray(first, recording / "run-000000-00001")
    _write_with_ray(first + rows["ep-a"][4:] + rows["ep-c"][:2], recording / "run-000000-00002")
    meta = convert_rllib(tmp_path / "rec", tmp_path / "out", env_id="CartPole-v1")
    assert meta["num_episodes"] == 2 and meta["num_steps"] == 14
    assert meta["source"]["dropped_unfinished_episodes"] == 1
    by_id = {e.eps_id: e for e in iter_episodes(tmp_path / "out")}
    assert by_id["ep-a"].terminated and not by_id["ep-b"].terminated
    assert by_id["ep-a"].actions.dtype == np.int64 and len(by_id["ep-a"].obs) == 9


def test_from_rllib_refuses_foreign_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "rec").mkdir()
    pq.write_table(pa.table({"x": [1, 2]}), tmp_path / "rec" / "part.parquet")
    with pytest.raises(DatasetError, match="part.parquet: field 'eps_id'"):
        convert_rllib(tmp_path / "rec", tmp_path / "out", env_id="CartPole-v1")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("write_episodes", [False, True])
def test_from_rllib_real_recording(ray_cluster, tmp_path, write_episodes):
    """A recording made by RLlib's own env runner (~20 s; RLlib needs msgpack_numpy to write
    the episode layout, which Ray does not install: that case is skipped without it)."""
    if write_episodes:
        pytest.importorskip("msgpack_numpy")
    from ray.rllib.algorithms.ppo import PPOConfig

    config = (
        PPOConfig()
        .environment("CartPole-v1")
        .env_runners(
            num_env_runners=0,
            rollout_fragment_length=64,
            batch_mode="complete_episodes" if write_episodes else "truncate_episodes",
        )
        .offline_data(output=str(tmp_path / "rec"), output_write_episodes=write_episodes)
    )
    algo = config.build_algo()
    try:
        for _ in range(3):
            algo.env_runner.sample(num_timesteps=100)
    finally:
        algo.stop()
    meta = convert_rllib(tmp_path / "rec", tmp_path / "out", env_id="CartPole-v1")
    assert meta["num_episodes"] >= 1
    validate_dataset(tmp_path / "out")
    shutil.rmtree(tmp_path / "rec")
