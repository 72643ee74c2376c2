"""MLflow runs as `rllib train file` logs them: metric names, queries, per-run figures.

Metric names (see `rllib_lamo.experiments.tracking`): training metrics under their short
names (``action_loss``), evaluation under ``eval/``: ``eval/target_<R>/<figure>`` per target
return, ``eval/best/<figure>`` for the best target of an evaluation.

A run's figures (`summarise_run`), all from its per-target evaluation histories by the same
rule as the algorithm's `rllib_lamo.scores.paper_score`: ``paper``, the paper's reported number
(per target, the mean over the last N evaluations, then the best target; N = the run's
``paper_score_last_n_evals``, else 8); ``final``, the last evaluation's best target; ``best``,
the best evaluation of the run. Each comes with the std over its evaluation episodes.

Method (`method_of`), from the run's config params, unless the run has a ``method`` tag:
``language_model: dt`` is "DT (paper: 3x128)", the paper's Decision Transformer baseline;
``lm_pretrained: false`` is "LaMo arch, random init" (the same model, randomly initialised);
otherwise "LaMo". Differences from the recipe are appended: ``language_model:
lamo-tiny-synthetic`` -> "synthetic pre-training", ``finetune: full`` -> "full fine-tuning",
``finetune: frozen`` -> "frozen LM", ``embedding: linear`` -> "linear embeddings" (DT:
``embedding: mlp`` -> "DT (paper: 3x128) + MLP embeddings"), ``language_loss_coeff: 0`` ->
"no language loss", e.g. "LaMo (linear embeddings, no language loss)". Runs of other
algorithms (BC, IQL, ...) are named by their algorithm.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rllib_lamo import metrics
from rllib_lamo.data.format import read_metadata
from rllib_lamo.scores import TargetScore, paper_score, target_scores, task_of_env

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run

EVAL_PREFIX = "eval"
TARGET_PREFIX = f"{EVAL_PREFIX}/{metrics.TARGET_PREFIX}"
BEST_PREFIX = f"{EVAL_PREFIX}/{metrics.BEST}/"
NORMALISED = metrics.NORMALISED_SCORE
RETURN = metrics.RETURN
# `language_model` values that name a method (`rllib_lamo.language_models`'s, spelled here so
# that reading runs imports no torch; tests/test_runs.py keeps them equal).
DT_LANGUAGE_MODEL = "dt"
SYNTHETIC_LANGUAGE_MODEL = "lamo-tiny-synthetic"
DT_METHOD = "DT (paper: 3x128)"
RANDOM_INIT_METHOD = "LaMo arch, random init"
# `LaMoConfig.paper_score_last_n_evals`'s default, for runs logged without the param.
DEFAULT_PAPER_LAST_N = 8


def method_of(params: Mapping[str, str], algorithm: str | None = None) -> str:
    """The method a run's config params describe; the rule is in the module docstring."""
    if algorithm not in (None, "LaMo"):
        return algorithm
    embedding = params.get("embedding", "mlp")
    if params.get("language_model") == DT_LANGUAGE_MODEL:
        # The DT recipe (full training, linear embeddings, no text) is validated by LaMoConfig.
        return DT_METHOD if embedding == "linear" else f"{DT_METHOD} + MLP embeddings"
    pretrained = str(params.get("lm_pretrained", "True")) != "False"
    ablations = []
    if pretrained and params.get("language_model") == SYNTHETIC_LANGUAGE_MODEL:
        ablations.append("synthetic pre-training")
    finetune = params.get("finetune", "lora")
    if finetune == "full":
        ablations.append("full fine-tuning")
    elif finetune == "frozen":
        ablations.append("frozen LM")
    if embedding == "linear":
        ablations.append("linear embeddings")
    if _float(params.get("language_loss_coeff")) == 0.0:
        ablations.append("no language loss")
    base = "LaMo" if pretrained else RANDOM_INIT_METHOD
    return f"{base} ({', '.join(ablations)})" if ablations else base


