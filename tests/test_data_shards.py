"""The shard format: writing, reading back, metadata, validation errors, Ray Data reads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rllib_lamo.data.shards import (
    EPISODE_COLUMNS,
    FORMAT,
    METADATA_KEYS,
    DatasetError,
    EpisodeDatasetWriter,
    iter_episodes,
    list_shards,
    read_metadata,
    validate_dataset,
    validate_episode_batch,
)
from rllib_lamo.data.testing import toy_episodes, toy_spaces, write_toy_dataset

BOX_ACTIONS = {"type": "Box", "shape": [2], "dtype": "float32", "low": [-1, -1], "high": [1, 1]}


@pytest.fixture(scope="module")
def toy_dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shards") / "toy-v0"
    write_toy_dataset(out, num_episodes=25, max_steps_per_shard=120, env_id="Hopper-v5")
    return out


def _first_shard(path: Path) -> pa.Table:
    return pq.read_table(list_shards(path)[0])


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


# ------------------------------------------------------------------------------- validation
def _with_column(table: pa.Table, name: str, values: pa.Array) -> pa.Table:
    return table.set_column(table.schema.get_field_index(name), name, values)


def _lists(rows: list, inner: pa.DataType) -> pa.Array:
    return pa.array(rows, type=pa.list_(inner))


def _corruptions(table: pa.Table) -> dict[str, tuple[str, pa.Table]]:
    """(field the error must name, corrupted table) per kind of bad data."""
    obs = table.column("obs").to_pylist()
    actions = table.column("actions").to_pylist()
    rewards = table.column("rewards").to_pylist()
    ragged = [list(map(list, episode)) for episode in obs]
    ragged[1][2] = ragged[1][2][:-1]
    nan_obs = [list(map(list, episode)) for episode in obs]
    nan_obs[0][0][0] = float("nan")
    outside = [list(map(list, episode)) for episode in actions]
    outside[1][0][1] = 1.5
    short = table.slice(0, 1)
    short = _with_column(short, "obs", _lists([[]], pa.list_(pa.float32())))
    short = _with_column(short, "actions", _lists([[]], pa.list_(pa.float32())))
    short = _with_column(short, "rewards", _lists([[]], pa.float32()))
    short = _with_column(short, "length", pa.array([0], pa.int64()))
    short = _with_column(short, "return", pa.array([0.0]))
    return {
        "missing column": ("rewards", table.drop_columns(["rewards"])),
        "wrong dtype": (
            "obs",
            _with_column(table, "obs", _lists(obs, pa.list_(pa.float64()))),
        ),
        "inconsistent obs dims": (
            "obs",
            _with_column(table, "obs", _lists(ragged, pa.list_(pa.float32()))),
        ),
        "nan": ("obs", _with_column(table, "obs", _lists(nan_obs, pa.list_(pa.float32())))),
        "inf reward": (
            "rewards",
            _with_column(
                table, "rewards", _lists([[float("inf")] + r[1:] for r in rewards], pa.float32())
            ),
        ),
        "shorter than one step": ("length", short),
        "action outside space": (
            "actions",
            _with_column(table, "actions", _lists(outside, pa.list_(pa.float32()))),
        ),
        "return not sum": (
            "return",
            _with_column(table, "return", pa.array(np.array(table["return"]) + 5.0)),
        ),
        "duplicate ids": (
            "eps_id",
            _with_column(table, "eps_id", pa.array(["same"] * table.num_rows)),
        ),
    }


@pytest.mark.parametrize(
    "kind",
    [
        "missing column",
        "wrong dtype",
        "inconsistent obs dims",
        "nan",
        "inf reward",
        "shorter than one step",
        "action outside space",
        "return not sum",
        "duplicate ids",
    ],
)
def test_bad_batches_are_refused_naming_source_and_field(toy_dataset, kind):
    table = _first_shard(toy_dataset)
    field_name, bad = _corruptions(table)[kind]
    with pytest.raises(DatasetError, match=f"^shard-7.parquet: field '{field_name}'"):
        validate_episode_batch(
            bad, source="shard-7.parquet", obs_dim=3, action_space_dict=BOX_ACTIONS
        )


def test_plain_lists_pandas_and_numpy_batches_are_accepted(toy_dataset):
    table = _first_shard(toy_dataset)
    plain = _with_column(
        table, "obs", _lists(table.column("obs").to_pylist(), pa.list_(pa.float32()))
    )
    steps = sum(table.column("length").to_pylist())
    for batch in (
        plain,
        table.to_pandas(),
        {k: v.to_numpy() for k, v in table.to_pandas().items()},
    ):
        assert (
            validate_episode_batch(batch, source="x", obs_dim=3, action_space_dict=BOX_ACTIONS)
            == steps
        )
    nan_batch = table.to_pandas()
    nan_batch.at[0, "rewards"] = np.full(len(nan_batch.at[0, "rewards"]), np.nan, np.float32)
    with pytest.raises(DatasetError, match="field 'rewards'.*NaN"):
        validate_episode_batch(nan_batch, source="x", obs_dim=3, action_space_dict=BOX_ACTIONS)


def test_validate_dataset_names_the_bad_shard_file(tmp_path):
    write_toy_dataset(tmp_path / "d", num_episodes=12, max_steps_per_shard=60)
    shard = list_shards(tmp_path / "d")[1]
    table = pq.read_table(shard)
    pq.write_table(table.drop_columns(["terminated"]), shard)
    with pytest.raises(DatasetError, match=f"^{shard}: field 'terminated'"):
        validate_dataset(tmp_path / "d")
    pq.write_table(table.slice(0, 0), shard)
    with pytest.raises(DatasetError, match=f"^{shard}: holds no episodes"):
        validate_dataset(tmp_path / "d")
    # A shard whose episodes have another observation width than the rest of the dataset.
    write_toy_dataset(tmp_path / "wider", num_episodes=3, obs_dim=4)
    pq.write_table(pq.read_table(list_shards(tmp_path / "wider")[0]), shard)
    with pytest.raises(DatasetError, match=f"^{shard}: field 'obs': has width 4, expected 3"):
        validate_dataset(tmp_path / "d")


def test_read_metadata_errors_name_the_file(tmp_path):
    with pytest.raises(DatasetError, match="metadata.json: missing"):
        read_metadata(tmp_path)
    (tmp_path / "metadata.json").write_text("{not json")
    with pytest.raises(DatasetError, match="not valid JSON"):
        read_metadata(tmp_path)
    (tmp_path / "metadata.json").write_text(json.dumps({"format": FORMAT}))
    with pytest.raises(DatasetError, match="field 'name'"):
        read_metadata(tmp_path)


def test_metadata_and_shards_read_through_a_uri(toy_dataset):
    uri = f"file://{toy_dataset}"
    assert read_metadata(uri)["num_episodes"] == 25
    assert validate_dataset(uri)["num_steps"] == read_metadata(toy_dataset)["num_steps"]


def test_ray_data_reads_a_shard_folder(ray_cluster, toy_dataset):
    import ray

    # metadata.json is skipped by read_parquet's default file extensions.
    dataset = ray.data.read_parquet(str(toy_dataset)).materialize()
    assert dataset.count() == 25
    meta = read_metadata(toy_dataset)
    steps = 0
    for batch_format in ("pyarrow", "pandas", "numpy"):
        batch = dataset.take_batch(25, batch_format=batch_format)
        steps = validate_episode_batch(
            batch, source=str(toy_dataset), obs_dim=3, action_space_dict=meta["action_space"]
        )
        assert steps == meta["num_steps"]
