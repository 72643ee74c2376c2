"""A LaMo policy as an MLflow model: the `policy` pyfunc logged with each LaMo run.

The model holds the run's last checkpoint as the artifact ``checkpoint``; `rllib evaluate`
and `local_checkpoint` find it again from ``runs:/<run id>/policy`` or
``models:/<name>/<version>``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np

from rllib_lamo.checkpoints import LEARNER_GROUP, has_learner_state, restore_policy
from rllib_lamo.experiments.experiment_file import ExperimentError
from rllib_lamo.versions import installed_versions

MODEL_NAME = "policy"
CHECKPOINT_ARTIFACT = "checkpoint"
# What the logged model pins, so that it loads with the code that wrote it.
PINNED_PACKAGES = ("rllib-lamo", "ray")


class LaMoPolicyModel(mlflow.pyfunc.PythonModel):
    """`predict`: actions for a batch of K-step contexts, from a logged LaMo checkpoint.

    Input: a dict of arrays shaped as `DecisionContext` builds them: ``obs`` [B, K, obs],
    ``actions`` [B, K, act], ``returns_to_go`` [B, K] (scaled), ``timesteps`` [B, K] and
    ``attention_mask`` [B, K]. Output: actions [B, act] (or [B] for discrete actions).
    """

    # Its input, a dict of arrays, has no type hint MLflow's schema validation can describe:
    # opt out of that validation (and of MLflow's warning asking for one).
    _skip_type_hint_validation = True

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        self.module, self.config = restore_policy(context.artifacts[CHECKPOINT_ARTIFACT])

    def predict(
        self,
        context: mlflow.pyfunc.PythonModelContext,
        model_input,  # a dict of arrays: MLflow's type-hint schemas cannot describe it
        params: dict[str, Any] | None = None,
    ) -> np.ndarray:
        import torch
        from ray.rllib.core.columns import Columns

        batch = {key: torch.as_tensor(np.asarray(v)) for key, v in model_input.items()}
        return self.module.forward_inference(batch)[Columns.ACTIONS].numpy()


def log_policy_model(run_id: str, checkpoint_dir: str, register_as: str | None = None) -> None:
    """Logs a checkpoint as the run's `policy` model; registers it under ``register_as``."""
    with mlflow.start_run(run_id=run_id, nested=mlflow.active_run() is not None):
        info = mlflow.pyfunc.log_model(
            name=MODEL_NAME,
            python_model=LaMoPolicyModel(),
            artifacts={CHECKPOINT_ARTIFACT: checkpoint_dir},
            pip_requirements=[f"{p}=={v}" for p, v in installed_versions(PINNED_PACKAGES).items()],
        )
    if register_as:
        version = mlflow.register_model(info.model_uri, register_as)
        print(
            f"rllib: registered {info.model_uri} as model {version.name!r} "
            f"version {version.version}",
            flush=True,
        )


def local_checkpoint(uri: str, tracking_uri: str | None = None) -> str:
    """A local LaMo checkpoint folder for a ``runs:/`` or ``models:/`` URI of a store.

    Accepts the `policy` model (its MLmodel file names the checkpoint's folder) or a logged
    ``checkpoints/checkpoint_<n>`` folder.
    """
    from mlflow.exceptions import MlflowException

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        if tracking_uri:
            mlflow.set_registry_uri(tracking_uri)  # where models:/ names are looked up
        folder = Path(mlflow.artifacts.download_artifacts(uri, tracking_uri=tracking_uri))
    except (MlflowException, OSError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise ExperimentError(f"cannot download {uri}: {first_line}") from error
    candidates = [folder]
    if (folder / "MLmodel").is_file():
        from mlflow.models import Model

        artifacts = Model.load(folder).flavors.get("python_function", {}).get("artifacts", {})
        if CHECKPOINT_ARTIFACT in artifacts:
            candidates.append(folder / artifacts[CHECKPOINT_ARTIFACT]["path"])
    for candidate in candidates:
        if has_learner_state(candidate):
            return str(candidate)
    raise ExperimentError(f"{uri} holds no LaMo checkpoint (no {LEARNER_GROUP}/ in {folder})")
