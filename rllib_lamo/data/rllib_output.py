"""Convert RLlib's recorded offline output (new API stack, Ray 2.60) into the shard format.

RLlib writes two layouts with ``config.offline_data(output=DIR)``:

* episodes (``output_write_episodes=True``): one row per episode chunk, a binary ``item`` column
  holding ``msgpack.packb(SingleAgentEpisode.get_state(), default=msgpack_numpy.encode)``;
* columns (the default): one step per row, ``eps_id``, ``obs``, ``actions``, ``rewards``,
  ``new_obs``, ``terminateds``, ``truncateds`` plus model outputs; ``obs``/``new_obs`` are
  compressed strings unless ``output_compress_columns`` says otherwise.

Two facts of that output shape this module (both measured on Ray 2.60): an episode is split into
one chunk per ``sample()`` call, spread over files and run folders; and without
``output_max_rows_per_file`` each write repeats everything written before (the env runner never
empties its buffer), so chunks arrive more than once. Chunks are therefore placed by position
(``t_started`` for episodes, matching observations for columns), repeats are checked to agree
and skipped, and an episode is written once its last step is seen.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from rllib_lamo.data.format import DatasetError, env_spaces
from rllib_lamo.data.writer import EpisodeDatasetWriter

_MSGPACK_NUMPY_KEY = b"nd"
_COLUMN_FORMAT_COLUMNS = (
    "eps_id",
    "obs",
    "actions",
    "rewards",
    "new_obs",
    "terminateds",
    "truncateds",
)


def decode_msgpack_numpy(obj: dict) -> Any:
    """``object_hook`` for msgpack_numpy's ndarray/scalar encoding, without msgpack_numpy.

    Object arrays (RLlib's ``infos``) are pickles: they come back as None, never unpickled.
    """
    if _MSGPACK_NUMPY_KEY not in obj:
        return obj
    if obj[_MSGPACK_NUMPY_KEY] is True:
        if obj.get(b"kind", b"") in (b"O", b"V"):
            return None
        return np.frombuffer(obj[b"data"], dtype=np.dtype(obj[b"type"])).reshape(obj[b"shape"])
    return np.frombuffer(obj[b"data"], dtype=np.dtype(obj[b"type"]))[0]


# How recorded actions map to what the env executed. RLlib stores the module's actions before its
# module-to-env connector; with the default ``normalize_actions=True`` that connector unsquashes
# [-1, 1] to the Box bounds (and clips), with ``clip_actions=True`` it only clips.
ACTION_MODES = ("normalized", "clipped", "as-recorded")


def env_actions(actions: np.ndarray, space: gym.Space, mode: str) -> np.ndarray:
    """The actions the env received, from RLlib's recorded ones (vectorised over steps)."""
    if mode not in ACTION_MODES:
        raise ValueError(f"unknown action mode {mode!r}; choose from {ACTION_MODES}")
    if not isinstance(space, gym.spaces.Box) or mode == "as-recorded":
        return actions
    low, high = space.low.reshape(-1), space.high.reshape(-1)
    actions = actions.reshape(len(actions), -1).astype(np.float32)
    if mode == "normalized":
        if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high))):
            return actions  # RLlib leaves unbounded spaces untouched
        actions = low + (actions + 1.0) * (high - low) / 2.0
    return np.clip(actions, low, high).astype(np.float32)


# ------------------------------------------------------------------------------- stitching
@dataclass
class _Chunk:
    """Consecutive steps of one episode: T obs, T actions, T rewards and the obs after them."""

    obs: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    next_obs: np.ndarray

    def __len__(self) -> int:
        return len(self.rewards)

    @staticmethod
    def join(chunks: list[_Chunk]) -> _Chunk:
        if len(chunks) == 1:
            return chunks[0]
        return _Chunk(
            np.concatenate([c.obs for c in chunks]),
            np.concatenate([c.actions for c in chunks]),
            np.concatenate([c.rewards for c in chunks]),
            chunks[-1].next_obs,
        )

    def tail(self, skip: int) -> _Chunk:
        return _Chunk(self.obs[skip:], self.actions[skip:], self.rewards[skip:], self.next_obs)

    def head(self, steps: int) -> _Chunk:
        next_obs = self.obs[steps] if steps < len(self) else self.next_obs
        return _Chunk(self.obs[:steps], self.actions[:steps], self.rewards[:steps], next_obs)


