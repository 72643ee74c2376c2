"""Converters into the shard format: Minari datasets and D4RL HDF5 files (RLlib: rllib_output).

Every converter streams: it holds one input chunk (a Minari episode, an HDF5 slice, one Parquet
row group) plus the writer's current shard, never the whole dataset. Episodes pass through
:class:`EpisodeDatasetWriter`, so bad input is refused with the input file and field named, and a
failed conversion leaves no output folder behind.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from rllib_lamo.data.format import DatasetError, env_spaces
from rllib_lamo.data.rllib_output import convert_rllib
from rllib_lamo.data.writer import EpisodeDatasetWriter
from rllib_lamo.envs import KITCHEN_ID, KITCHEN_OBS_DIM, KITCHEN_TASKS

# Minari's Franka Kitchen sets store dict observations with these keys.
KITCHEN_MINARI_KEYS = ("observation", "achieved_goal", "desired_goal")

# D4RL's MuJoCo (and Adroit, Kitchen) actions live in [-1, 1]; used when no env id is given.
D4RL_ACTION_BOUND = 1.0
HDF5_CHUNK_STEPS = 50_000


def _as_float32(values: np.ndarray, source: str, field_name: str) -> np.ndarray:
    """Cast numeric input to float32; refuse anything that is not numbers."""
    if not (np.issubdtype(values.dtype, np.floating) or np.issubdtype(values.dtype, np.integer)):
        raise DatasetError(source, field_name, f"must be numeric, got dtype {values.dtype}")
    return values.astype(np.float32, copy=False)


# ----------------------------------------------------------------------------------- Minari
def _open_minari(id_or_path: str) -> tuple[Any, str]:
    """A MinariDataset from a local id or a folder (the dataset root or its ``data`` dir)."""
    import minari
    from minari.dataset.minari_dataset import MinariDataset

    path = Path(id_or_path)
    if path.is_dir():
        data_dir = path / "data" if (path / "data").is_dir() else path
        if not (data_dir / "metadata.json").exists():
            raise DatasetError(str(path), None, "is not a Minari dataset folder (no metadata.json)")
        return MinariDataset(str(data_dir)), str(data_dir)
    try:
        dataset = minari.load_dataset(id_or_path, download=False)
    except FileNotFoundError as err:
        raise DatasetError(
            id_or_path,
            None,
            "no such local Minari dataset id or folder (download it first with "
            "`minari download ID`)",
        ) from err
    return dataset, id_or_path


def convert_minari(
    id_or_path: str, out: str | os.PathLike, *, overwrite: bool = False, env_id: str | None = None
) -> dict[str, Any]:
    """Convert a Minari dataset (any storage backend) episode by episode.

    Minari stores T+1 observations per episode (the last is the final next-observation); the
    format keeps the T the actions were taken in.
    """
    dataset, where = _open_minari(id_or_path)
    spec_env_id = dataset.env_spec.id if dataset.env_spec is not None else None
    observation_space, action_space = dataset.observation_space, dataset.action_space
    flat_key = None
    if isinstance(observation_space, gym.spaces.Dict):
        observation_space, flat_key = _kitchen_observation_space(observation_space, where)
        spec_env_id = KITCHEN_ID
    for name, space in (("observations", observation_space), ("actions", action_space)):
        if not isinstance(space, gym.spaces.Box | gym.spaces.Discrete):
            raise DatasetError(where, name, f"space {space} is not a Box or Discrete")
    if isinstance(observation_space, gym.spaces.Discrete):
        raise DatasetError(where, "observations", "Discrete observations are not supported")
    minari_meta = dataset.storage.metadata
    source = {
        "converter": "rllib_lamo.data.converters.convert_minari",
        "input": str(id_or_path),
        "minari_dataset_id": dataset.id,
        "minari_version": dataset.minari_version,
        "minari_ref_min_score": minari_meta.get("ref_min_score"),
        "minari_ref_max_score": minari_meta.get("ref_max_score"),
        "algorithm_name": minari_meta.get("algorithm_name"),
    }
    with EpisodeDatasetWriter(
        out,
        observation_space=observation_space,
        action_space=action_space,
        env_id=env_id or spec_env_id or dataset.id,
        source=source,
        overwrite=overwrite,
    ) as writer:
        for episode in dataset.iterate_episodes():
            label = f"{where} (episode {episode.id})"
            observations = np.asarray(
                episode.observations[flat_key] if flat_key else episode.observations
            )
            steps = len(episode.rewards)
            if len(observations) != steps + 1:
                raise DatasetError(
                    label,
                    "observations",
                    f"has {len(observations)} rows for {steps} steps (Minari stores steps + 1)",
                )
            writer.add_episode(
                _as_float32(observations[:-1], label, "observations"),
                np.asarray(episode.actions),
                _as_float32(np.asarray(episode.rewards), label, "rewards"),
                bool(np.asarray(episode.terminations)[-1]) if steps else False,
                eps_id=f"{dataset.id}-{episode.id}",
                source=label,
            )
        return writer.close()


def _kitchen_observation_space(space: gym.spaces.Dict, where: str) -> tuple[gym.spaces.Box, str]:
    """The flat observation of Minari's kitchen layout (``D4RL/kitchen/*-v2``), checked.

    Those sets store ``FrankaKitchen-v1``'s dict observations: ``observation`` (59 floats) and
    the goal dicts of D4RL's four tasks; ``LaMoKitchen-v0`` observes ``observation`` alone
    (``rllib_lamo.envs.kitchen`` says why). Other dict layouts are refused.
    """
    keys = set(space.spaces)
    if keys != set(KITCHEN_MINARI_KEYS):
        raise DatasetError(
            where,
            "observations",
            f"is a Dict with keys {sorted(keys)}; only Franka Kitchen's layout "
            f"{list(KITCHEN_MINARI_KEYS)} is supported (flatten other dict observations first)",
        )
    observation = space["observation"]
    if not isinstance(observation, gym.spaces.Box) or observation.shape != (KITCHEN_OBS_DIM,):
        raise DatasetError(
            where,
            "observations['observation']",
            f"is {observation}, but {KITCHEN_ID} observes Box(-inf, inf, ({KITCHEN_OBS_DIM},)): "
            "robot joint positions and velocities (9 + 9), object positions and velocities "
            "(21 + 20), as Minari's D4RL/kitchen/*-v2 store it",
        )
    tasks = (
        set(space["desired_goal"].spaces)
        if isinstance(space["desired_goal"], gym.spaces.Dict)
        else set()
    )
    if tasks != set(KITCHEN_TASKS):
        raise DatasetError(
            where,
            "observations['desired_goal']",
            f"holds the tasks {sorted(tasks)}, but {KITCHEN_ID} scores D4RL's four: "
            f"{list(KITCHEN_TASKS)}",
        )
    return gym.spaces.Box(-np.inf, np.inf, (KITCHEN_OBS_DIM,), np.float64), "observation"


# ------------------------------------------------------------------------------------- D4RL
D4RL_REQUIRED = ("observations", "actions", "rewards", "terminals", "timeouts")


def _d4rl_episode_ends(terminals: np.ndarray, timeouts: np.ndarray) -> np.ndarray:
    """Indices (exclusive ends) after which an episode finishes, within one chunk."""
    return np.flatnonzero(terminals | timeouts) + 1


def iter_d4rl_episodes(
    path: str | os.PathLike, chunk_steps: int = HDF5_CHUNK_STEPS
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, bool, int]]:
    """(obs, actions, rewards, terminated, first row) per episode of a D4RL HDF5 file.

    Reads ``chunk_steps`` rows at a time; an episode crossing a chunk border is carried over.
    Steps after the last terminal/timeout flag (an unfinished episode) are dropped, as the DT
    and LaMo data loaders do.
    """
    import h5py

    source = str(path)
    with h5py.File(path, "r") as file:
        for name in D4RL_REQUIRED:
            if name not in file or not isinstance(file[name], h5py.Dataset):
                raise DatasetError(
                    source, name, "missing (D4RL layout needs " + ", ".join(D4RL_REQUIRED) + ")"
                )
        num_rows = len(file["rewards"])
        for name in D4RL_REQUIRED:
            if len(file[name]) != num_rows:
                raise DatasetError(source, name, f"has {len(file[name])} rows, rewards {num_rows}")
        for name in ("observations", "actions"):
            if file[name].ndim != 2:
                raise DatasetError(source, name, f"must be 2-D [N, dim], got {file[name].shape}")
        carried: dict[str, np.ndarray] | None = None
        carried_start = 0
        for start in range(0, num_rows, chunk_steps):
            stop = min(start + chunk_steps, num_rows)
            chunk = {name: file[name][start:stop] for name in D4RL_REQUIRED}
            for name in ("observations", "actions", "rewards"):
                chunk[name] = _as_float32(chunk[name], f"{source} (rows {start}-{stop})", name)
            for name in ("terminals", "timeouts"):
                if chunk[name].dtype != np.bool_:  # D4RL stores bool; 0/1 numbers are accepted
                    _as_float32(chunk[name], f"{source} (rows {start}-{stop})", name)
                chunk[name] = chunk[name].astype(bool)
            if carried is not None:
                chunk = {k: np.concatenate([carried[k], chunk[k]]) for k in chunk}
                chunk_start = carried_start
            else:
                chunk_start = start
            ends = _d4rl_episode_ends(chunk["terminals"], chunk["timeouts"])
            begin = 0
            for end in ends:
                yield (
                    chunk["observations"][begin:end],
                    chunk["actions"][begin:end],
                    chunk["rewards"][begin:end],
                    bool(chunk["terminals"][end - 1]),
                    chunk_start + begin,
                )
                begin = end
            carried = (
                {k: v[begin:] for k, v in chunk.items()} if begin < len(chunk["rewards"]) else None
            )
            carried_start = chunk_start + begin


def convert_d4rl(
    path: str | os.PathLike,
    out: str | os.PathLike,
    *,
    env_id: str | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Convert a D4RL-layout HDF5 file (observations, actions, rewards, terminals, timeouts).

    ``env_id`` (e.g. ``Hopper-v5`` or ``hopper-medium-v2``) sets the normalised scores and, when
    gymnasium knows it, the spaces; otherwise observations are unbounded and actions in
    [-1, 1], D4RL's convention.
    """
    import h5py

    with h5py.File(path, "r") as file:
        obs_dim = file["observations"].shape[-1] if "observations" in file else 0
        act_dim = file["actions"].shape[-1] if "actions" in file else 0
    spaces = env_spaces(env_id)
    if spaces is None:
        spaces = (
            gym.spaces.Box(-np.inf, np.inf, (obs_dim,), np.float32),
            gym.spaces.Box(-D4RL_ACTION_BOUND, D4RL_ACTION_BOUND, (act_dim,), np.float32),
        )
    source = {
        "converter": "rllib_lamo.data.converters.convert_d4rl",
        "input": str(path),
        "note": "steps after the last terminal/timeout flag are dropped",
    }
    with EpisodeDatasetWriter(
        out,
        observation_space=spaces[0],
        action_space=spaces[1],
        env_id=env_id,
        source=source,
        overwrite=overwrite,
    ) as writer:
        for index, (obs, actions, rewards, terminated, first_row) in enumerate(
            iter_d4rl_episodes(path)
        ):
            writer.add_episode(
                obs,
                actions,
                rewards,
                terminated,
                eps_id=f"{Path(path).stem}-{index:07d}",
                source=f"{path} (episode {index}, rows {first_row}-{first_row + len(rewards)})",
            )
        return writer.close()


__all__ = ["convert_d4rl", "convert_minari", "convert_rllib", "iter_d4rl_episodes"]
