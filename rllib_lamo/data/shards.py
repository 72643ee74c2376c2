"""The trajectory shard format: one Parquet row per episode, bounded shards, a metadata.json.

A dataset is a folder: ``metadata.json`` + ``episodes-00000.parquet``, ``episodes-00001...``
Keeping whole episodes in one row means every Ray Data block holds complete trajectories, so
returns-to-go and K-step windows can be computed while streaming, whatever the dataset size.

Everything that writes datasets goes through :class:`EpisodeDatasetWriter` (atomic, bounded
shards, streaming statistics); everything that reads them can check a batch with
:func:`validate_episode_batch`, which names the file and the field of the first problem found.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import uuid
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from rllib_lamo.scores import reference_scores

FORMAT = "rllib_lamo.episodes/1"
METADATA_FILE = "metadata.json"
SHARD_NAME = "episodes-{index:05d}.parquet"
SHARD_PATTERN = re.compile(r"^episodes-\d{5}\.parquet$")
DEFAULT_MAX_STEPS_PER_SHARD = 50_000
EPISODE_COLUMNS: tuple[str, ...] = (
    "eps_id",
    "obs",
    "actions",
    "rewards",
    "terminated",
    "return",
    "length",
)
METADATA_KEYS: tuple[str, ...] = (
    "format",
    "name",
    "env_id",
    "observation_space",
    "action_space",
    "num_episodes",
    "num_steps",
    "return",
    "normalised_return",
    "ref_min_score",
    "ref_max_score",
    "v5_random_score",
    "v5_expert_score",
    "obs_mean",
    "obs_std",
    "source",
    "policy",
    "seed",
    "created_with",
)
# float32 rewards summed over 1000 steps drift by ~1e-4 relative; anything beyond this is corrupt.
_RETURN_RTOL = 1e-3
_RETURN_ATOL = 1e-2


class DatasetError(ValueError):
    """Bad or missing data; the message names the file (or source) and the field."""

    def __init__(self, source: str, field_name: str | None, problem: str):
        where = f"{source}: field '{field_name}'" if field_name else source
        super().__init__(f"{where}: {problem}")
        self.source = source
        self.field = field_name


# --------------------------------------------------------------------------------------- spaces
def space_to_dict(space: gym.Space) -> dict[str, Any]:
    """Serialise a Box or Discrete space to plain JSON (what metadata.json stores)."""
    if isinstance(space, gym.spaces.Box):
        return {
            "type": "Box",
            "shape": list(space.shape),
            "dtype": str(space.dtype),
            "low": _json_floats(space.low.reshape(-1)),
            "high": _json_floats(space.high.reshape(-1)),
        }
    if isinstance(space, gym.spaces.Discrete):
        return {"type": "Discrete", "n": int(space.n)}
    raise TypeError(f"unsupported space {space!r}: only Box and Discrete are in the format")


def space_from_dict(spec: Mapping[str, Any]) -> gym.Space:
    """Rebuild a gymnasium space from its metadata.json form."""
    if spec["type"] == "Box":
        shape = tuple(spec["shape"])
        dtype = np.dtype(spec.get("dtype", "float32"))
        low = np.array(_floats_from_json(spec["low"]), dtype=dtype).reshape(shape)
        high = np.array(_floats_from_json(spec["high"]), dtype=dtype).reshape(shape)
        return gym.spaces.Box(low=low, high=high, shape=shape, dtype=dtype)
    if spec["type"] == "Discrete":
        return gym.spaces.Discrete(int(spec["n"]))
    raise ValueError(f"unsupported space type {spec['type']!r}")


def env_spaces(env_id: str | None) -> tuple[gym.Space, gym.Space] | None:
    """A registered gymnasium env's spaces, or None (D4RL/Minari ids are not registered)."""
    if not env_id or env_id not in gym.registry:
        return None
    env = gym.make(env_id)
    try:
        return env.observation_space, env.action_space
    finally:
        env.close()


def _json_floats(values: np.ndarray) -> list[float | str]:
    """JSON has no infinity; unbounded Box limits are written as the strings 'inf'/'-inf'."""
    return [float(v) if np.isfinite(v) else ("inf" if v > 0 else "-inf") for v in values]


def _floats_from_json(values: Iterable[float | str]) -> list[float]:
    return [float(v) for v in values]


