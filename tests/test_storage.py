"""Locations: URIs versus local paths, and the cache folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from rllib_lamo.storage import absolute_location, cache_dir, is_uri


def test_uris_stay_and_local_paths_become_absolute(monkeypatch: pytest.MonkeyPatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert is_uri("s3://bucket/data") and is_uri("file:///x") and not is_uri("data/x")
    assert absolute_location("s3://bucket/data") == "s3://bucket/data"
    assert absolute_location("data/x") == str(tmp_path / "data" / "x")


def test_cache_dir_honours_xdg_cache_home(monkeypatch: pytest.MonkeyPatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_dir() == tmp_path / "rllib_lamo"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_dir() == Path.home() / ".cache" / "rllib_lamo"
