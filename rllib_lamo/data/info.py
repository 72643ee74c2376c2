"""``lamo-data info``: what a dataset holds, read from its shards (not only its metadata)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pyarrow.fs as pafs

from rllib_lamo.data.format import (
    METADATA_FILE,
    DatasetError,
    iter_shard_tables,
    list_shards,
    read_metadata,
    resolve_filesystem,
)
from rllib_lamo.scores import reference_scores


def _stats(values: np.ndarray) -> dict[str, float]:
    return {
        "mean": float(values.mean()),
        "std": float(values.std()),
        "min": float(values.min()),
        "max": float(values.max()),
    }


def dataset_info(path: str | os.PathLike) -> dict[str, Any]:
    """Episodes, steps, return statistics, spaces and bytes on disk of a dataset folder."""
    meta = read_metadata(path)
    fs, root = resolve_filesystem(path)
    shards = list_shards(path)
    _check_listed_shards_exist(path, meta, shards)
    returns: list[np.ndarray] = []
    lengths: list[np.ndarray] = []
    terminated = 0
    for _shard, table in iter_shard_tables(path, columns=["return", "length", "terminated"]):
        returns.append(table.column("return").to_numpy())
        lengths.append(table.column("length").to_numpy())
        terminated += int(np.count_nonzero(table.column("terminated").to_numpy(False)))
    all_returns = np.concatenate(returns) if returns else np.zeros(0)
    all_lengths = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
    files = [*shards, f"{root.rstrip('/')}/{METADATA_FILE}"]
    size = sum(
        info.size or 0 for info in fs.get_file_info(files) if info.type == pafs.FileType.File
    )
    refs = reference_scores(meta["env_id"]) if meta["env_id"] else None
    return {
        "path": str(path),
        "name": meta["name"],
        "env_id": meta["env_id"],
        "episodes": len(all_returns),
        "steps": int(all_lengths.sum()),
        "terminated_episodes": terminated,
        "length": _stats(all_lengths) if len(all_lengths) else None,
        "return": _stats(all_returns) if len(all_returns) else None,
        "normalised_return": (
            _stats(np.asarray(refs.normalise(all_returns))) if refs and len(all_returns) else None
        ),
        "observation_space": meta["observation_space"],
        "action_space": meta["action_space"],
        "shards": len(shards),
        "size_bytes": size,
        "source": meta["source"],
        "policy": meta["policy"],
    }


def _check_listed_shards_exist(path: str | os.PathLike, meta: dict, shards: list[str]) -> None:
    """Counts from metadata.json alone would describe shards that are gone."""
    present = {shard.rsplit("/", 1)[-1] for shard in shards}
    missing = [entry["file"] for entry in meta.get("shards", []) if entry["file"] not in present]
    if missing:
        raise DatasetError(
            f"{str(path).rstrip('/')}/{METADATA_FILE}",
            "shards",
            f"lists {len(missing)} shard(s) missing from the folder: {', '.join(missing)}",
        )


def _format_stats(stats: dict[str, float] | None) -> str:
    if stats is None:
        return "n/a"
    return (
        f"mean {stats['mean']:.2f}  std {stats['std']:.2f}  "
        f"min {stats['min']:.2f}  max {stats['max']:.2f}"
    )


def _format_space(space: dict[str, Any]) -> str:
    if space["type"] == "Discrete":
        return f"Discrete({space['n']})"
    low, high = space["low"], space["high"]
    bounds = f"[{low[0]}, {high[0]}]" if len(set(low)) == 1 and len(set(high)) == 1 else "mixed"
    return f"Box(shape={tuple(space['shape'])}, dtype={space['dtype']}, bounds={bounds})"


def format_info(info: dict[str, Any]) -> str:
    """Human-readable report of :func:`dataset_info`."""
    policy = info["policy"] or {}
    lines = [
        f"dataset     {info['path']}  (name {info['name']})",
        f"env         {info['env_id']}",
        f"episodes    {info['episodes']}  ({info['terminated_episodes']} terminated, "
        f"the rest time-limited)",
        f"steps       {info['steps']}",
        f"length      {_format_stats(info['length'])}",
        f"return      {_format_stats(info['return'])}",
        f"normalised  {_format_stats(info['normalised_return'])}",
        f"obs space   {_format_space(info['observation_space'])}",
        f"act space   {_format_space(info['action_space'])}",
        f"on disk     {info['size_bytes'] / 1e6:.2f} MB in {info['shards']} shard(s)",
    ]
    for part in policy.get("mixture") or ([policy] if policy else []):
        if "train_steps" not in part:  # scripted demonstrations: nothing was trained
            lines.append(f"policy      {part.get('algorithm')}")
            continue
        evaluated = part.get("evaluated_return") or {}
        mean = evaluated.get("mean")
        lines.append(
            f"policy      {part.get('level') or ''} {part.get('algorithm')} after "
            f"{part.get('train_steps')} training steps, evaluated return "
            + (
                f"{mean:.1f} over {evaluated.get('episodes')} episodes"
                if mean is not None
                else "n/a"
            )
        )
    if info["source"]:
        lines.append(f"source      {info['source']}")
    return "\n".join(lines)
