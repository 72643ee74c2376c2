"""Where experiments and their MLflow runs are written."""

from __future__ import annotations

from pathlib import Path

import pytest

from rllib_lamo.experiments.experiment_file import MLflowSettings
from rllib_lamo.experiments.store import local_artifact_root, resolve_tracking_uri, storage_root


def test_tracking_uri_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    from_yaml = MLflowSettings(tracking_uri="http://yaml:5000")
    assert resolve_tracking_uri("http://flag:5000", from_yaml, str(tmp_path)) == "http://flag:5000"
    assert resolve_tracking_uri(None, from_yaml, str(tmp_path)) == "http://yaml:5000"
    assert resolve_tracking_uri(None, MLflowSettings(), str(tmp_path)) == (
        f"sqlite:///{tmp_path / 'mlflow.db'}"
    )
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://env:5000")
    assert resolve_tracking_uri(None, MLflowSettings(), str(tmp_path)) == "http://env:5000"
    assert resolve_tracking_uri(None, from_yaml, str(tmp_path)) == "http://yaml:5000"


def test_storage_root_and_artifacts_beside_a_local_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert storage_root(None, None) == str(tmp_path / "ray_results")
    assert storage_root("out", "ignored") == str(tmp_path / "out")
    assert storage_root(None, "s3://bucket/results") == "s3://bucket/results"
    uri = resolve_tracking_uri(None, MLflowSettings(), str(tmp_path / "ray_results"))
    assert local_artifact_root(uri) == (tmp_path / "ray_results" / "mlartifacts").as_uri()
    assert local_artifact_root("http://127.0.0.1:5000") is None
