"""Where things live: local paths versus cloud URIs, and the package's cache folder."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_FOLDER_NAME = "rllib_lamo"


def is_uri(path: str | os.PathLike) -> bool:
    """Whether a location is a URI (``s3://``, ``gs://``, ``file://``...) rather than a path."""
    return "://" in str(path)


def absolute_location(path: str | os.PathLike) -> str:
    """URIs as they are, local paths made absolute (other processes and nodes need that)."""
    return str(path) if is_uri(path) else str(Path(path).resolve())


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/rllib_lamo``, else ``~/.cache/rllib_lamo`` (trained policies, models)."""
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / CACHE_FOLDER_NAME
