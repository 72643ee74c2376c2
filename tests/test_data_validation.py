"""Validation of the shard format: bad batches and shards are named by file and field."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rllib_lamo.data.format import (
    DatasetError,
    list_shards,
)
from rllib_lamo.data.testing import write_toy_dataset
from rllib_lamo.data.validation import validate_dataset, validate_episode_batch

BOX_ACTIONS = {"type": "Box", "shape": [2], "dtype": "float32", "low": [-1, -1], "high": [1, 1]}


def _first_shard(path: Path) -> pa.Table:
    return pq.read_table(list_shards(path)[0])


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
