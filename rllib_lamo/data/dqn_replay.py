"""The DQN Replay Dataset (Agarwal et al., 2020) into the shard format, sampled as DT and LaMo do.

Layout (dopamine's ``OutOfGraphReplayBuffer.save``): per game and run a ``replay_logs`` folder
with, per checkpoint N (0..50), gzipped ``.npy`` files ``$store$_<name>_ckpt.N.gz`` for
``observation`` (uint8 [capacity, 84, 84], one frame per step), ``action`` (int32),
``reward`` (float32) and ``terminal`` (uint8, 1 where the game ended) (other files, such as
``add_count``, are not needed). Frames are stored here as they are there: one per step.

Sampling (the Decision Transformer's `create_dataset`, used by LaMo): until `num_steps`
transitions are taken, pick one of the chosen checkpoints at random and take its next
`trajectories_per_buffer` whole episodes, reading at most `max_transitions_per_buffer` steps
of each checkpoint. Differences, on purpose: each visit takes exactly
`trajectories_per_buffer` episodes (DT's loop takes one more), and a buffer's leading steps
before its first terminal (the tail of an episode that began in an earlier checkpoint, whose
returns-to-go would be wrong) and its unfinished last episode are left out. The plan is made
from the small ``terminal`` arrays first, then each checkpoint's frames are streamed once, only
as far as its last chosen episode.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import gymnasium as gym
import numpy as np

from rllib_lamo.data.format import DatasetError
from rllib_lamo.data.writer import EpisodeDatasetWriter
from rllib_lamo.envs.atari import ATARI_GAMES, FRAME_SIZE, atari_env_id

STORE_FILE = "$store${name}_ckpt.{checkpoint}.gz"
STORE_NAMES = ("observation", "action", "reward", "terminal")
# DT's defaults: 10 trajectories per visit, 100K transitions per buffer at most.
TRAJECTORIES_PER_BUFFER = 10
MAX_TRANSITIONS_PER_BUFFER = 100_000


def store_path(replay_dir: str | os.PathLike, name: str, checkpoint: int) -> Path:
    """``<dir>/$store$_<name>_ckpt.<N>.gz``."""
    return Path(replay_dir) / STORE_FILE.format(name=f"_{name}", checkpoint=checkpoint)


def _open_npy(stream: IO[bytes], source: str) -> tuple[tuple[int, ...], np.dtype]:
    """Reads a .npy header from `stream`; returns the array's shape and dtype."""
    try:
        version = np.lib.format.read_magic(stream)
        read_header = (
            np.lib.format.read_array_header_1_0
            if version == (1, 0)
            else np.lib.format.read_array_header_2_0
        )
        shape, fortran_order, dtype = read_header(stream)
    except (ValueError, OSError, EOFError) as err:
        raise DatasetError(source, None, f"is not a gzipped .npy array ({err})") from err
    if fortran_order:
        raise DatasetError(source, None, "holds a Fortran-ordered array; expected C order")
    return tuple(shape), np.dtype(dtype)


def read_store(path: Path, rows: int | None = None) -> np.ndarray:
    """The first `rows` rows (all: None) of a gzipped .npy store file, without the rest."""
    source = str(path)
    if not path.is_file():
        raise DatasetError(source, None, "missing (expected the DQN Replay layout)")
    with gzip.open(path, "rb") as stream:
        shape, dtype = _open_npy(stream, source)
        count = shape[0] if rows is None else min(rows, shape[0])
        row_items = int(np.prod(shape[1:], dtype=np.int64))
        data = stream.read(count * row_items * dtype.itemsize)
    array = np.frombuffer(data, dtype=dtype)
    if array.size != count * row_items:
        raise DatasetError(source, None, f"is truncated: {array.size} of {count * row_items} items")
    return array.reshape(count, *shape[1:])


def plan_episodes(
    terminals: dict[int, np.ndarray],
    *,
    num_steps: int,
    trajectories_per_buffer: int,
    rng: np.random.Generator,
) -> dict[int, np.ndarray]:
    """Per checkpoint, the exclusive end rows of its chosen episodes, in DT's sampling order.

    `terminals` holds each checkpoint's terminal flags (already cut to the rows that may be
    read). The first episode of a checkpoint starts after its first terminal.
    """
    ends = {c: np.flatnonzero(t) + 1 for c, t in terminals.items()}
    taken = dict.fromkeys(ends, 0)  # episodes taken so far; episode j spans ends[j]..ends[j+1]
    steps = 0
    while steps < num_steps:
        open_buffers = [c for c in ends if taken[c] + 1 < len(ends[c])]
        if not open_buffers:
            break
        checkpoint = open_buffers[rng.integers(len(open_buffers))]
        first = taken[checkpoint]
        last = min(first + trajectories_per_buffer, len(ends[checkpoint]) - 1)
        steps += int(ends[checkpoint][last] - ends[checkpoint][first])
        taken[checkpoint] = last
    return {c: ends[c][: taken[c] + 1] for c in ends if taken[c] > 0}


