"""Compatibility: the trajectory shard format used to live in this one module.

It is now split into `rllib_lamo.data.format` (columns, metadata, spaces, reading),
`rllib_lamo.data.validation` and `rllib_lamo.data.writer`; this module re-exports their public
names so that code and notebooks written against ``rllib_lamo.data.shards`` keep working.
New code imports from those modules.
"""

from __future__ import annotations

from rllib_lamo.data.format import (
    CONTENT_HASH_KEY,
    DEFAULT_MAX_STEPS_PER_SHARD,
    EPISODE_COLUMNS,
    FORMAT,
    METADATA_FILE,
    METADATA_KEYS,
    SHARD_NAME,
    SHARD_PATTERN,
    DatasetError,
    Episode,
    content_hash,
    env_spaces,
    episodes_from_table,
    flat_dim,
    iter_episodes,
    iter_shard_tables,
    list_shards,
    read_metadata,
    resolve_filesystem,
    space_from_dict,
    space_to_dict,
)
from rllib_lamo.data.validation import validate_dataset, validate_episode_batch
from rllib_lamo.data.writer import EpisodeDatasetWriter, copy_episodes, write_dataset

__all__ = [
    "CONTENT_HASH_KEY",
    "DEFAULT_MAX_STEPS_PER_SHARD",
    "EPISODE_COLUMNS",
    "FORMAT",
    "METADATA_FILE",
    "METADATA_KEYS",
    "SHARD_NAME",
    "SHARD_PATTERN",
    "DatasetError",
    "Episode",
    "EpisodeDatasetWriter",
    "content_hash",
    "copy_episodes",
    "env_spaces",
    "episodes_from_table",
    "flat_dim",
    "iter_episodes",
    "iter_shard_tables",
    "list_shards",
    "read_metadata",
    "resolve_filesystem",
    "space_from_dict",
    "space_to_dict",
    "validate_dataset",
    "validate_episode_batch",
    "write_dataset",
]
