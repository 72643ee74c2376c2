"""`lamo-report`: the paper-style results table and learning curves, from MLflow runs.

    lamo-report --experiment lamo-hopper-medium-cpu --out reports/hopper
    lamo-report --experiment sweep --experiment sweep-dt --tracking-uri http://127.0.0.1:5000 \\
        --out reports/sweep --final-last 8

Rows are task x data ratio x method; each cell is mean ± std over the seeds (runs) of that
row, of two per-run figures, both normalised scores where the env has D4RL reference scores
(returns otherwise, and the table says which):

- final: per target return, the mean of its last ``--final-last N`` evaluations (default 1:
  the last evaluation; the paper averages the last 20K of 100K steps, i.e. N = 8), then the
  best target's figure, as the paper reports it;
- best: the best evaluation of the run (``eval/best/...``, already the best target).

Method (`method_of`), from the run's config params, unless the run has a ``method`` tag:
``lm_pretrained: false`` is "DT" (the same model, randomly initialised: the paper's Decision
Transformer baseline); otherwise "LaMo", with the ablations that differ from the paper's
recipe appended: ``finetune: full`` -> "full fine-tuning", ``finetune: frozen`` -> "frozen LM",
``embedding: linear`` -> "linear embeddings", ``language_loss_coeff: 0`` -> "no language
loss", e.g. "LaMo (linear embeddings, no language loss)". Runs of other algorithms (BC, IQL,
...) are named by their algorithm. Task = the env's D4RL task (hopper, ...) or the env id.

Writes ``results.md``, ``results.csv`` (one row per task x ratio x method) and
``runs.csv`` (one row per run), plus ``curves_<task>_ratio_<r>.png``: mean learning curves
(normalised score of the best target per evaluation) per method, with a band of ± std over seeds.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import sys
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rllib_lamo.scores import task_of_env

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from mlflow import MlflowClient
    from mlflow.entities import Run

CURVE_METRICS = ("action_loss", "language_loss", "eval/best/normalised_score", "eval/best/return")
TARGET_PREFIX = "eval/target_"
NORMALISED = "normalised_score"
RETURN = "return"


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


def learning_curve_figure(histories: Mapping[str, list[tuple[int, float]]]) -> Figure:
    """Losses (left) and evaluation per target (right) against the training iteration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (losses, evaluation) = plt.subplots(1, 2, figsize=(11, 4))
    for name in ("action_loss", "language_loss"):
        if name in histories:
            steps, values = zip(*histories[name], strict=True)
            losses.plot(steps, values, label=name)
    losses.set(xlabel="training iteration", ylabel="loss", title="training losses")
    unit = _eval_unit(histories)
    suffix = "normalised_score_mean" if unit == NORMALISED else "return_mean"
    for name, points in sorted(histories.items()):
        if name.startswith(TARGET_PREFIX) and name.endswith(f"/{suffix}"):
            steps, values = zip(*points, strict=True)
            label = name.removeprefix("eval/").split("/")[0].replace("_", " ")
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


def summarise_run(run: Run, client: MlflowClient, final_last: int) -> RunSummary:
    """A run's table coordinates and its final and best figures (None without evaluations)."""
    params = run.data.params
    histories = metric_histories(client, run.info.run_id)
    unit = _eval_unit(histories)
    suffix = "normalised_score_mean" if unit == NORMALISED else "return_mean"
    per_target = [
        float(np.mean([value for _, value in points[-final_last:]]))
        for name, points in histories.items()
        if name.startswith(TARGET_PREFIX) and name.endswith(f"/{suffix}")
    ]
    best_points = histories.get(f"eval/best/{unit}", [])
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


def table_rows(summaries: Sequence[RunSummary]) -> list[dict[str, Any]]:
    """One row per (task, data ratio, method): seeds and mean ± std of final and best."""
    groups: dict[tuple[str, float, str, str], list[RunSummary]] = defaultdict(list)
    for summary in summaries:
        groups[(summary.task, summary.data_ratio, summary.method, summary.unit)].append(summary)
    rows = []
    for (task, ratio, method, unit), runs in sorted(groups.items()):
        row: dict[str, Any] = {
            "task": task,
            "data_ratio": ratio,
            "method": method,
            "unit": unit,
            "seeds": len(runs),
        }
        for figure in ("final", "best"):
            values = [v for run in runs if (v := getattr(run, figure)) is not None]
            row[f"{figure}_mean"] = float(np.mean(values)) if values else None
            row[f"{figure}_std"] = float(np.std(values)) if values else None
            row[f"{figure}_n"] = len(values)
        rows.append(row)
    return rows


