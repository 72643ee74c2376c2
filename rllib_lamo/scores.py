"""Normalised scores: 100 * (return - random) / (expert - random), as D4RL defines them.

One table serves the dataset tools, the evaluation metrics and the report, so a score means the
same thing everywhere it is printed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# Result keys of the paper's reported number, `result["evaluation"][PAPER_SCORE_KEY]`: stable
# names for the progress table, MLflow and the report.
PAPER_SCORE_KEY = "paper_score"
PAPER_SCORE = "score"  # the best target's mean over the last N evaluations
PAPER_SCORE_STD = "std_over_episodes"  # std over all episodes of those N evaluations
PAPER_SCORE_TARGET = "target_return"  # the target it was reached at
PAPER_SCORE_METRIC = "metric"  # "normalised_score", or "return" where the env has no references
PAPER_SCORE_NUM_EVALUATIONS = "num_evaluations"  # evaluations averaged (<= N on short runs)
PAPER_SCORE_LAST_N = "last_n_evaluations"  # N, the setting
PAPER_SCORE_NUM_EPISODES = "num_episodes"
PAPER_SCORE_PER_TARGET = "per_target"  # {target_key: {score, std_over_episodes, ...}}


@dataclass(frozen=True)
class ReferenceScores:
    """Random and expert returns that anchor the 0 and 100 of a normalised score."""

    random: float
    expert: float
    source: str

    def normalise(self, returns: float | np.ndarray) -> float | np.ndarray:
        return (
            100.0
            * (np.asarray(returns, dtype=np.float64) - self.random)
            / (self.expert - self.random)
        )


# D4RL's own constants (d4rl/infos.py), used by the LaMo paper for every MuJoCo table.
D4RL_REFERENCE_SCORES: dict[str, ReferenceScores] = {
    "hopper": ReferenceScores(-20.272305, 3234.3, "D4RL"),
    "walker2d": ReferenceScores(1.629008, 4592.3, "D4RL"),
    "halfcheetah": ReferenceScores(-280.178953, 12135.0, "D4RL"),
    "reacher2d": ReferenceScores(0.0, 100.0, "LaMo Table 5"),
    # D4RL's kitchen: a return counts the four target tasks completed, so the score is their
    # share in percent.
    "kitchen": ReferenceScores(0.0, 4.0, "D4RL"),
    # Atari: the paper's random / human-expert returns of its Table 5 (DT's, from the DQN
    # literature), scored on the raw game score of a full game.
    "breakout": ReferenceScores(1.7, 31.8, "LaMo Table 5"),
    "qbert": ReferenceScores(163.9, 13455.0, "LaMo Table 5"),
    "pong": ReferenceScores(-20.7, 9.3, "LaMo Table 5"),
}

# Env-name prefixes per task. Only the paper's sparse planar arm is Reacher2d: gymnasium's
# dense-reward ``Reacher`` is another task whose returns are negative distances.
_ENV_TASK = {
    "hopper": "hopper",
    "walker2d": "walker2d",
    "halfcheetah": "halfcheetah",
    "reacher2d": "reacher2d",
    # D4RL's four-task kitchen (``kitchen-partial-v0``) and ours (``LaMoKitchen-v0``), not
    # gymnasium-robotics' FrankaKitchen-v1, whose default has seven tasks.
    "kitchen": "kitchen",
    "lamokitchen": "kitchen",
    "breakout": "breakout",
    "qbert": "qbert",
    "pong": "pong",
}


def task_of_env(env_id: str) -> str | None:
    """Map a gymnasium/D4RL/Minari env id (``Hopper-v5``, ``hopper-medium-v2``) to its task."""
    name = env_id.split("/")[-1].lower().replace("_", "").replace("-", "")
    for prefix, task in _ENV_TASK.items():
        if name.startswith(prefix):
            return task
    return None


def reference_scores(env_id: str) -> ReferenceScores | None:
    """The D4RL reference scores for an env id, or None where D4RL defines none."""
    task = task_of_env(env_id)
    return D4RL_REFERENCE_SCORES.get(task) if task else None


@dataclass(frozen=True)
class TargetScore:
    """One evaluation of one target return: mean and std over its episodes, by one metric."""

    target_return: float
    mean: float
    std: float
    num_episodes: int
    metric: str


def target_scores(per_target_metrics: Iterable[Mapping[str, Any]]) -> list[TargetScore]:
    """One evaluation's per-target figures by the paper's measure (normalised where possible).

    Takes the per-target dicts the evaluation reports (``target_return``, ``num_episodes``,
    ``normalised_score_mean/std`` where the env has reference scores, else ``return_mean/std``).
    """
    scores = []
    for metrics in per_target_metrics:
        metric = "normalised_score" if "normalised_score_mean" in metrics else "return"
        scores.append(
            TargetScore(
                target_return=float(metrics["target_return"]),
                mean=float(metrics[f"{metric}_mean"]),
                std=float(metrics[f"{metric}_std"]),
                num_episodes=int(metrics["num_episodes"]),
                metric=metric,
            )
        )
    return scores


def paper_score(
    history: Sequence[Sequence[TargetScore]],
    last_n: int,
    *,
    key_of_target: Callable[[float], str] = str,
) -> dict[str, Any] | None:
    """LaMo's reported number: per target, the mean over the last `last_n` evaluations, then
    the best target (the paper: the last 20K of 100K steps, i.e. its last 8 evaluations).

    A run with fewer evaluations averages all of them (``num_evaluations`` says how many). The
    mean pools those evaluations' episodes (with equal episodes per evaluation, the mean of the
    evaluation means); the std is over those same episodes. None before the first evaluation.
    `key_of_target` names a target in ``per_target`` (e.g. ``target_3600``).
    """
    if last_n < 1:
        raise ValueError(f"paper_score_last_n_evals must be >= 1, got {last_n}.")
    window = history[-last_n:]
    if not window:
        return None
    by_target: dict[float, list[TargetScore]] = {}
    for evaluation in window:
        for score in evaluation:
            by_target.setdefault(score.target_return, []).append(score)
    per_target = {target: _pooled(scores) for target, scores in by_target.items()}
    best_target = max(per_target, key=lambda target: per_target[target][PAPER_SCORE])
    best = per_target[best_target]
    return {
        PAPER_SCORE: best[PAPER_SCORE],
        PAPER_SCORE_STD: best[PAPER_SCORE_STD],
        PAPER_SCORE_TARGET: best_target,
        PAPER_SCORE_METRIC: best[PAPER_SCORE_METRIC],
        PAPER_SCORE_NUM_EVALUATIONS: len(window),
        PAPER_SCORE_LAST_N: last_n,
        PAPER_SCORE_PER_TARGET: {
            key_of_target(target): per_target[target] for target in sorted(per_target)
        },
    }


def _pooled(scores: Sequence[TargetScore]) -> dict[str, Any]:
    """Mean and std over all episodes of several evaluations, from their means and stds."""
    metrics = {score.metric for score in scores}
    if len(metrics) > 1:
        raise ValueError(f"Cannot average evaluations scored by different metrics: {metrics}.")
    counts = np.array([score.num_episodes for score in scores], dtype=np.float64)
    means = np.array([score.mean for score in scores])
    stds = np.array([score.std for score in scores])
    total = counts.sum()
    mean = float((counts * means).sum() / total)
    second_moment = float((counts * (stds**2 + means**2)).sum() / total)
    return {
        PAPER_SCORE: mean,
        PAPER_SCORE_STD: float(np.sqrt(max(second_moment - mean**2, 0.0))),
        PAPER_SCORE_NUM_EVALUATIONS: len(scores),
        PAPER_SCORE_NUM_EPISODES: int(total),
        PAPER_SCORE_METRIC: metrics.pop(),
    }
