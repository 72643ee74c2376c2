"""The trajectory shard format: one Parquet row per episode, bounded shards, a metadata.json.

A dataset is a folder: ``metadata.json`` + ``episodes-00000.parquet``, ``episodes-00001...``
Keeping whole episodes in one row means every Ray Data block holds complete trajectories, so
returns-to-go and K-step windows can be computed while streaming, whatever the dataset size.

This module holds what the format is (columns, metadata keys, spaces, where the files are, the
content hash) and how to read it; `rllib_lamo.data.validation` checks it and
`rllib_lamo.data.writer` writes it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from rllib_lamo.data.names import parse_dataset_name
from rllib_lamo.storage import is_uri

FORMAT = "rllib_lamo.episodes/1"
METADATA_FILE = "metadata.json"
SHARD_NAME = "episodes-{index:05d}.parquet"
SHARD_PATTERN = re.compile(r"^episodes-\d{5}\.parquet$")
DEFAULT_MAX_STEPS_PER_SHARD = 50_000
# Image datasets: 10K frames of 84x84 are ~70 MB before compression (one shard in memory).
FRAME_MAX_STEPS_PER_SHARD = 10_000
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
# Written by the writer since the key was introduced; computed on demand for older datasets.
CONTENT_HASH_KEY = "content_hash"


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
            "low": json_floats(_uniform_or_all(space.low)),
            "high": json_floats(_uniform_or_all(space.high)),
        }
    if isinstance(space, gym.spaces.Discrete):
        return {"type": "Discrete", "n": int(space.n)}
    raise TypeError(f"unsupported space {space!r}: only Box and Discrete are in the format")


def _uniform_or_all(bounds: np.ndarray) -> np.ndarray:
    """A large Box's bounds as one value when they are all equal (images), else all of them."""
    flat = bounds.reshape(-1)
    if flat.size > 64 and np.all(flat == flat[0]):
        return flat[:1]
    return flat


def space_from_dict(spec: Mapping[str, Any]) -> gym.Space:
    """Rebuild a gymnasium space from its metadata.json form."""
    if spec["type"] == "Box":
        shape = tuple(spec["shape"])
        dtype = np.dtype(spec.get("dtype", "float32"))
        # One value stands for all (an image's 0 and 255 for each of its pixels).
        low = np.broadcast_to(np.array(floats_from_json(spec["low"]), dtype=dtype), shape)
        high = np.broadcast_to(np.array(floats_from_json(spec["high"]), dtype=dtype), shape)
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


def json_floats(values: np.ndarray) -> list[float | str]:
    """JSON has no infinity; unbounded Box limits are written as the strings 'inf'/'-inf'."""
    return [float(v) if np.isfinite(v) else ("inf" if v > 0 else "-inf") for v in values]


def floats_from_json(values: Iterable[float | str]) -> list[float]:
    return [float(v) for v in values]


def flat_dim(space_dict: Mapping[str, Any]) -> int:
    """Width of one row of a column for this space (Discrete actions are scalars: 0)."""
    if space_dict["type"] == "Discrete":
        return 0
    return int(np.prod(space_dict["shape"], dtype=np.int64))


@dataclass(frozen=True)
class FrameLayout:
    """How image observations are stored: one uint8 frame per step, stacked when read.

    An observation space ``Box(uint8, (C, H, W))`` is a stack of the last C frames; an episode
    of N steps stores its N frames (H*W bytes each), not N stacks, and windows stack them.
    """

    stack: int
    frame_shape: tuple[int, int]

    @property
    def frame_size(self) -> int:
        return self.frame_shape[0] * self.frame_shape[1]

    def describe(self) -> str:
        return f"one {self.frame_shape[0]}x{self.frame_shape[1]} uint8 frame per step"


def frame_layout(space: gym.Space | Mapping[str, Any]) -> FrameLayout | None:
    """The frame layout of a stacked-image observation space, None for vector observations."""
    if isinstance(space, Mapping):
        kind, shape, dtype = space["type"], tuple(space["shape"]), space.get("dtype", "float32")
    else:
        kind, shape, dtype = type(space).__name__, space.shape, str(space.dtype)
    if kind != "Box" or len(shape) != 3 or np.dtype(dtype) != np.uint8:
        return None
    return FrameLayout(stack=int(shape[0]), frame_shape=(int(shape[1]), int(shape[2])))


def stored_obs_dim(space: gym.Space | Mapping[str, Any]) -> int:
    """Width of one step's stored `obs` row: a frame's pixels, or the flat observation."""
    layout = frame_layout(space)
    if layout is not None:
        return layout.frame_size
    return flat_dim(space if isinstance(space, Mapping) else space_to_dict(space))


# ------------------------------------------------------------------------------ file systems
def resolve_filesystem(path: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and the path inside it, for local paths and cloud URIs alike."""
    path = str(path)
    if is_uri(path):
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


def _hint(path: str | os.PathLike) -> str:
    """How to make the missing dataset: the exact command for our generated sets' names."""
    name = parse_dataset_name(os.path.basename(str(path).rstrip("/")))
    if name:
        return (
            f"Generate it with `{name.command(str(path))}` "
            "(trains and records; see datasets/README.md for times)."
        )
    return "Make one with `lamo-data generate` or `lamo-data from-minari|from-d4rl|from-rllib`."


def content_hash(path: str | os.PathLike, metadata: Mapping[str, Any] | None = None) -> str:
    """SHA-256 over the shard files' bytes in name order: the data's identity.

    The writer stores it in metadata.json as it writes the shards; older datasets without it
    are hashed here, once, reading every shard.
    """
    if metadata is None:
        metadata = read_metadata(path)
    if metadata.get(CONTENT_HASH_KEY):
        return str(metadata[CONTENT_HASH_KEY])
    fs, _ = resolve_filesystem(path)
    digest = hashlib.sha256()
    for shard in list_shards(path):
        with fs.open_input_stream(shard) as stream:
            while chunk := stream.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


# ------------------------------------------------------------------------------- columns
@dataclass
class FlatColumn:
    """A ragged [episodes][T][dim] column as per-episode lengths plus one [sum(T), dim] array."""

    lengths: np.ndarray
    values: np.ndarray


def flatten_list_column(column: Any, name: str, source: str, nested: bool) -> FlatColumn:
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
        return FlatColumn(lengths, inner.to_numpy(zero_copy_only=False))
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
    return FlatColumn(lengths, values.reshape(len(inner), width) if width else values[:0])


def flatten_object_column(column: np.ndarray, name: str, source: str, nested: bool) -> FlatColumn:
    """Same as :func:`flatten_list_column` for numpy/pandas batches (one array per episode)."""
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
        return FlatColumn(lengths, np.zeros((0, 0) if nested else (0,), np.float32))
    widths = {a.shape[1:] for a in non_empty}
    if len(widths) > 1:
        raise DatasetError(source, name, f"inconsistent step widths across episodes: {widths}")
    return FlatColumn(lengths, np.concatenate(non_empty))


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
    obs = flatten_list_column(table.column("obs"), "obs", source, True)
    actions = flatten_list_column(table.column("actions"), "actions", source, not discrete)
    rewards = flatten_list_column(table.column("rewards"), "rewards", source, False)
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


def read_shard(fs: pafs.FileSystem, shard: str) -> pa.Table:
    try:
        return pq.read_table(shard, filesystem=fs)
    except (pa.ArrowInvalid, OSError) as err:
        raise DatasetError(shard, None, f"is not a readable Parquet file ({err})") from err