class _EpisodeStitcher:
    """Assembles episodes from chunks that may repeat, and writes each finished one once."""

    def __init__(self, writer: EpisodeDatasetWriter, action_space: gym.Space, action_mode: str):
        self._writer = writer
        self._action_space = action_space
        self._action_mode = action_mode
        self._open: dict[str, list[_Chunk]] = {}
        self._open_length: dict[str, int] = {}
        self._finished: set[str] = set()
        self.repeated_steps = 0

    def add(
        self,
        eps_id: str,
        chunk: _Chunk,
        *,
        start: int | None,
        done: bool,
        terminated: bool,
        source: str,
    ) -> None:
        """Place ``chunk`` at step ``start`` (None: find it from the observations)."""
        if eps_id in self._finished:
            self.repeated_steps += len(chunk)
            return
        chunks = self._open.setdefault(eps_id, [])
        length = self._open_length.get(eps_id, 0)
        if start is None:
            start = self._locate(chunks, length, chunk, eps_id, source)
        if start > length:
            raise DatasetError(
                source, "eps_id", f"episode {eps_id!r} jumps to step {start} after {length} steps"
            )
        if start < length:  # steps already held again: they must agree, only new ones are kept
            held = _Chunk.join(chunks)
            overlap = min(length - start, len(chunk))
            if not np.array_equal(held.obs[start : start + overlap], chunk.obs[:overlap]):
                raise DatasetError(
                    source, "obs", f"two different copies of steps {start}.. of {eps_id!r}"
                )
            self.repeated_steps += overlap
            if overlap == len(chunk):
                if not done:
                    return
                held = held.head(start + overlap)  # the episode ends inside what is held
                length, chunk = len(held), chunk.tail(overlap)
            else:
                chunk = chunk.tail(overlap)
            chunks[:] = [held]
        if len(chunk):
            chunks.append(chunk)
        self._open_length[eps_id] = length + len(chunk)
        if done:
            episode = _Chunk.join(self._open.pop(eps_id))
            del self._open_length[eps_id]
            self._finished.add(eps_id)
            actions = env_actions(episode.actions, self._action_space, self._action_mode)
            self._writer.add_episode(
                episode.obs,
                actions,
                episode.rewards,
                terminated,
                eps_id=eps_id,
                source=f"{source} (episode {eps_id!r})",
            )

    @staticmethod
    def _locate(chunks: list[_Chunk], length: int, chunk: _Chunk, eps_id: str, source: str) -> int:
        """Where a chunk without a step index belongs: right after, or a repeat from earlier."""
        if not chunks or np.array_equal(chunks[-1].next_obs, chunk.obs[0]):
            return length
        held = _Chunk.join(chunks)
        for start in np.flatnonzero((held.obs == chunk.obs[0]).reshape(length, -1).all(axis=1)):
            overlap = min(length - start, len(chunk))
            if np.array_equal(held.obs[start : start + overlap], chunk.obs[:overlap]):
                return int(start)
        raise DatasetError(source, "obs", f"a chunk of episode {eps_id!r} continues nothing held")

    def finish(self) -> int:
        """Drop episodes whose end was never recorded; returns how many."""
        dropped = len(self._open)
        self._open.clear()
        self._open_length.clear()
        return dropped


# ---------------------------------------------------------------------------------- reading
def _recording_files(path: str | os.PathLike) -> list[Path]:
    """Parquet files in write order: run folders and Ray's block indices sort by name."""
    root = Path(path)
    if root.is_file():
        return [root]
    if not root.exists():
        raise DatasetError(str(path), None, "no such file or folder")
    files = sorted(p for p in root.rglob("*.parquet") if not p.name.startswith((".", "_")))
    if not files:
        raise DatasetError(str(path), None, "holds no .parquet files (RLlib offline output?)")
    return files