def convert_dqn_replay(
    replay_dir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    game: str,
    checkpoints: Sequence[int],
    num_steps: int = 500_000,
    trajectories_per_buffer: int = TRAJECTORIES_PER_BUFFER,
    max_transitions_per_buffer: int = MAX_TRANSITIONS_PER_BUFFER,
    seed: int = 0,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Convert a sample of a DQN Replay run (``.../<Game>/<run>/replay_logs``) for `game`."""
    if game not in ATARI_GAMES:
        raise ValueError(f"unknown game {game!r}; choose from {sorted(ATARI_GAMES)}")
    if not checkpoints:
        raise ValueError("--checkpoints: name at least one checkpoint, e.g. 49 or 40-49")
    env_id = atari_env_id(game)
    env = gym.make(env_id)
    observation_space, action_space = env.observation_space, env.action_space
    env.close()
    terminals = {
        c: read_store(store_path(replay_dir, "terminal", c), max_transitions_per_buffer)
        for c in checkpoints
    }
    plan = plan_episodes(
        terminals,
        num_steps=num_steps,
        trajectories_per_buffer=trajectories_per_buffer,
        rng=np.random.default_rng(seed),
    )
    if not plan:
        raise DatasetError(
            str(store_path(replay_dir, "terminal", checkpoints[0])),
            "terminal",
            "no complete episode within the first "
            f"{max_transitions_per_buffer} steps of any chosen checkpoint",
        )
    source = {
        "converter": "rllib_lamo.data.dqn_replay.convert_dqn_replay",
        "input": str(replay_dir),
        "game": game,
        "checkpoints": list(checkpoints),
        "num_steps": num_steps,
        "trajectories_per_buffer": trajectories_per_buffer,
        "max_transitions_per_buffer": max_transitions_per_buffer,
        "seed": seed,
        "note": "DT's buffer sampling; leading partial and trailing unfinished episodes dropped",
    }
    with EpisodeDatasetWriter(
        out,
        observation_space=observation_space,
        action_space=action_space,
        env_id=env_id,
        source=source,
        seed=seed,
        overwrite=overwrite,
    ) as writer:
        for checkpoint in sorted(plan):
            _write_checkpoint(
                writer, replay_dir, checkpoint, plan[checkpoint], game, int(action_space.n)
            )
        return writer.close()


def _write_checkpoint(
    writer: EpisodeDatasetWriter,
    replay_dir: str | os.PathLike,
    checkpoint: int,
    ends: np.ndarray,
    game: str,
    num_actions: int,
) -> None:
    """Writes one checkpoint's chosen episodes (rows ends[0]..ends[-1])."""
    rows = int(ends[-1])
    store = {
        name: read_store(store_path(replay_dir, name, checkpoint), rows) for name in STORE_NAMES
    }
    frames = store["observation"]
    frames_file = str(store_path(replay_dir, "observation", checkpoint))
    if frames.dtype != np.uint8 or frames.shape[1:] != (FRAME_SIZE, FRAME_SIZE):
        raise DatasetError(
            frames_file,
            "observation",
            f"holds {frames.dtype} frames of shape {frames.shape[1:]}, expected uint8 "
            f"({FRAME_SIZE}, {FRAME_SIZE})",
        )
    for name in ("action", "reward", "terminal"):
        if len(store[name]) != rows:
            raise DatasetError(
                str(store_path(replay_dir, name, checkpoint)),
                name,
                f"has {len(store[name])} rows, the observations {rows}",
            )
    actions = store["action"].astype(np.int64)
    outside = np.flatnonzero((actions < 0) | (actions >= num_actions))
    if len(outside):
        raise DatasetError(
            str(store_path(replay_dir, "action", checkpoint)),
            "action",
            f"row {outside[0]} holds action {actions[outside[0]]}, outside {game}'s "
            f"{num_actions} actions (0..{num_actions - 1}): is this another game's replay?",
        )
    rewards = store["reward"].astype(np.float32)
    for start, end in zip(ends[:-1], ends[1:], strict=True):
        writer.add_episode(
            frames[start:end],
            actions[start:end],
            rewards[start:end],
            terminated=True,
            eps_id=f"{game}-ckpt{checkpoint}-{start:07d}",
            source=f"{frames_file} (rows {start}-{end})",
        )


def parse_checkpoints(text: str) -> list[int]:
    """``"49"``, ``"40-49"`` or ``"1,5,40-42"`` -> checkpoint numbers."""
    numbers: list[int] = []
    for part in text.split(","):
        first, _, last = part.strip().partition("-")
        try:
            low, high = int(first), int(last or first)
        except ValueError as err:
            raise ValueError(
                f"--checkpoints {text!r}: expected numbers and ranges such as 40-49 or 1,5,7"
            ) from err
        numbers.extend(range(low, high + 1))
    return numbers


def write_store_files(
    replay_dir: str | os.PathLike, checkpoint: int, arrays: dict[str, np.ndarray]
) -> None:
    """Writes arrays as dopamine does (`np.save` into a gzip stream), one file per name."""
    Path(replay_dir).mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        with gzip.open(store_path(replay_dir, name, checkpoint), "wb") as stream:
            np.save(stream, array, allow_pickle=False)
