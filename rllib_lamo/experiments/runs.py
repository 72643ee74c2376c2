"""MLflow runs as `rllib train file` logs them: metric names, queries, per-run figures.

Metric names (see `rllib_lamo.experiments.tracking`): training metrics under their short
names (``action_loss``), evaluation under ``eval/``: ``eval/target_<R>/<figure>`` per target
return, ``eval/best/<figure>`` for the best target of an evaluation.

Method (`method_of`), from the run's config params, unless the run has a ``method`` tag:
``lm_pretrained: false`` is "DT" (the same model, randomly initialised: the paper's Decision
Transformer baseline); otherwise "LaMo", with the ablations that differ from the paper's
recipe appended: ``finetune: full`` -> "full fine-tuning", ``finetune: frozen`` -> "frozen LM",
``embedding: linear`` -> "linear embeddings", ``language_loss_coeff: 0`` -> "no language
loss", e.g. "LaMo (linear embeddings, no language loss)". Runs of other algorithms (BC, IQL,
...) are named by their algorithm.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from rllib_lamo import metrics
from rllib_lamo.scores import task_of_env

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run

EVAL_PREFIX = "eval"
TARGET_PREFIX = f"{EVAL_PREFIX}/{metrics.TARGET_PREFIX}"
BEST_PREFIX = f"{EVAL_PREFIX}/{metrics.BEST}/"
NORMALISED = metrics.NORMALISED_SCORE
RETURN = metrics.RETURN


def method_of(params: Mapping[str, str], algorithm: str | None = None) -> str:
    """The method a run's config params describe; the rule is in the module docstring."""
    if algorithm not in (None, "LaMo"):
        return algorithm
    if str(params.get("lm_pretrained", "True")) == "False":
        return "DT"
    ablations = []
    finetune = params.get("finetune", "lora")
    if finetune == "full":
        ablations.append("full fine-tuning")
    elif finetune == "frozen":
        ablations.append("frozen LM")
    if params.get("embedding", "mlp") == "linear":
        ablations.append("linear embeddings")
    if _float(params.get("language_loss_coeff")) == 0.0:
        ablations.append("no language loss")
    return f"LaMo ({', '.join(ablations)})" if ablations else "LaMo"


@dataclass
class RunSummary:
    """One run's row: where it belongs in the table and its final and best figures."""

    run_id: str
    run_name: str
    task: str
    data_ratio: float
    method: str
    seed: str
    unit: str  # NORMALISED or RETURN
    final: float | None
    best: float | None
    curve: list[tuple[int, float]]


def metric_histories(
    client: MlflowClient, run_id: str, names: Sequence[str] | None = None
) -> dict[str, list[tuple[int, float]]]:
    """``{metric: [(step, value), ...]}`` sorted by step, for every (or the named) metric."""
    if names is None:
        names = list(client.get_run(run_id).data.metrics)
    histories = {}
    for name in names:
        points = client.get_metric_history(run_id, name)
        if points:
            histories[name] = sorted((int(p.step), float(p.value)) for p in points)
    return histories


def summarise_run(run: Run, client: MlflowClient, final_last: int) -> RunSummary:
    """A run's table coordinates and its final and best figures (None without evaluations)."""
    params = run.data.params
    histories = metric_histories(client, run.info.run_id)
    unit = eval_unit(histories)
    suffix = per_target_suffix(unit)
    per_target = [
        float(np.mean([value for _, value in points[-final_last:]]))
        for name, points in histories.items()
        if name.startswith(TARGET_PREFIX) and name.endswith(f"/{suffix}")
    ]
    best_points = histories.get(f"{BEST_PREFIX}{unit}", [])
    env = params.get("env", "")
    return RunSummary(
        run_id=run.info.run_id,
        run_name=run.info.run_name,
        task=task_of_env(env) or env,
        data_ratio=_float(params.get("data_ratio")) or 1.0,
        method=run.data.tags.get("method") or method_of(params, run.data.tags.get("algorithm")),
        seed=params.get("seed", "None"),
        unit=unit,
        final=max(per_target) if per_target else None,
        best=max(value for _, value in best_points) if best_points else None,
        curve=best_points,
    )


def gather_runs(client: MlflowClient, experiment_names: Sequence[str]) -> list[Run]:
    """Every finished run of the named experiments."""
    experiments = []
    for name in experiment_names:
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise LookupError(f"no MLflow experiment named {name!r} in {client.tracking_uri}")
        experiments.append(experiment.experiment_id)
    return client.search_runs(experiments, filter_string="attributes.status = 'FINISHED'")


def eval_unit(histories: Mapping[str, Any]) -> str:
    """Normalised scores where the run has them (D4RL tasks), else returns."""
    return NORMALISED if f"{BEST_PREFIX}{NORMALISED}" in histories else RETURN


def per_target_suffix(unit: str) -> str:
    """The per-target figure of a unit: ``normalised_score_mean`` or ``return_mean``."""
    return metrics.NORMALISED_SCORE_MEAN if unit == NORMALISED else metrics.RETURN_MEAN


def _float(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number
