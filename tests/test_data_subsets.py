"""Low-data subsets: seeded, whole episodes, independent of row order; the `subset` command."""

from __future__ import annotations

import random

import pytest

from rllib_lamo.data.cli import main
from rllib_lamo.data.format import iter_episodes, read_metadata
from rllib_lamo.data.subsets import (
    episode_index,
    subset_episode_ids,
    subset_ids_for_dataset,
    subset_size,
)
from rllib_lamo.data.testing import write_toy_dataset
from rllib_lamo.data.validation import validate_dataset

IDS = [f"ep-{i:04d}" for i in range(400)]
LENGTHS = [10 + i % 7 for i in range(400)]


def test_same_seed_same_subset_other_seed_other_subset():
    first = subset_episode_ids(IDS, LENGTHS, 0.1, seed=0)
    assert first == subset_episode_ids(IDS, LENGTHS, 0.1, seed=0)
    assert first != subset_episode_ids(IDS, LENGTHS, 0.1, seed=1)
    assert first == sorted(first) and set(first) <= set(IDS)


def test_subset_does_not_depend_on_row_order():
    pairs = list(zip(IDS, LENGTHS, strict=True))
    random.Random(5).shuffle(pairs)
    shuffled_ids, shuffled_lengths = zip(*pairs, strict=True)
    assert subset_episode_ids(shuffled_ids, shuffled_lengths, 0.01, seed=3) == (
        subset_episode_ids(IDS, LENGTHS, 0.01, seed=3)
    )


@pytest.mark.parametrize(
    ("ratio", "expected"), [(0.005, 2), (0.01, 4), (0.1, 40), (0.3, 120), (1.0, 400), (1e-6, 1)]
)
def test_count_is_round_ratio_times_episodes_at_least_one(ratio, expected):
    assert subset_size(400, ratio) == expected
    assert len(subset_episode_ids(IDS, LENGTHS, ratio, seed=0)) == expected


@pytest.mark.parametrize(
    ("ids", "lengths", "ratio", "message"),
    [
        (IDS, LENGTHS, 0.0, "ratio"),
        (IDS, LENGTHS, 1.5, "ratio"),
        ([], [], 0.5, "zero episodes"),
        (["a", "a"], [1, 1], 0.5, "unique"),
        (["a", "b"], [1, 0], 0.5, "at least one step"),
        (["a", "b"], [1], 0.5, "lengths"),
    ],
)
def test_bad_subset_requests_are_refused(ids, lengths, ratio, message):
    with pytest.raises(ValueError, match=message):
        subset_episode_ids(ids, lengths, ratio, seed=0)


def test_subset_command_writes_whole_episodes(tmp_path):
    write_toy_dataset(tmp_path / "full", num_episodes=60, env_id="Walker2d-v5")
    code = main(
        ["subset", str(tmp_path / "full"), str(tmp_path / "small"), "--ratio", "0.1", "--seed", "4"]
    )
    assert code == 0
    meta = validate_dataset(tmp_path / "small")
    assert meta["num_episodes"] == 6
    assert meta["source"]["ratio"] == 0.1 and meta["source"]["source_episodes"] == 60
    assert meta["env_id"] == "Walker2d-v5"
    kept = {e.eps_id: e for e in iter_episodes(tmp_path / "small")}
    assert sorted(kept) == subset_ids_for_dataset(tmp_path / "full", 0.1, seed=4)
    originals = {e.eps_id: e for e in iter_episodes(tmp_path / "full")}
    for eps_id, episode in kept.items():
        assert episode.length == originals[eps_id].length
    ids, lengths = episode_index(tmp_path / "small")
    assert sum(lengths) == read_metadata(tmp_path / "small")["num_steps"] and len(ids) == 6
