"""Writing datasets in the trajectory shard format: atomically, in shards of bounded size.

Everything that writes datasets goes through :class:`EpisodeDatasetWriter`, which checks each
episode as readers would (`rllib_lamo.data.validation`) and computes the statistics and the
content hash of metadata.json while streaming.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import uuid
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from rllib_lamo.data.format import (
    CONTENT_HASH_KEY,
    DEFAULT_MAX_STEPS_PER_SHARD,
    FORMAT,
    FRAME_MAX_STEPS_PER_SHARD,
    METADATA_FILE,
    SHARD_NAME,
    DatasetError,
    Episode,
    flat_dim,
    floats_from_json,
    frame_layout,
    iter_episodes,
    json_floats,
    read_metadata,
    space_to_dict,
    stored_obs_dim,
)
from rllib_lamo.data.validation import validate_episode_batch
from rllib_lamo.scores import reference_scores
from rllib_lamo.storage import is_uri
from rllib_lamo.versions import package_versions

# What metadata.json's `created_with` lists, besides Python.
PRODUCING_PACKAGES = (
    "rllib-lamo",
    "numpy",
    "pyarrow",
    "gymnasium",
    "mujoco",
    "stable-baselines3",
    "torch",
    "minari",
    "ray",
    "ale-py",
)


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
        if is_uri(self.out_dir):
            raise ValueError("writing is local only; copy the finished folder to cloud storage")
        if self.out_dir.exists() and not self.overwrite:
            raise FileExistsError(f"{self.out_dir} already exists (pass --overwrite to replace it)")
        self.obs_space_dict = _space_dict(self.observation_space)
        self.action_space_dict = _space_dict(self.action_space)
        self.frames = frame_layout(self.obs_space_dict)
        self.obs_dim = stored_obs_dim(self.obs_space_dict)
        if self.frames is not None and self.max_steps_per_shard == DEFAULT_MAX_STEPS_PER_SHARD:
            self.max_steps_per_shard = FRAME_MAX_STEPS_PER_SHARD
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
        self._num_flushed_steps = 0
        self._content_digest = hashlib.sha256()
        self._ids: set[str] = set()
        self._finished = False
        self._schema = self._arrow_schema()
        # Parquet paths of the float leaves (Arrow names a list's child "element").
        self._float_leaf_paths = ["rewards.list.element"]
        if self.frames is None:
            self._float_leaf_paths.append("obs.list.element.list.element")
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
        label = source or f"{self.out_dir} episode {eps_id!r}"
        if self.frames is not None and np.asarray(obs).dtype != np.uint8:
            # Never cast frames silently: float pixels in [0, 1] would become all zeros.
            raise DatasetError(label, "obs", f"must be uint8 frames, got {np.asarray(obs).dtype}")
        episode = Episode(
            obs=_rows(obs, np.uint8 if self.frames else np.float32, self.obs_dim),
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
        return self._num_flushed_steps + self._buffered_steps

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
        step_obs = pa.list_(pa.uint8() if self.frames else pa.float32(), self.obs_dim)
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
            expected = f"[T, {self.obs_dim}]"
            if self.frames is not None:
                expected = f"[T, {self.obs_dim}] ({self.frames.describe()}, not stacks)"
            raise DatasetError(source, "obs", f"has shape {episode.obs.shape}, expected {expected}")
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
            frames=self.frames,
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
        # Written to memory first, so that the content hash sees the bytes without reading
        # the file back; shards are written in name order, which is the hash's order.
        sink = pa.BufferOutputStream()
        pq.write_table(
            table,
            sink,
            compression="zstd",
            # Unique floats gain nothing from dictionaries; split bytes compress ~10% better.
            use_dictionary=False,
            use_byte_stream_split=self._float_leaf_paths,
        )
        shard_bytes = sink.getvalue()
        self._content_digest.update(shard_bytes)
        (self._tmp_dir / shard_name).write_bytes(shard_bytes)
        self._shards.append(
            {"file": shard_name, "num_episodes": len(episodes), "num_steps": int(lengths.sum())}
        )
        self._returns.extend(returns.tolist())
        self._num_flushed_steps += int(lengths.sum())
        if self.frames is None:  # pixels are scaled by a constant, not by their statistics
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
            "num_steps": self._num_flushed_steps,
            "return": _stats(returns),
            "normalised_return": normalised,
            "ref_min_score": refs.random if refs else None,
            "ref_max_score": refs.expert if refs else None,
            "v5_random_score": self.v5_random_score,
            "v5_expert_score": self.v5_expert_score,
            "obs_mean": None if self._obs_moments.mean is None else self._obs_moments.mean.tolist(),
            "obs_std": std.tolist() if std is not None else None,
            "source": dict(self.source) if self.source else None,
            "policy": dict(self.policy) if self.policy else None,
            "seed": self.seed,
            "created_with": {
                "python": platform.python_version(),
                **package_versions(PRODUCING_PACKAGES),
            },
            "shards": self._shards,
            CONTENT_HASH_KEY: self._content_digest.hexdigest(),
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
    """The stored form of a space; Box values are stored as float32, so its dtype says so
    (stacked uint8 frames stay uint8)."""
    spec = dict(space) if isinstance(space, Mapping) else space_to_dict(space)
    if spec["type"] == "Box" and frame_layout(spec) is None:
        spec["dtype"] = "float32"
        for bound in ("low", "high"):
            values = np.array(floats_from_json(spec[bound]), dtype=np.float32)
            spec[bound] = json_floats(values)
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