def _recording_format(schema: pa.Schema, source: str) -> str:
    names = set(schema.names)
    if "item" in names and (
        pa.types.is_binary(schema.field("item").type)
        or pa.types.is_large_binary(schema.field("item").type)
    ):
        return "episodes"
    missing = [c for c in _COLUMN_FORMAT_COLUMNS if c not in names]
    if not missing:
        return "columns"
    raise DatasetError(
        source, missing[0], "missing: neither RLlib's episode ('item') nor column output"
    )


def _column_to_numpy(column: pa.ChunkedArray) -> np.ndarray:
    """Tensor-extension, list and compressed-string columns alike, as [N, ...] arrays.

    RLlib compresses ``obs``/``new_obs`` by default: each row is then a base64 string of an
    LZ4-compressed pickle, readable only through RLlib's own ``unpack``, one call per row. As
    RLlib itself does when it reads such files: convert only recordings you trust.
    """
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if pa.types.is_string(array.type) or pa.types.is_binary(array.type):
        from ray.rllib.utils.compression import unpack_if_needed

        values = [unpack_if_needed(value) for value in array.to_pylist()]
        return np.stack(values) if values else np.zeros((0,))
    if isinstance(array.type, pa.ExtensionType):
        return np.asarray(array.to_numpy(zero_copy_only=False))
    values = array.to_numpy(zero_copy_only=False)
    if pa.types.is_list(array.type) or pa.types.is_large_list(array.type):
        return np.stack(values) if len(values) else np.zeros((0,))
    if pa.types.is_fixed_size_list(array.type):
        return array.flatten().to_numpy(zero_copy_only=False).reshape(len(array), -1)
    return values


def _read_column_file(file: Path, stitcher: _EpisodeStitcher) -> None:
    parquet = pq.ParquetFile(file)
    for group in range(parquet.num_row_groups):
        table = parquet.read_row_group(group, columns=list(_COLUMN_FORMAT_COLUMNS))
        if table.num_rows == 0:
            continue
        eps_ids = np.asarray(table.column("eps_id").to_pylist(), dtype=object)
        obs = _column_to_numpy(table.column("obs"))
        new_obs = _column_to_numpy(table.column("new_obs"))
        actions = _column_to_numpy(table.column("actions"))
        rewards = _column_to_numpy(table.column("rewards")).astype(np.float32)
        terminateds = _column_to_numpy(table.column("terminateds")).astype(bool)
        done = terminateds | _column_to_numpy(table.column("truncateds")).astype(bool)
        # One chunk = consecutive rows of one id, cut after an episode's last step.
        cuts = np.flatnonzero((eps_ids[1:] != eps_ids[:-1]) | done[:-1]) + 1
        for start, end in zip(np.r_[0, cuts], np.r_[cuts, len(eps_ids)], strict=True):
            steps = end - start
            chunk = _Chunk(
                obs[start:end].reshape(steps, -1).astype(np.float32),
                actions[start:end],
                rewards[start:end],
                new_obs[end - 1].reshape(-1).astype(np.float32),
            )
            stitcher.add(
                str(eps_ids[start]),
                chunk,
                start=None,
                done=bool(done[end - 1]),
                terminated=bool(terminateds[end - 1]),
                source=str(file),
            )


def _unpack_episode(packed: bytes, source: str) -> dict[str, Any]:
    import msgpack

    try:
        state = msgpack.unpackb(packed, object_hook=decode_msgpack_numpy, raw=False)
    except (ValueError, TypeError, msgpack.UnpackException) as err:
        raise DatasetError(source, "item", f"is not a msgpack-packed episode ({err})") from err
    for key in ("id_", "observations", "actions", "rewards", "is_terminated", "t_started"):
        if key not in state:
            raise DatasetError(source, "item", f"episode state lacks {key!r}")
    return state


