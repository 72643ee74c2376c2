"""The shard format: metadata, reading through URIs and Ray Data, the missing-dataset hint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rllib_lamo.data.format import (
    CONTENT_HASH_KEY,
    FORMAT,
    DatasetError,
    content_hash,
    read_metadata,
)
from rllib_lamo.data.validation import validate_dataset, validate_episode_batch


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


def test_missing_dataset_hint_names_the_generate_command(tmp_path):
    with pytest.raises(
        DatasetError,
        match=r"lamo-data generate hopper --kind medium-replay "
        r"--steps 200000 --out .*hopper-medium-replay-v5-200k",
    ):
        read_metadata(tmp_path / "hopper-medium-replay-v5-200k")
    with pytest.raises(DatasetError, match="Make one with `lamo-data generate` or"):
        read_metadata(tmp_path / "my-data")


def test_the_shipped_dataset_states_the_hash_of_its_shards():
    shipped = Path(__file__).resolve().parents[1] / "datasets" / "hopper-medium-v5"
    meta = read_metadata(shipped)
    recomputed = content_hash(shipped, {k: v for k, v in meta.items() if k != CONTENT_HASH_KEY})
    assert meta[CONTENT_HASH_KEY] == recomputed
