"""Low-data subsets: random whole trajectories, as in LaMo's data-ratio experiments.

LaMo keeps a random fraction of whole trajectories (their ratios: 0.005, 0.01, 0.1, ...), but
unseeded. Here the choice depends only on the set of episode ids, the ratio and the seed, never
on the order rows arrive in (shards, Ray Data blocks), so every worker and every rerun agrees.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from rllib_lamo.data.format import DatasetError, iter_shard_tables, read_metadata
from rllib_lamo.data.writer import copy_episodes


def subset_size(num_episodes: int, ratio: float) -> int:
    """max(1, round(ratio * n)), rounding halves up (Python's round() would round to even)."""
    return max(1, int(np.floor(ratio * num_episodes + 0.5)))


def subset_episode_ids(
    eps_ids: Sequence[str], lengths: Sequence[int], ratio: float, seed: int | Sequence[int]
) -> list[str]:
    """The ids of a seeded random subset of whole episodes, sorted.

    Episodes are drawn uniformly (not by length, as LaMo does); ``lengths`` guards against
    mismatched inputs and empty episodes. ``ratio`` 1.0 keeps everything.
    """
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"ratio must be in (0, 1], got {ratio}")
    if len(eps_ids) != len(lengths):
        raise ValueError(f"{len(eps_ids)} episode ids but {len(lengths)} lengths")
    if len(eps_ids) == 0:
        raise ValueError("cannot take a subset of zero episodes")
    if len(set(eps_ids)) != len(eps_ids):
        raise ValueError("episode ids are not unique")
    if np.min(np.asarray(lengths)) < 1:
        raise ValueError("episodes must have at least one step")
    ordered = sorted(eps_ids)
    count = subset_size(len(ordered), ratio)
    chosen = np.random.default_rng(seed).choice(len(ordered), size=count, replace=False)
    return sorted(ordered[i] for i in chosen)


def episode_index(path: str | os.PathLike) -> tuple[list[str], list[int]]:
    """All episode ids and lengths of a dataset, reading only those two columns."""
    ids: list[str] = []
    lengths: list[int] = []
    for _shard, table in iter_shard_tables(path, columns=["eps_id", "length"]):
        ids.extend(table.column("eps_id").to_pylist())
        lengths.extend(table.column("length").to_pylist())
    if not ids:
        raise DatasetError(str(path), None, "holds no episodes")
    return ids, lengths


def subset_ids_for_dataset(path: str | os.PathLike, ratio: float, seed: int) -> list[str]:
    """The subset ids of a dataset folder (what training uses to filter rows)."""
    ids, lengths = episode_index(path)
    return subset_episode_ids(ids, lengths, ratio, seed)


def write_subset(
    path: str | os.PathLike,
    out: str | os.PathLike,
    *,
    ratio: float,
    seed: int,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write the subset as its own dataset folder; returns its metadata."""
    meta = read_metadata(path)
    ids, lengths = episode_index(path)
    keep = subset_episode_ids(ids, lengths, ratio, seed)
    source = {
        "generator": "rllib_lamo.data.subsets",
        "subset_of": str(path),
        "subset_of_name": meta["name"],
        "subset_of_source": meta["source"],
        "ratio": ratio,
        "seed": seed,
        "source_episodes": len(ids),
    }
    return copy_episodes(
        [path], out, keep_ids=set(keep), overwrite=overwrite, source=source, seed=seed
    )
