"""One object for "the dataset" a trial trains on, read once and handed on.

The config reads it to fill its spaces, the offline data reads the episodes it names; both use
this object instead of each resolving the folder and parsing `metadata.json` again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gymnasium as gym

from rllib_lamo.data.format import read_metadata, space_from_dict


@dataclass(frozen=True)
class TrajectoryDataset:
    """A dataset folder (local path or cloud URI) and what its `metadata.json` says."""

    folder: str
    metadata: dict[str, Any]
    observation_space: gym.Space
    action_space: gym.Space
    # Set by writers that hash the episode files; None for datasets written without one.
    content_hash: str | None

    @classmethod
    def read(cls, input_: str | list[str]) -> TrajectoryDataset:
        """Reads the metadata of the dataset an `input_` (folder, URI or shard list) names."""
        folder = dataset_folder(input_)
        metadata = read_metadata(folder)
        return cls(
            folder=folder,
            metadata=metadata,
            observation_space=space_from_dict(metadata["observation_space"]),
            action_space=space_from_dict(metadata["action_space"]),
            content_hash=metadata.get("content_hash"),
        )

    @property
    def env_id(self) -> str | None:
        return self.metadata.get("env_id")


def dataset_folder(input_: str | list[str]) -> str:
    """The dataset folder (where metadata.json lives) of an `input_` folder or shard list."""
    first = input_ if isinstance(input_, str) else input_[0]
    first = str(first).rstrip("/")
    return first.rsplit("/", 1)[0] if first.endswith(".parquet") else first
