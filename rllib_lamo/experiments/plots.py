"""Figures of MLflow runs: one run's learning curve, and mean curves over seeds per method."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from rllib_lamo.experiments.runs import (
    EVAL_PREFIX,
    NORMALISED,
    TARGET_PREFIX,
    RunSummary,
    eval_unit,
    per_target_suffix,
)
from rllib_lamo.metrics import ACTION_LOSS_KEY, LANGUAGE_LOSS_KEY

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def learning_curve_figure(histories: Mapping[str, list[tuple[int, float]]]) -> Figure:
    """Losses (left) and evaluation per target (right) against the training iteration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (losses, evaluation) = plt.subplots(1, 2, figsize=(11, 4))
    for name in (ACTION_LOSS_KEY, LANGUAGE_LOSS_KEY):
        if name in histories:
            steps, values = zip(*histories[name], strict=True)
            losses.plot(steps, values, label=name)
    losses.set(xlabel="training iteration", ylabel="loss", title="training losses")
    unit = eval_unit(histories)
    suffix = per_target_suffix(unit)
    for name, points in sorted(histories.items()):
        if name.startswith(TARGET_PREFIX) and name.endswith(f"/{suffix}"):
            steps, values = zip(*points, strict=True)
            label = name.removeprefix(f"{EVAL_PREFIX}/").split("/")[0].replace("_", " ")
            evaluation.plot(steps, values, marker="o", label=label)
    ylabel = "normalised score" if unit == NORMALISED else "return"
    evaluation.set(xlabel="training iteration", ylabel=ylabel, title="evaluation per target")
    for axes in (losses, evaluation):
        if axes.get_legend_handles_labels()[0]:
            axes.legend()
        else:
            axes.text(0.5, 0.5, "no data yet", ha="center", va="center", transform=axes.transAxes)
    figure.tight_layout()
    return figure


def curves_figure(summaries: Sequence[RunSummary], title: str) -> Figure:
    """Mean ± std (over seeds) of the per-evaluation best-target score, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    by_method: dict[str, list[RunSummary]] = defaultdict(list)
    for summary in summaries:
        if summary.curve:
            by_method[summary.method].append(summary)
    for method, runs in sorted(by_method.items()):
        steps = sorted({step for run in runs for step, _ in run.curve})
        stacked = np.array([[dict(run.curve).get(step, np.nan) for step in steps] for run in runs])
        mean, std = np.nanmean(stacked, axis=0), np.nanstd(stacked, axis=0)
        axes.plot(steps, mean, marker="o", label=f"{method} ({len(runs)} seeds)")
        axes.fill_between(steps, mean - std, mean + std, alpha=0.2)
    unit = summaries[0].unit if summaries else NORMALISED
    axes.set(
        xlabel="training iteration",
        ylabel="normalised score" if unit == NORMALISED else "return",
        title=title,
    )
    if by_method:
        axes.legend()
    figure.tight_layout()
    return figure
