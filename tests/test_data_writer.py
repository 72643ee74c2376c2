"""Writing the shard format: round trips, metadata, atomic folders, checks, content hash."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rllib_lamo.data.format import (
    CONTENT_HASH_KEY,
    EPISODE_COLUMNS,
    FORMAT,
    METADATA_KEYS,
    DatasetError,
    content_hash,
    iter_episodes,
    list_shards,
    read_metadata,
)
from rllib_lamo.data.testing import toy_episodes, toy_spaces, write_toy_dataset
from rllib_lamo.data.validation import validate_dataset
from rllib_lamo.data.writer import EpisodeDatasetWriter


def test_round_trip_keeps_every_episode_and_step(toy_dataset):
    expected = toy_episodes(25)
    got = list(iter_episodes(toy_dataset))
    assert [e.eps_id for e in got] == [e.eps_id for e in expected]
    for want, have in zip(expected, got, strict=True):
        np.testing.assert_array_equal(have.obs, want.obs)
        np.testing.assert_array_equal(have.actions, want.actions)
        np.testing.assert_array_equal(have.rewards, want.rewards)
        assert have.terminated == want.terminated


def test_metadata_has_every_key_and_streaming_statistics(toy_dataset):
    meta = read_metadata(toy_dataset)
    assert set(METADATA_KEYS) <= set(meta)
    assert meta["format"] == FORMAT
    episodes = toy_episodes(25)
    all_obs = np.concatenate([e.obs for e in episodes]).astype(np.float64)
    returns = np.array([e.rewards.sum(dtype=np.float64) for e in episodes])
    assert meta["num_episodes"] == 25
    assert meta["num_steps"] == len(all_obs)
    np.testing.assert_allclose(meta["obs_mean"], all_obs.mean(axis=0), rtol=1e-9)
    np.testing.assert_allclose(meta["obs_std"], all_obs.std(axis=0), rtol=1e-9)
    assert meta["return"]["mean"] == pytest.approx(returns.mean())
    assert meta["return"]["max"] == pytest.approx(returns.max())
    # Hopper's D4RL constants come from rllib_lamo.scores.
    assert meta["ref_min_score"] == pytest.approx(-20.272305)
    expected_norm = 100 * (returns.mean() + 20.272305) / (3234.3 + 20.272305)
    assert meta["normalised_return"]["mean"] == pytest.approx(expected_norm)
    assert meta["observation_space"]["dtype"] == "float32"
    assert meta["created_with"]["pyarrow"] == pa.__version__


def test_shards_are_bounded_and_use_the_agreed_schema(toy_dataset):
    shards = list_shards(toy_dataset)
    assert len(shards) > 2
    assert [Path(s).name for s in shards] == [
        f"episodes-{i:05d}.parquet" for i in range(len(shards))
    ]
    for shard in shards:
        table = pq.read_table(shard)
        assert tuple(table.column_names) == EPISODE_COLUMNS
        assert sum(table.column("length").to_pylist()) < 120 + 30  # bound + one episode
        assert pq.ParquetFile(shard).metadata.row_group(0).column(1).compression == "ZSTD"
    assert validate_dataset(toy_dataset)["num_episodes"] == 25


def test_discrete_actions_round_trip(tmp_path):
    meta = write_toy_dataset(tmp_path / "discrete", num_episodes=6, discrete_actions=4)
    assert meta["action_space"] == {"type": "Discrete", "n": 4}
    table = _first_shard(tmp_path / "discrete")
    assert table.schema.field("actions").type == pa.list_(pa.int64())
    validate_dataset(tmp_path / "discrete")
    assert [e.actions.dtype for e in iter_episodes(tmp_path / "discrete")][0] == np.int64


def test_failed_write_leaves_nothing_behind(tmp_path):
    obs_space, act_space = toy_spaces()
    with pytest.raises(RuntimeError):
        with EpisodeDatasetWriter(
            tmp_path / "out",
            observation_space=obs_space,
            action_space=act_space,
            max_steps_per_shard=10,
        ) as writer:
            writer.add_episodes(toy_episodes(5))  # several shards already on disk
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_existing_output_is_refused_unless_overwrite(tmp_path):
    write_toy_dataset(tmp_path / "out", num_episodes=3)
    with pytest.raises(FileExistsError):
        write_toy_dataset(tmp_path / "out", num_episodes=3)
    obs_space, act_space = toy_spaces()
    with EpisodeDatasetWriter(
        tmp_path / "out", observation_space=obs_space, action_space=act_space, overwrite=True
    ) as writer:
        writer.add_episodes(toy_episodes(2, seed=5))
    assert read_metadata(tmp_path / "out")["num_episodes"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_writer_refuses_bad_episodes_before_writing(tmp_path):
    obs_space, act_space = toy_spaces()
    episode = toy_episodes(1)[0]
    cases = {
        "obs": dict(obs=np.where(np.arange(3) == 1, np.nan, episode.obs)),
        "actions": dict(actions=episode.actions * 3),
        "length": dict(
            obs=episode.obs[:0], actions=episode.actions[:0], rewards=episode.rewards[:0]
        ),
    }
    for field_name, change in cases.items():
        args = {
            "obs": episode.obs,
            "actions": episode.actions,
            "rewards": episode.rewards,
            **change,
        }
        with EpisodeDatasetWriter(
            tmp_path / "bad", observation_space=obs_space, action_space=act_space
        ) as writer:
            with pytest.raises(DatasetError, match=f"source-x: field '{field_name}'"):
                writer.add_episode(**args, terminated=False, source="source-x")
            writer.abort()
    assert not (tmp_path / "bad").exists()


def test_writer_stores_the_content_hash_of_its_shards(toy_dataset, tmp_path):
    meta = read_metadata(toy_dataset)
    assert len(meta[CONTENT_HASH_KEY]) == 64
    # The same definition computed from the files, as for datasets written before the key.
    old_style = {key: value for key, value in meta.items() if key != CONTENT_HASH_KEY}
    assert content_hash(toy_dataset, old_style) == meta[CONTENT_HASH_KEY]
    assert content_hash(toy_dataset) == meta[CONTENT_HASH_KEY]
    other = write_toy_dataset(tmp_path / "other", num_episodes=24, env_id="Hopper-v5")
    assert other[CONTENT_HASH_KEY] != meta[CONTENT_HASH_KEY]


def _first_shard(path: Path) -> pa.Table:
    return pq.read_table(list_shards(path)[0])