def flat_dim(space_dict: Mapping[str, Any]) -> int:
    """Width of one row of a column for this space (Discrete actions are scalars: 0)."""
    if space_dict["type"] == "Discrete":
        return 0
    return int(np.prod(space_dict["shape"], dtype=np.int64))


# ------------------------------------------------------------------------------ file systems
def resolve_filesystem(path: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and the path inside it, for local paths and cloud URIs alike."""
    path = str(path)
    if "://" in path:
        return pafs.FileSystem.from_uri(path)
    return pafs.LocalFileSystem(), os.path.abspath(path)


def list_shards(path: str | os.PathLike) -> list[str]:
    """The dataset's shard files (paths inside their filesystem), in index order."""
    fs, root = resolve_filesystem(path)
    info = fs.get_file_info(root)
    if info.type != pafs.FileType.Directory:
        raise DatasetError(str(path), None, "is not a dataset folder (no such directory)")
    entries = fs.get_file_info(pafs.FileSelector(root, recursive=False))
    return sorted(e.path for e in entries if SHARD_PATTERN.match(e.base_name))


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check a dataset folder's metadata.json (local path or cloud URI)."""
    fs, root = resolve_filesystem(path)
    meta_path = f"{root.rstrip('/')}/{METADATA_FILE}"
    source = f"{str(path).rstrip('/')}/{METADATA_FILE}"
    if fs.get_file_info(meta_path).type != pafs.FileType.File:
        raise DatasetError(source, None, f"missing: not a rllib_lamo dataset folder. {_hint(path)}")
    with fs.open_input_stream(meta_path) as stream:
        try:
            meta = json.loads(stream.read().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise DatasetError(source, None, f"not valid JSON ({err})") from err
    if not isinstance(meta, dict):
        raise DatasetError(source, None, "must hold a JSON object")
    missing = [k for k in METADATA_KEYS if k not in meta]
    if missing:
        raise DatasetError(source, missing[0], f"missing key(s) {missing}")
    if meta["format"] != FORMAT:
        raise DatasetError(source, "format", f"is {meta['format']!r}, expected {FORMAT!r}")
    for key in ("observation_space", "action_space"):
        try:
            space_from_dict(meta[key])
        except (KeyError, TypeError, ValueError) as err:
            raise DatasetError(source, key, f"is not a valid space ({err})") from err
    return meta


_GENERATED_NAME = re.compile(
    r"^(?P<task>[a-z0-9]+)-(?P<kind>medium-replay|medium-expert|medium|expert)-v5$"
)


def _hint(path: str | os.PathLike) -> str:
    """How to make the missing dataset: the exact command for our generated sets' names."""
    name = os.path.basename(str(path).rstrip("/"))
    match = _GENERATED_NAME.match(name)
    if match:
        return (
            f"Generate it with `lamo-data generate {match['task']} --kind {match['kind']} "
            f"--out {path}` (trains and records; see datasets/README.md for times)."
        )
    return "Make one with `lamo-data generate` or `lamo-data from-minari|from-d4rl|from-rllib`."


def package_versions() -> dict[str, str | None]:
    """Versions of what produced a dataset, so a result can be traced to its data."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for dist in (
        "rllib-lamo",
        "numpy",
        "pyarrow",
        "gymnasium",
        "mujoco",
        "stable-baselines3",
        "torch",
        "minari",
        "ray",
    ):
        try:
            versions[dist] = importlib_metadata.version(dist)
        except importlib_metadata.PackageNotFoundError:
            versions[dist] = None
    return versions


# ------------------------------------------------------------------------------ validation
@dataclass
class _FlatColumn:
    """A ragged [episodes][T][dim] column as per-episode lengths plus one [sum(T), dim] array."""

    lengths: np.ndarray
    values: np.ndarray


def _flatten_list_column(column: Any, name: str, source: str, nested: bool) -> _FlatColumn:
    """Flatten an Arrow list column (plain or fixed-size inner lists) without per-step loops."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    if not pa.types.is_list(column.type) and not pa.types.is_large_list(column.type):
        raise DatasetError(source, name, f"must be a list column, got {column.type}")
    if column.null_count:
        raise DatasetError(source, name, "has null episodes")
    lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False).astype(np.int64)
    inner = column.flatten()
    if not nested:
        if not (pa.types.is_floating(inner.type) or pa.types.is_integer(inner.type)):
            raise DatasetError(source, name, f"must hold numbers, got {column.type}")
        if inner.null_count:
            raise DatasetError(source, name, "has null values")
        return _FlatColumn(lengths, inner.to_numpy(zero_copy_only=False))
    if pa.types.is_fixed_size_list(inner.type):
        width = inner.type.list_size
        if inner.null_count:
            raise DatasetError(source, name, "has null steps")
        leaf = inner.flatten()
    elif pa.types.is_list(inner.type) or pa.types.is_large_list(inner.type):
        if inner.null_count:
            raise DatasetError(source, name, "has null steps")
        widths = pc.list_value_length(inner).to_numpy(zero_copy_only=False)
        width = int(widths[0]) if len(widths) else 0
        if len(widths) and np.any(widths != width):
            bad = int(np.flatnonzero(widths != width)[0])
            episode = int(np.searchsorted(np.cumsum(lengths), bad, side="right"))
            raise DatasetError(
                source,
                name,
                f"inconsistent step width in episode row {episode}: {int(widths[bad])} vs {width}",
            )
        leaf = inner.flatten()
    else:
        raise DatasetError(source, name, f"must be a list of per-step lists, got {column.type}")
    if not (pa.types.is_floating(leaf.type) or pa.types.is_integer(leaf.type)):
        raise DatasetError(source, name, f"must hold numbers, got {column.type}")
    if leaf.null_count:
        raise DatasetError(source, name, "has null values")
    values = leaf.to_numpy(zero_copy_only=False)
    return _FlatColumn(lengths, values.reshape(len(inner), width) if width else values[:0])


def _flatten_object_column(column: np.ndarray, name: str, source: str, nested: bool) -> _FlatColumn:
    """Same as :func:`_flatten_list_column` for numpy/pandas batches (one array per episode)."""
    per_episode: list[np.ndarray] = []
    for row, episode in enumerate(column):
        if episode is None:
            raise DatasetError(source, name, f"has a null episode at row {row}")
        try:
            if isinstance(episode, np.ndarray) and episode.dtype != object:
                array = episode  # already [T, dim] (or [T]): no per-step work
            else:  # Ray Data hands nested lists over as object arrays of per-step arrays
                array = np.stack(list(episode)) if nested and len(episode) else np.asarray(episode)
        except ValueError as err:
            raise DatasetError(source, name, f"inconsistent step width in row {row}") from err
        if array.ndim != (2 if nested else 1) and len(array):
            raise DatasetError(source, name, f"row {row} has shape {array.shape}")
        per_episode.append(array)
    lengths = np.array([len(a) for a in per_episode], dtype=np.int64)
    non_empty = [a for a in per_episode if len(a)]
    if not non_empty:
        return _FlatColumn(lengths, np.zeros((0, 0) if nested else (0,), np.float32))
    widths = {a.shape[1:] for a in non_empty}
    if len(widths) > 1:
        raise DatasetError(source, name, f"inconsistent step widths across episodes: {widths}")
    return _FlatColumn(lengths, np.concatenate(non_empty))


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
) -> int:
    """Check a batch of episode rows; raise :class:`DatasetError` naming source and field.

    Accepts a pyarrow Table, a pandas DataFrame or Ray Data's numpy dict batch (Arrow batches
    are checked fastest: no per-episode Python work). Checks columns, dtypes, per-episode
    lengths, obs/action widths, finiteness, actions inside the action space and that
    ``return`` is the sum of ``rewards``. Returns the number of steps in the batch.
    ``allow_empty``: a streaming block may be empty after a filter; a shard file may not.
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
    flatten = _flatten_list_column if arrow_typed else _flatten_object_column
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

    for name, flat, wanted in (("obs", obs, np.float32), ("rewards", rewards, np.float32)):
        if flat.values.dtype != wanted:
            raise DatasetError(source, name, f"must be float32, got {flat.values.dtype}")
    if discrete:
        if not np.issubdtype(actions.values.dtype, np.integer):
            raise DatasetError(source, "actions", f"must be int64, got {actions.values.dtype}")
    elif actions.values.dtype != np.float32:
        raise DatasetError(source, "actions", f"must be float32, got {actions.values.dtype}")
    if obs.values.shape[1] != obs_dim:
        raise DatasetError(source, "obs", f"has width {obs.values.shape[1]}, expected {obs_dim}")

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
        low = np.array(_floats_from_json(space["low"]), dtype=np.float32)
        high = np.array(_floats_from_json(space["high"]), dtype=np.float32)
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
    obs_dim = flat_dim(meta["observation_space"])
    seen_ids: set[str] = set()
    episodes = steps = 0
    for shard in shards:
        table = _read_shard(fs, shard)
        steps += validate_episode_batch(
            table,
            source=shard,
            obs_dim=obs_dim,
            action_space_dict=meta["action_space"],
            allow_empty=False,
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


def _read_shard(fs: pafs.FileSystem, shard: str) -> pa.Table:
    try:
        return pq.read_table(shard, filesystem=fs)
    except (pa.ArrowInvalid, OSError) as err:
        raise DatasetError(shard, None, f"is not a readable Parquet file ({err})") from err


# ----------------------------------------------------------------------------------- episodes
@dataclass
class Episode:
    """One trajectory in memory: T observations, T actions, T rewards."""

    obs: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    terminated: bool
    eps_id: str | None = None

    @property
    def length(self) -> int:
        return len(self.rewards)


def iter_shard_tables(
    path: str | os.PathLike,
    columns: list[str] | None = None,
    eps_ids: Collection[str] | None = None,
) -> Iterator[tuple[str, pa.Table]]:
    """(shard path, table) for each shard, optionally only some episodes: one shard in memory."""
    fs, _ = resolve_filesystem(path)
    filters = pc.field("eps_id").isin(list(eps_ids)) if eps_ids is not None else None
    for shard in list_shards(path):
        yield shard, pq.read_table(shard, filesystem=fs, columns=columns, filters=filters)


def episodes_from_table(table: pa.Table, *, source: str = "<table>") -> Iterator[Episode]:
    """Decode the episode rows of a shard table (vectorised flatten, per-episode slices)."""
    discrete = not (
        pa.types.is_list(table.schema.field("actions").type.value_type)
        or pa.types.is_fixed_size_list(table.schema.field("actions").type.value_type)
    )
    obs = _flatten_list_column(table.column("obs"), "obs", source, True)
    actions = _flatten_list_column(table.column("actions"), "actions", source, not discrete)
    rewards = _flatten_list_column(table.column("rewards"), "rewards", source, False)
    ends = np.cumsum(obs.lengths)
    starts = ends - obs.lengths
    ids = table.column("eps_id").to_pylist()
    terminated = table.column("terminated").to_pylist()
    for i, (start, end) in enumerate(zip(starts, ends, strict=True)):
        yield Episode(
            obs=obs.values[start:end],
            actions=actions.values[start:end],
            rewards=rewards.values[start:end],
            terminated=bool(terminated[i]),
            eps_id=ids[i],
        )


def iter_episodes(
    path: str | os.PathLike, eps_ids: Collection[str] | None = None
) -> Iterator[Episode]:
    """Every episode of a dataset folder (or only ``eps_ids``), shard by shard."""
    for shard, table in iter_shard_tables(path, eps_ids=eps_ids):
        if table.num_rows:
            yield from episodes_from_table(table, source=shard)


# ---------------------------------------------------------------------------------- writing
@dataclass
class _RunningMoments:
    """Streaming mean/variance (Chan et al.'s merge) over observation rows."""

    count: int = 0
    mean: np.ndarray | None = None
    m2: np.ndarray | None = None

    def update(self, rows: np.ndarray) -> None:
        rows = rows.astype(np.float64, copy=False)
        n = len(rows)
        batch_mean = rows.mean(axis=0)
        batch_m2 = ((rows - batch_mean) ** 2).sum(axis=0)
        if self.mean is None:
            self.count, self.mean, self.m2 = n, batch_mean, batch_m2
            return
        total = self.count + n
        delta = batch_mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + batch_m2 + delta**2 * (self.count * n / total)
        self.count = total

    def std(self) -> np.ndarray | None:
        return None if self.m2 is None else np.sqrt(self.m2 / max(self.count, 1))


def _stats(values: np.ndarray) -> dict[str, float] | None:
    if len(values) == 0:
        return None
    return {
        "mean": float(values.mean()),
        "std": float(values.std()),
        "min": float(values.min()),
        "max": float(values.max()),
    }


@dataclass
class EpisodeDatasetWriter:
    """Write episodes into a dataset folder atomically, in shards of bounded step count.

    Shards go to a hidden sibling temp folder that is renamed onto ``out_dir`` only after the
    last shard and metadata.json are written, so a failed or interrupted run leaves nothing a
    later run would pick up. Return, length and observation statistics are computed while
    streaming, so memory is bounded by one shard whatever the dataset size.

    Use as a context manager; an exception inside the ``with`` discards everything.
    """

    out_dir: str | os.PathLike
    observation_space: gym.Space | Mapping[str, Any]
    action_space: gym.Space | Mapping[str, Any]
    env_id: str | None = None
    name: str | None = None
    source: Mapping[str, Any] | None = None
    policy: Mapping[str, Any] | None = None
    seed: int | None = None
    v5_random_score: float | None = None
    v5_expert_score: float | None = None
    max_steps_per_shard: int = DEFAULT_MAX_STEPS_PER_SHARD
    overwrite: bool = False
    extra_metadata: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir).absolute()
        if "://" in str(self.out_dir):
            raise ValueError("writing is local only; copy the finished folder to cloud storage")
        if self.out_dir.exists() and not self.overwrite:
            raise FileExistsError(f"{self.out_dir} already exists (pass overwrite=True to replace)")
        self.obs_space_dict = _space_dict(self.observation_space)
        self.action_space_dict = _space_dict(self.action_space)
        self.obs_dim = flat_dim(self.obs_space_dict)
        self.act_dim = flat_dim(self.action_space_dict)
        self.discrete = self.action_space_dict["type"] == "Discrete"
        self.name = self.name or self.out_dir.name
        self.out_dir.parent.mkdir(parents=True, exist_ok=True)
        self._tmp_dir = self.out_dir.parent / f".{self.out_dir.name}.tmp-{uuid.uuid4().hex[:8]}"
        self._tmp_dir.mkdir()
        self._buffer: list[Episode] = []
        self._buffered_steps = 0
        self._shards: list[dict[str, Any]] = []
        self._returns: list[float] = []
        self._obs_moments = _RunningMoments()
        self._ids: set[str] = set()
        self._finished = False
        self._schema = self._arrow_schema()
        # Parquet paths of the float leaves (Arrow names a list's child "element").
        self._float_leaf_paths = ["obs.list.element.list.element", "rewards.list.element"]
        if not self.discrete:
            self._float_leaf_paths.append("actions.list.element.list.element")

    # -- public ------------------------------------------------------------------------------
    def add_episode(
        self,
        obs: np.ndarray,
        actions: np.ndarray,
        rewards: np.ndarray,
        terminated: bool,
        eps_id: str | None = None,
        *,
        source: str | None = None,
    ) -> None:
        """Add one episode (T obs without the final next-obs, T actions, T rewards)."""
        if self._finished:
            raise RuntimeError("writer already closed")
        episode = Episode(
            obs=_rows(obs, np.float32, self.obs_dim),
            actions=(
                np.ascontiguousarray(actions, dtype=np.int64).reshape(-1)
                if self.discrete
                else _rows(actions, np.float32, self.act_dim)
            ),
            rewards=np.ascontiguousarray(rewards, dtype=np.float32).reshape(-1),
            terminated=bool(terminated),
            eps_id=eps_id or f"{self.name}-{len(self._returns) + len(self._buffer):07d}",
        )
        if episode.eps_id in self._ids:
            raise DatasetError(
                source or str(self.out_dir), "eps_id", f"duplicate id {episode.eps_id!r}"
            )
        self._check_episode(episode, source or f"{self.out_dir} episode {episode.eps_id!r}")
        self._ids.add(episode.eps_id)
        self._buffer.append(episode)
        self._buffered_steps += episode.length
        if self._buffered_steps >= self.max_steps_per_shard:
            self._flush()

    def add_episodes(self, episodes: Iterable[Episode]) -> None:
        for episode in episodes:
            self.add_episode(
                episode.obs, episode.actions, episode.rewards, episode.terminated, episode.eps_id
            )

    @property
    def num_episodes(self) -> int:
        return len(self._returns) + len(self._buffer)

    @property
    def num_steps(self) -> int:
        return self._obs_moments.count + self._buffered_steps

    def close(self) -> dict[str, Any]:
        """Write the last shard and metadata.json, then publish the folder atomically."""
        if self._finished:
            raise RuntimeError("writer already closed")
        self._flush()
        if not self._returns:
            self.abort()
            raise DatasetError(str(self.out_dir), None, "no episodes were written")
        meta = self._metadata()
        with open(self._tmp_dir / METADATA_FILE, "w") as f:
            json.dump(meta, f, indent=1)
        self._publish()
        self._finished = True
        return meta

    def abort(self) -> None:
        """Discard everything written so far."""
        shutil.rmtree(self._tmp_dir, ignore_errors=True)
        self._finished = True

    def __enter__(self) -> EpisodeDatasetWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None:
            self.abort()
        elif not self._finished:
            self.close()

    # -- internals ---------------------------------------------------------------------------
    def _arrow_schema(self) -> pa.Schema:
        step_obs = pa.list_(pa.float32(), self.obs_dim)
        step_action = pa.int64() if self.discrete else pa.list_(pa.float32(), self.act_dim)
        return pa.schema(
            [
                ("eps_id", pa.string()),
                ("obs", pa.list_(step_obs)),
                ("actions", pa.list_(step_action)),
                ("rewards", pa.list_(pa.float32())),
                ("terminated", pa.bool_()),
                ("return", pa.float64()),
                ("length", pa.int64()),
            ]
        )

    def _check_episode(self, episode: Episode, source: str) -> None:
        """The same checks readers apply, run on the episode before it reaches a shard."""
        if episode.obs.ndim != 2 or episode.obs.shape[1] != self.obs_dim:
            raise DatasetError(
                source, "obs", f"has shape {episode.obs.shape}, expected [T, {self.obs_dim}]"
            )
        validate_episode_batch(
            {
                "eps_id": np.array([episode.eps_id], dtype=object),
                "obs": _object_array([episode.obs]),
                "actions": _object_array([episode.actions]),
                "rewards": _object_array([episode.rewards]),
                "terminated": np.array([episode.terminated]),
                "return": np.array([episode.rewards.sum(dtype=np.float64)]),
                "length": np.array([episode.length], dtype=np.int64),
            },
            source=source,
            obs_dim=self.obs_dim,
            action_space_dict=self.action_space_dict,
        )

    def _flush(self) -> None:
        if not self._buffer:
            return
        episodes, self._buffer, self._buffered_steps = self._buffer, [], 0
        lengths = np.array([e.length for e in episodes], dtype=np.int64)
        offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
        obs = np.concatenate([e.obs for e in episodes])
        actions = np.concatenate([e.actions for e in episodes])
        rewards = np.concatenate([e.rewards for e in episodes])
        returns = np.array([e.rewards.sum(dtype=np.float64) for e in episodes])
        step_obs = pa.FixedSizeListArray.from_arrays(pa.array(obs.reshape(-1)), self.obs_dim)
        if self.discrete:
            step_actions: pa.Array = pa.array(actions)
        else:
            step_actions = pa.FixedSizeListArray.from_arrays(
                pa.array(actions.reshape(-1)), self.act_dim
            )
        table = pa.Table.from_arrays(
            [
                pa.array([e.eps_id for e in episodes], pa.string()),
                pa.ListArray.from_arrays(offsets, step_obs),
                pa.ListArray.from_arrays(offsets, step_actions),
                pa.ListArray.from_arrays(offsets, pa.array(rewards)),
                pa.array([e.terminated for e in episodes], pa.bool_()),
                pa.array(returns, pa.float64()),
                pa.array(lengths, pa.int64()),
            ],
            schema=self._schema,
        )
        shard_name = SHARD_NAME.format(index=len(self._shards))
        pq.write_table(
            table,
            self._tmp_dir / shard_name,
            compression="zstd",
            # Unique floats gain nothing from dictionaries; split bytes compress ~10% better.
            use_dictionary=False,
            use_byte_stream_split=self._float_leaf_paths,
        )
        self._shards.append(
            {"file": shard_name, "num_episodes": len(episodes), "num_steps": int(lengths.sum())}
        )
        self._returns.extend(returns.tolist())
        self._obs_moments.update(obs)

    def _metadata(self) -> dict[str, Any]:
        returns = np.array(self._returns)
        refs = reference_scores(self.env_id) if self.env_id else None
        normalised = _stats(np.asarray(refs.normalise(returns))) if refs else None
        std = self._obs_moments.std()
        meta: dict[str, Any] = {
            "format": FORMAT,
            "name": self.name,
            "env_id": self.env_id,
            "observation_space": self.obs_space_dict,
            "action_space": self.action_space_dict,
            "num_episodes": len(returns),
            "num_steps": int(self._obs_moments.count),
            "return": _stats(returns),
            "normalised_return": normalised,
            "ref_min_score": refs.random if refs else None,
            "ref_max_score": refs.expert if refs else None,
            "v5_random_score": self.v5_random_score,
            "v5_expert_score": self.v5_expert_score,
            "obs_mean": self._obs_moments.mean.tolist(),
            "obs_std": std.tolist() if std is not None else None,
            "source": dict(self.source) if self.source else None,
            "policy": dict(self.policy) if self.policy else None,
            "seed": self.seed,
            "created_with": package_versions(),
            "shards": self._shards,
        }
        meta.update(self.extra_metadata)
        return meta

    def _publish(self) -> None:
        """Rename the finished temp folder onto out_dir (replacing an old one when allowed)."""
        if self.out_dir.exists():
            if not self.overwrite:
                self.abort()
                raise FileExistsError(f"{self.out_dir} appeared while writing; nothing written")
            trash = self.out_dir.parent / f".{self.out_dir.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(self.out_dir, trash)
            os.replace(self._tmp_dir, self.out_dir)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(self._tmp_dir, self.out_dir)


