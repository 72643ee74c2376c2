"""Checks of the trajectory shard format that name the file (or source) and the field.

:func:`validate_episode_batch` checks a batch of episode rows (the writer runs it on every
episode, readers on every block); :func:`validate_dataset` checks a whole folder.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa

from rllib_lamo.data.format import (
    EPISODE_COLUMNS,
    METADATA_FILE,
    DatasetError,
    FrameLayout,
    flat_dim,
    flatten_list_column,
    flatten_object_column,
    floats_from_json,
    frame_layout,
    list_shards,
    read_metadata,
    read_shard,
    resolve_filesystem,
    stored_obs_dim,
)

# float32 rewards summed over 1000 steps drift by ~1e-4 relative; anything beyond this is corrupt.
_RETURN_RTOL = 1e-3
_RETURN_ATOL = 1e-2


def _as_columns(batch: Any) -> tuple[dict[str, Any], bool]:
    """Columns of a pyarrow Table, pandas DataFrame or dict batch; True when Arrow-typed."""
    if isinstance(batch, pa.Table):
        return {name: batch.column(name) for name in batch.column_names}, True
    if hasattr(batch, "to_dict") and hasattr(batch, "columns"):  # pandas.DataFrame
        return {name: batch[name].to_numpy() for name in batch.columns}, False
    return dict(batch), False


def validate_episode_batch(
    batch: Mapping[str, np.ndarray] | pa.Table | Any,
    *,
    source: str,
    obs_dim: int,
    action_space_dict: Mapping[str, Any],
    allow_empty: bool = True,
    frames: FrameLayout | None = None,
) -> int:
    """Check a batch of episode rows; raise :class:`DatasetError` naming source and field.

    Accepts a pyarrow Table, a pandas DataFrame or Ray Data's numpy dict batch (Arrow batches
    are checked fastest: no per-episode Python work). Checks columns, dtypes, per-episode
    lengths, obs/action widths, finiteness, actions inside the action space and that
    ``return`` is the sum of ``rewards``. Returns the number of steps in the batch.
    ``allow_empty``: a streaming block may be empty after a filter; a shard file may not.
    ``frames``: image observations, stored as one uint8 frame per step (``obs_dim`` is then
    the frame's pixel count).
    """
    columns, arrow_typed = _as_columns(batch)
    missing = [c for c in EPISODE_COLUMNS if c not in columns]
    if missing:
        raise DatasetError(source, missing[0], f"missing column(s) {missing}")
    num_rows = len(columns["eps_id"])
    if num_rows == 0:
        if allow_empty:
            return 0
        raise DatasetError(source, None, "holds no episodes (empty shard)")
    discrete = action_space_dict["type"] == "Discrete"
    flatten = flatten_list_column if arrow_typed else flatten_object_column
    obs = flatten(columns["obs"], "obs", source, True)
    actions = flatten(columns["actions"], "actions", source, not discrete)
    rewards = flatten(columns["rewards"], "rewards", source, False)

    eps_ids = _scalar_column(columns["eps_id"])
    if not all(isinstance(e, str) and e for e in eps_ids):
        raise DatasetError(source, "eps_id", "must be non-empty strings")
    if len(set(eps_ids)) != len(eps_ids):
        raise DatasetError(source, "eps_id", "has duplicate episode ids")
    lengths = _scalar_column(columns["length"])
    if not np.issubdtype(np.asarray(lengths).dtype, np.integer):
        raise DatasetError(source, "length", f"must be int64, got {np.asarray(lengths).dtype}")
    lengths = np.asarray(lengths, dtype=np.int64)

    def where(index: int) -> str:
        return f"(episode {eps_ids[index]!r}, row {index})"

    short = np.flatnonzero(lengths < 1)
    if len(short):
        raise DatasetError(source, "length", f"episode shorter than one step {where(short[0])}")
    for name, flat in (("obs", obs), ("actions", actions), ("rewards", rewards)):
        bad = np.flatnonzero(flat.lengths != lengths)
        if len(bad):
            raise DatasetError(
                source,
                name,
                f"has {flat.lengths[bad[0]]} steps but length is {lengths[bad[0]]} {where(bad[0])}",
            )

    obs_dtype = np.uint8 if frames is not None else np.float32
    for name, flat, wanted in (("obs", obs, obs_dtype), ("rewards", rewards, np.float32)):
        if flat.values.dtype != wanted:
            raise DatasetError(source, name, f"must be {np.dtype(wanted)}, got {flat.values.dtype}")
    if discrete:
        if not np.issubdtype(actions.values.dtype, np.integer):
            raise DatasetError(source, "actions", f"must be int64, got {actions.values.dtype}")
    elif actions.values.dtype != np.float32:
        raise DatasetError(source, "actions", f"must be float32, got {actions.values.dtype}")
    if obs.values.shape[1] != obs_dim:
        expected = f"{obs_dim} ({frames.describe()})" if frames is not None else f"{obs_dim}"
        raise DatasetError(source, "obs", f"has width {obs.values.shape[1]}, expected {expected}")

    step_episode = np.repeat(np.arange(num_rows), lengths)
    for name, flat in (("obs", obs), ("actions", actions), ("rewards", rewards)):
        if flat.values.dtype.kind == "f":
            finite = np.isfinite(flat.values)
            if not finite.all():
                step = np.flatnonzero(~finite.reshape(len(flat.values), -1).all(axis=1))[0]
                raise DatasetError(source, name, f"has NaN/inf {where(step_episode[step])}")
    _check_actions_in_space(actions.values, action_space_dict, source, step_episode, where)

    terminated = _scalar_column(columns["terminated"])
    if np.asarray(terminated).dtype != np.bool_:
        raise DatasetError(
            source, "terminated", f"must be bool, got {np.asarray(terminated).dtype}"
        )
    returns = np.asarray(_scalar_column(columns["return"]))
    if returns.dtype != np.float64:
        raise DatasetError(source, "return", f"must be float64, got {returns.dtype}")
    if not np.isfinite(returns).all():
        bad = int(np.flatnonzero(~np.isfinite(returns))[0])
        raise DatasetError(source, "return", f"has NaN/inf {where(bad)}")
    summed = np.add.reduceat(rewards.values.astype(np.float64), np.cumsum(lengths) - lengths)
    mismatch = np.flatnonzero(~np.isclose(summed, returns, rtol=_RETURN_RTOL, atol=_RETURN_ATOL))
    if len(mismatch):
        i = mismatch[0]
        raise DatasetError(
            source, "return", f"{returns[i]} is not the sum of rewards {summed[i]} {where(i)}"
        )
    return int(lengths.sum())


def _scalar_column(column: Any) -> Any:
    """A scalar column as numpy (strings stay a Python list so ids keep their type)."""
    if isinstance(column, pa.ChunkedArray | pa.Array):
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            return column.to_pylist()
        if pa.types.is_boolean(column.type):
            return column.to_numpy(zero_copy_only=False).astype(np.bool_)
        return column.to_numpy()
    if isinstance(column, np.ndarray) and column.dtype.kind in "OUS":
        return list(column)
    return np.asarray(column)


def _check_actions_in_space(
    actions: np.ndarray,
    space: Mapping[str, Any],
    source: str,
    step_episode: np.ndarray,
    where: Any,
) -> None:
    if space["type"] == "Discrete":
        outside = (actions < 0) | (actions >= int(space["n"]))
    else:
        width = flat_dim(space)
        if actions.shape[1] != width:
            raise DatasetError(source, "actions", f"has width {actions.shape[1]}, expected {width}")
        low = np.array(floats_from_json(space["low"]), dtype=np.float32)
        high = np.array(floats_from_json(space["high"]), dtype=np.float32)
        outside = ((actions < low) | (actions > high)).any(axis=1)
    if outside.any():
        step = int(np.flatnonzero(outside)[0])
        raise DatasetError(
            source,
            "actions",
            f"{actions[step].tolist()} outside the action space {where(step_episode[step])}",
        )


def validate_dataset(path: str | os.PathLike) -> dict[str, Any]:
    """Validate every shard against metadata.json (one shard in memory at a time)."""
    meta = read_metadata(path)
    shards = list_shards(path)
    if not shards:
        raise DatasetError(str(path), None, "has metadata.json but no episodes-*.parquet shards")
    fs, _ = resolve_filesystem(path)
    frames = frame_layout(meta["observation_space"])
    obs_dim = stored_obs_dim(meta["observation_space"])
    seen_ids: set[str] = set()
    episodes = steps = 0
    for shard in shards:
        table = read_shard(fs, shard)
        steps += validate_episode_batch(
            table,
            source=shard,
            obs_dim=obs_dim,
            action_space_dict=meta["action_space"],
            allow_empty=False,
            frames=frames,
        )
        ids = table.column("eps_id").to_pylist()
        duplicated = seen_ids.intersection(ids)
        if duplicated:
            raise DatasetError(
                shard, "eps_id", f"repeats ids of earlier shards: {sorted(duplicated)[:3]}"
            )
        seen_ids.update(ids)
        episodes += table.num_rows
    meta_source = f"{str(path).rstrip('/')}/{METADATA_FILE}"
    if episodes != meta["num_episodes"]:
        raise DatasetError(
            meta_source, "num_episodes", f"says {meta['num_episodes']}, shards hold {episodes}"
        )
    if steps != meta["num_steps"]:
        raise DatasetError(
            meta_source, "num_steps", f"says {meta['num_steps']}, shards hold {steps}"
        )
    return meta