@dataclass
class RunSummary:
    """One run's row: where it belongs in the table and its paper, final and best figures.

    Each figure is the best target's mean over its evaluation episodes (None without
    evaluations), with the std over those episodes (``*_episode_std``).
    """

    run_id: str
    run_name: str
    task: str
    data_ratio: float
    method: str
    seed: str
    unit: str  # NORMALISED or RETURN
    last_n: int  # N of the paper's figure
    paper_evaluations: int  # evaluations it averages (fewer than N in short runs)
    paper: float | None
    paper_episode_std: float | None
    final: float | None
    final_episode_std: float | None
    best: float | None
    best_episode_std: float | None
    curve: list[tuple[int, float]]  # (training iteration, that evaluation's best target)


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


def summarise_run(run: Run, client: MlflowClient, last_n: int | None = None) -> RunSummary:
    """A run's table coordinates and figures; `last_n` overrides the run's own N."""
    params = run.data.params
    histories = metric_histories(client, run.info.run_id)
    evaluations = evaluation_history(histories, run.info.run_id)
    steps = [step for step, _ in evaluations]
    history = [scores for _, scores in evaluations]
    last_n = last_n or int(_float(params.get("paper_score_last_n_evals")) or DEFAULT_PAPER_LAST_N)
    paper = paper_score(history, last_n)
    each = [paper_score([scores], 1) for scores in history]
    best = max(each, key=lambda figures: figures[metrics.PAPER_SCORE]) if each else None
    env = params.get("env", "")
    return RunSummary(
        run_id=run.info.run_id,
        run_name=run.info.run_name,
        task=task_of_env(env) or env,
        data_ratio=effective_data_ratio(params),
        method=run.data.tags.get("method") or method_of(params, run.data.tags.get("algorithm")),
        seed=params.get("seed", "None"),
        unit=paper[metrics.PAPER_SCORE_METRIC] if paper else eval_unit(histories),
        last_n=last_n,
        paper_evaluations=paper[metrics.PAPER_SCORE_NUM_EVALUATIONS] if paper else 0,
        paper=_figure(paper),
        paper_episode_std=_figure(paper, metrics.PAPER_SCORE_STD),
        final=_figure(each[-1] if each else None),
        final_episode_std=_figure(each[-1] if each else None, metrics.PAPER_SCORE_STD),
        best=_figure(best),
        best_episode_std=_figure(best, metrics.PAPER_SCORE_STD),
        curve=[
            (step, figures[metrics.PAPER_SCORE]) for step, figures in zip(steps, each, strict=True)
        ],
    )


def evaluation_history(
    histories: Mapping[str, list[tuple[int, float]]], run_id: str = ""
) -> list[tuple[int, list[TargetScore]]]:
    """Per evaluation (training iteration), its per-target scores from ``eval/target_<R>/*``."""
    per_step: dict[int, dict[str, dict[str, float]]] = {}
    for name, points in histories.items():
        if name.startswith(TARGET_PREFIX):
            target, figure = name.removeprefix(f"{EVAL_PREFIX}/").split("/", 1)
            for step, value in points:
                per_step.setdefault(step, {}).setdefault(target, {})[figure] = value
    evaluations = []
    for step, targets in sorted(per_step.items()):
        try:
            evaluations.append((step, target_scores(targets.values())))
        except KeyError as missing:
            raise ValueError(
                f"MLflow run {run_id}: the evaluation at iteration {step} lacks "
                f"eval/target_<R>/{missing.args[0]} (runs logged by `rllib train file` have "
                "target_return, num_episodes and the mean and std of each target's returns)."
            ) from None
    return evaluations


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


def _figure(figures: Mapping[str, Any] | None, field: str = metrics.PAPER_SCORE) -> float | None:
    return None if figures is None else float(figures[field])


def effective_data_ratio(params: Mapping[str, str]) -> float:
    """The share of the source dataset a run trained on: its `data_ratio` times the ratio of
    the subset it read, where `input_` is a folder written by `lamo-data subset` (the paper's
    pre-sampled files); a subset of the 1M-step set at 0.01 is reported as 0.01."""
    ratio = _float(params.get("data_ratio")) or 1.0
    folder = params.get("input") or params.get("input_")
    try:
        source = read_metadata(folder).get("source") or {} if folder else {}
    except (OSError, ValueError):
        source = {}  # not a local dataset folder (a URI, a shard list, moved): its own ratio
    if source.get("generator") == "rllib_lamo.data.subsets":
        ratio *= float(source["ratio"])
    return ratio


def _float(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number