def _rows(values: Any, dtype: type, width: int) -> np.ndarray:
    """Per-step rows as a contiguous [T, width] array (flattening multi-dim observations)."""
    array = np.ascontiguousarray(values, dtype=dtype)
    if array.size == 0:
        return array.reshape(len(array), width)
    return array.reshape(len(array), -1)


def _space_dict(space: gym.Space | Mapping[str, Any]) -> dict[str, Any]:
    """The stored form of a space; Box values are stored as float32, so its dtype says so."""
    spec = dict(space) if isinstance(space, Mapping) else space_to_dict(space)
    if spec["type"] == "Box":
        spec["dtype"] = "float32"
        for bound in ("low", "high"):
            values = np.array(_floats_from_json(spec[bound]), dtype=np.float32)
            spec[bound] = _json_floats(values)
    return spec


def _object_array(items: list[np.ndarray]) -> np.ndarray:
    """A 1-D object array of per-episode arrays (what Ray Data hands over for list columns)."""
    out = np.empty(len(items), dtype=object)
    for index, item in enumerate(items):
        out[index] = item
    return out


def copy_episodes(
    sources: Iterable[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    keep_ids: Collection[str] | None = None,
    overwrite: bool = False,
    **metadata_overrides: Any,
) -> dict[str, Any]:
    """Stream episodes of one or more datasets into a new one (subsets, concatenations).

    Spaces and env must agree across sources; metadata is inherited from the first source
    and replaced by ``metadata_overrides`` (any :class:`EpisodeDatasetWriter` field).
    """
    sources = [str(s) for s in sources]
    metas = [read_metadata(s) for s in sources]
    first = metas[0]
    for src, meta in zip(sources[1:], metas[1:], strict=True):
        for key in ("env_id", "observation_space", "action_space"):
            if meta[key] != first[key]:
                raise DatasetError(f"{src}/{METADATA_FILE}", key, f"differs from {sources[0]}")
    options: dict[str, Any] = {
        "observation_space": first["observation_space"],
        "action_space": first["action_space"],
        "env_id": first["env_id"],
        "source": first["source"],
        "policy": first["policy"],
        "seed": first["seed"],
        "v5_random_score": first["v5_random_score"],
        "v5_expert_score": first["v5_expert_score"],
        "overwrite": overwrite,
    }
    options.update(metadata_overrides)
    with EpisodeDatasetWriter(out_dir, **options) as writer:
        for src in sources:
            for episode in iter_episodes(src, eps_ids=keep_ids):
                writer.add_episode(
                    episode.obs,
                    episode.actions,
                    episode.rewards,
                    episode.terminated,
                    episode.eps_id,
                    source=src,
                )
        return writer.close()


def write_dataset(
    out_dir: str | os.PathLike,
    episodes: Iterable[Episode],
    **writer_options: Any,
) -> dict[str, Any]:
    """Write an iterable of :class:`Episode` as a dataset folder; returns its metadata."""
    with EpisodeDatasetWriter(out_dir, **writer_options) as writer:
        writer.add_episodes(episodes)
        return writer.close()
