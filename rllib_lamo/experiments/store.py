"""Where experiments are written: Tune's storage path and the MLflow store beside it.

Runs go to (first that is set): ``--mlflow-uri``, the experiment's ``mlflow: {tracking_uri}``,
``$MLFLOW_TRACKING_URI``, else a SQLite store next to the results,
``sqlite:///<storage path>/mlflow.db`` (``./mlflow.db`` when the storage path is a cloud URI),
whose artifacts go to ``<storage path>/mlartifacts``.
"""

from __future__ import annotations

import os
from pathlib import Path

from rllib_lamo.experiments.experiment_file import MLflowSettings
from rllib_lamo.storage import is_uri

DEFAULT_STORAGE_PATH = "ray_results"
DEFAULT_DB_FILE = "mlflow.db"
DEFAULT_ARTIFACT_FOLDER = "mlartifacts"
SQLITE_PREFIX = "sqlite:///"


def storage_root(flag: str | None, configured: str | None) -> str:
    """The storage path: the flag, else the experiment's, else ./ray_results; made absolute."""
    root = flag or configured or DEFAULT_STORAGE_PATH
    return root if is_uri(root) else str(Path(root).resolve())


def resolve_tracking_uri(flag: str | None, settings: MLflowSettings, storage_root: str) -> str:
    """The tracking URI a run logs to: flag, YAML, $MLFLOW_TRACKING_URI, else local SQLite."""
    chosen = flag or settings.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if chosen:
        return chosen
    folder = Path.cwd() if is_uri(storage_root) else Path(storage_root)
    return f"{SQLITE_PREFIX}{(folder / DEFAULT_DB_FILE).resolve()}"


def missing_local_store(tracking_uri: str) -> Path | None:
    """The SQLite file a tracking URI names, when it does not exist (MLflow would create it).

    Reading commands (`rllib evaluate`, `lamo-report`) use this to name a mistyped store
    instead of creating an empty one.
    """
    if not tracking_uri.startswith(SQLITE_PREFIX):
        return None
    database = Path(tracking_uri.removeprefix(SQLITE_PREFIX))
    return None if database.is_file() else database


def local_artifact_root(tracking_uri: str) -> str | None:
    """Artifacts of a local SQLite store live next to its file (MLflow's default is ./mlruns)."""
    if not tracking_uri.startswith(SQLITE_PREFIX):
        return None
    database = Path(tracking_uri.removeprefix(SQLITE_PREFIX))
    return (database.parent / DEFAULT_ARTIFACT_FOLDER).resolve().as_uri()