def _without_lookback(state: dict[str, Any], name: str) -> np.ndarray:
    """The values of an InfiniteLookbackBuffer state after its lookback part."""
    buffer = state[name]
    lookback = int(buffer.get("lookback") or 0)
    return np.asarray(buffer["data"][lookback:])


def _read_episode_file(file: Path, stitcher: _EpisodeStitcher) -> None:
    parquet = pq.ParquetFile(file)
    for group in range(parquet.num_row_groups):
        for packed in parquet.read_row_group(group, columns=["item"]).column("item").to_pylist():
            state = _unpack_episode(packed, str(file))
            rewards = _without_lookback(state, "rewards").astype(np.float32)
            steps = len(rewards)
            if steps == 0:
                continue  # a chunk cut right after a reset carries no step
            obs = _without_lookback(state, "observations").reshape(steps + 1, -1)
            chunk = _Chunk(
                obs[:steps].astype(np.float32),
                _without_lookback(state, "actions"),
                rewards,
                obs[steps].astype(np.float32),
            )
            terminated = bool(state["is_terminated"])
            stitcher.add(
                str(state["id_"]),
                chunk,
                start=int(state["t_started"]),
                done=terminated or bool(state.get("is_truncated")),
                terminated=terminated,
                source=str(file),
            )


def _spaces_from_first_episode(file: Path) -> tuple[gym.Space, gym.Space] | None:
    from ray.rllib.utils.serialization import gym_space_from_dict

    parquet = pq.ParquetFile(file)
    if parquet.metadata.num_rows == 0:
        return None
    state = _unpack_episode(
        parquet.read_row_group(0, columns=["item"])["item"][0].as_py(), str(file)
    )
    if not state.get("_observation_space") or not state.get("_action_space"):
        return None
    return (
        gym_space_from_dict(state["_observation_space"]),
        gym_space_from_dict(state["_action_space"]),
    )


def convert_rllib(
    path: str | os.PathLike,
    out: str | os.PathLike,
    *,
    env_id: str | None = None,
    observation_space: gym.Space | None = None,
    action_space: gym.Space | None = None,
    recorded_actions: str = "normalized",
    overwrite: bool = False,
) -> dict[str, Any]:
    """Convert an RLlib recording folder (either layout) into a dataset folder.

    Spaces come from the arguments, else from ``env_id`` when gymnasium knows it, else (episode
    layout only) from the recorded episodes. ``recorded_actions`` says how the recording's
    config turned actions into env actions (see :func:`env_actions`). Memory: one Parquet row
    group plus the episodes still open.
    """
    files = _recording_files(path)
    layout = _recording_format(pq.read_schema(files[0]), str(files[0]))
    spaces: tuple[gym.Space | None, gym.Space | None] = (observation_space, action_space)
    if None in spaces:
        spaces = env_spaces(env_id) or spaces
    if None in spaces and layout == "episodes":
        spaces = _spaces_from_first_episode(files[0]) or spaces
    if None in spaces:
        raise DatasetError(
            str(path), None, "spaces unknown: pass a registered gymnasium env id (--env-id)"
        )
    source: dict[str, Any] = {
        "converter": "rllib_lamo.data.rllib_output.convert_rllib",
        "input": str(path),
        "rllib_layout": layout,
        "recorded_actions": recorded_actions,
        "files": len(files),
    }
    with EpisodeDatasetWriter(
        out,
        observation_space=spaces[0],
        action_space=spaces[1],
        env_id=env_id,
        source=source,
        overwrite=overwrite,
    ) as writer:
        stitcher = _EpisodeStitcher(writer, spaces[1], recorded_actions)
        for file in files:
            if _recording_format(pq.read_schema(file), str(file)) != layout:
                raise DatasetError(str(file), None, f"layout differs from {files[0]}")
            if layout == "episodes":
                _read_episode_file(file, stitcher)
            else:
                _read_column_file(file, stitcher)
        writer.source = {
            **source,
            "dropped_unfinished_episodes": stitcher.finish(),
            "repeated_steps_skipped": stitcher.repeated_steps,
        }
        return writer.close()