def markdown_table(rows: Sequence[Mapping[str, Any]], final_last: int) -> str:
    final = "last evaluation" if final_last == 1 else f"mean of the last {final_last} evaluations"
    lines = [
        "| task | data ratio | method | seeds | final | best |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['task']} | {row['data_ratio']:g} | {row['method']} | {row['seeds']} | "
            f"{_mean_std(row, 'final')} | {_mean_std(row, 'best')} |"
        )
    units = sorted({row["unit"] for row in rows})
    unit_text = " and ".join("D4RL normalised score" if u == NORMALISED else u for u in units)
    return "\n".join(
        [
            *lines,
            "",
            f"Figures: {unit_text or 'none'}, mean ± std over seeds. final = best target's "
            f"{final}; best = best evaluation of the run.",
            "",
            "As in the paper's tables (final; one column per method):",
            "",
            *paper_layout(rows),
        ]
    )


def paper_layout(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Task x data ratio rows, one column per method, final scores: the paper's Table 3 shape."""
    methods = sorted({row["method"] for row in rows}, key=lambda m: (m != "LaMo", m != "DT", m))
    cells = {(row["task"], row["data_ratio"], row["method"]): row for row in rows}
    lines = [
        f"| task | ratio | {' | '.join(methods)} |",
        f"|---|---|{'---|' * len(methods)}",
    ]
    for task, ratio in sorted({(row["task"], row["data_ratio"]) for row in rows}):
        values = [
            _mean_std(cells[(task, ratio, method)], "final")
            if (task, ratio, method) in cells
            else "-"
            for method in methods
        ]
        lines.append(f"| {task} | {ratio:g} | {' | '.join(values)} |")
    return lines


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


def write_report(summaries: Sequence[RunSummary], out: Path, final_last: int) -> list[Path]:
    """Writes the table (Markdown, CSV), the per-run CSV and the curve plots; returns paths."""
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    rows = table_rows(summaries)
    written = [out / "results.md", out / "results.csv", out / "runs.csv"]
    written[0].write_text(markdown_table(rows, final_last) + "\n")
    _write_csv(written[1], rows)
    _write_csv(
        written[2],
        [
            {k: v for k, v in vars(summary).items() if k != "curve"}
            for summary in sorted(summaries, key=lambda s: (s.task, s.data_ratio, s.method))
        ],
    )
    panels: dict[tuple[str, float], list[RunSummary]] = defaultdict(list)
    for summary in summaries:
        panels[(summary.task, summary.data_ratio)].append(summary)
    for (task, ratio), group in sorted(panels.items()):
        figure = curves_figure(group, f"{task}, data ratio {ratio:g}")
        path = out / f"curves_{task}_ratio_{ratio:g}.png"
        figure.savefig(path, dpi=100)
        plt.close(figure)
        written.append(path)
    return written


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lamo-report",
        description="Paper-style results table and learning curves from MLflow runs.",
    )
    parser.add_argument(
        "--experiment",
        dest="experiments",
        action="append",
        required=True,
        metavar="NAME",
        help="MLflow experiment to gather finished runs from (repeatable)",
    )
    parser.add_argument(
        "--tracking-uri",
        metavar="URI",
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///"
        "ray_results/mlflow.db, where `rllib train file` logs by default)",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for the report")
    parser.add_argument(
        "--final-last",
        type=int,
        default=1,
        metavar="N",
        help="final = mean of each target's last N evaluations (default 1: the last one)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `lamo-report` console script."""
    from mlflow import MlflowClient

    from rllib_lamo.cli import DEFAULT_STORAGE_PATH
    from rllib_lamo.tracking import DEFAULT_DB_FILE

    args = build_parser().parse_args(argv)
    if args.final_last < 1:
        print("lamo-report: error: --final-last must be >= 1", file=sys.stderr)
        return 2
    default_store = f"sqlite:///{Path(DEFAULT_STORAGE_PATH, DEFAULT_DB_FILE).resolve()}"
    tracking_uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or default_store
    client = MlflowClient(tracking_uri)
    try:
        runs = gather_runs(client, args.experiments)
    except LookupError as error:
        print(f"lamo-report: error: {error}", file=sys.stderr)
        return 2
    summaries = [summarise_run(run, client, args.final_last) for run in runs]
    written = write_report(summaries, Path(args.out), args.final_last)
    print(Path(written[0]).read_text(), end="")
    print(f"lamo-report: {len(runs)} run(s); wrote {', '.join(str(p) for p in written)}")
    return 0


def _eval_unit(histories: Mapping[str, Any]) -> str:
    return NORMALISED if f"eval/best/{NORMALISED}" in histories else RETURN


def _mean_std(row: Mapping[str, Any], figure: str) -> str:
    mean, std = row[f"{figure}_mean"], row[f"{figure}_std"]
    if mean is None:
        return "-"
    shortfall = row["seeds"] - row[f"{figure}_n"]
    missing = f" ({shortfall} without evaluation)" if shortfall else ""
    return f"{mean:.1f} ± {std:.1f}{missing}"


def _write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    with path.open("w", newline="") as file:
        if not rows:
            return
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _float(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


if __name__ == "__main__":
    sys.exit(main())
