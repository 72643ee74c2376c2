"""`lamo-report`: the paper-style results table and learning curves, from MLflow runs.

    lamo-report --experiment lamo-hopper-medium-cpu --out reports/hopper
    lamo-report --experiment sweep --experiment sweep-dt --tracking-uri http://127.0.0.1:5000 \\
        --out reports/sweep --paper-last-n 4

Rows are task x data ratio x method; each cell is mean ± std over the seeds (runs) of that
row, with the number of seeds, of three per-run figures (`rllib_lamo.experiments.runs`), all
normalised scores where the env has D4RL reference scores (returns otherwise, and the table
says which):

- paper (the default, the paper's reported number): per target return, the mean over the
  last N evaluations, then the best target; N = the run's ``paper_score_last_n_evals`` (else
  8, the paper's last 20K of 100K steps), or ``--paper-last-n``; ``n/N`` says how many
  evaluations a short run averaged;
- final: the last evaluation's best target;
- best: the best evaluation of the run.

Next to them, the std over evaluation episodes behind each figure, averaged over seeds.

Method: `rllib_lamo.experiments.runs.method_of` (LaMo and its ablations, the paper's DT
baseline, "LaMo arch, random init", or the algorithm). Task = the env's D4RL task or env id.

Writes ``results.md``, ``results.csv`` (one row per task x ratio x method) and
``runs.csv`` (one row per run), plus ``curves_<task>_ratio_<r>.png``: mean learning curves
(each evaluation's best target) per method, with a band of ± std over seeds.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rllib_lamo.experiments.experiment_file import MLflowSettings
from rllib_lamo.experiments.plots import curves_figure
from rllib_lamo.experiments.runs import NORMALISED, RunSummary, gather_runs, summarise_run
from rllib_lamo.experiments.store import DEFAULT_STORAGE_PATH, resolve_tracking_uri

FIGURES = ("paper", "final", "best")


def table_rows(summaries: Sequence[RunSummary]) -> list[dict[str, Any]]:
    """One row per (task, data ratio, method): seeds, and per figure mean ± std over seeds,
    the seeds that have it and the mean std over episodes."""
    groups: dict[tuple[str, float, str, str], list[RunSummary]] = defaultdict(list)
    for summary in summaries:
        groups[(summary.task, summary.data_ratio, summary.method, summary.unit)].append(summary)
    rows = []
    for (task, ratio, method, unit), runs in sorted(groups.items()):
        evaluated = [run for run in runs if run.paper is not None]
        row: dict[str, Any] = {
            "task": task,
            "data_ratio": ratio,
            "method": method,
            "unit": unit,
            "seeds": len(runs),
            "last_n": _span(run.last_n for run in runs),
            "paper_evaluations": _span(run.paper_evaluations for run in evaluated),
        }
        for figure in FIGURES:
            values = [v for run in runs if (v := getattr(run, figure)) is not None]
            episode_stds = [getattr(run, f"{figure}_episode_std") for run in evaluated]
            row[f"{figure}_mean"] = float(np.mean(values)) if values else None
            row[f"{figure}_std"] = float(np.std(values)) if values else None
            row[f"{figure}_n"] = len(values)
            row[f"{figure}_episode_std"] = float(np.mean(episode_stds)) if episode_stds else None
        rows.append(row)
    return rows


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    lines = [
        "| task | data ratio | method | seeds | paper | n/N | final | best | "
        "std over episodes: paper / final / best |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        episode_stds = " / ".join(_number(row[f"{figure}_episode_std"]) for figure in FIGURES)
        lines.append(
            f"| {row['task']} | {row['data_ratio']:g} | {row['method']} | {row['seeds']} | "
            f"{_mean_std(row, 'paper')} | {row['paper_evaluations'] or '-'}/{row['last_n']} | "
            f"{_mean_std(row, 'final')} | {_mean_std(row, 'best')} | {episode_stds} |"
        )
    units = sorted({row["unit"] for row in rows})
    unit_text = " and ".join("D4RL normalised score" if u == NORMALISED else u for u in units)
    return "\n".join(
        [
            *lines,
            "",
            f"Figures: {unit_text or 'none'}, mean ± std over seeds (one run per seed). "
            "paper = the paper's reported number: per target return, the mean over the last N "
            "evaluations (n/N: evaluations averaged; fewer than N in short runs), then the best "
            "target; final = the last evaluation's best target; best = the run's best "
            "evaluation. Std over episodes: over the evaluation episodes behind each figure, "
            "mean over seeds.",
            "",
            "As in the paper's tables (paper's measure; one column per method):",
            "",
            *paper_layout(rows),
        ]
    )


def paper_layout(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Task x data ratio rows, one column per method, the paper's measure: its Table 3 shape."""
    methods = sorted(
        {row["method"] for row in rows}, key=lambda m: (m != "LaMo", not m.startswith("DT"), m)
    )
    cells = {(row["task"], row["data_ratio"], row["method"]): row for row in rows}
    lines = [
        f"| task | ratio | {' | '.join(methods)} |",
        f"|---|---|{'---|' * len(methods)}",
    ]
    for task, ratio in sorted({(row["task"], row["data_ratio"]) for row in rows}):
        values = [
            _mean_std(cells[(task, ratio, method)], "paper")
            if (task, ratio, method) in cells
            else "-"
            for method in methods
        ]
        lines.append(f"| {task} | {ratio:g} | {' | '.join(values)} |")
    return lines


def write_report(summaries: Sequence[RunSummary], out: Path) -> list[Path]:
    """Writes the table (Markdown, CSV), the per-run CSV and the curve plots; returns paths."""
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    rows = table_rows(summaries)
    written = [out / "results.md", out / "results.csv", out / "runs.csv"]
    written[0].write_text(markdown_table(rows) + "\n")
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
        "--paper-last-n",
        type=int,
        metavar="N",
        help="the paper's measure averages each target's last N evaluations (default: each "
        "run's paper_score_last_n_evals, else 8)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `lamo-report` console script."""
    from mlflow import MlflowClient

    args = build_parser().parse_args(argv)
    if args.paper_last_n is not None and args.paper_last_n < 1:
        print("lamo-report: error: --paper-last-n must be >= 1", file=sys.stderr)
        return 2
    # As `rllib train file` picks it: the flag, $MLFLOW_TRACKING_URI, else the default store.
    tracking_uri = resolve_tracking_uri(
        args.tracking_uri, MLflowSettings(), str(Path(DEFAULT_STORAGE_PATH).resolve())
    )
    from rllib_lamo.experiments.store import missing_local_store

    if (missing := missing_local_store(tracking_uri)) is not None:
        print(
            f"lamo-report: error: no MLflow store at {missing} (from {tracking_uri})",
            file=sys.stderr,
        )
        return 2
    client = MlflowClient(tracking_uri)
    try:
        runs = gather_runs(client, args.experiments)
        summaries = [summarise_run(run, client, args.paper_last_n) for run in runs]
    except (LookupError, ValueError) as error:
        print(f"lamo-report: error: {error}", file=sys.stderr)
        return 2
    written = write_report(summaries, Path(args.out))
    print(Path(written[0]).read_text(), end="")
    print(f"lamo-report: {len(runs)} run(s); wrote {', '.join(str(p) for p in written)}")
    return 0


def _mean_std(row: Mapping[str, Any], figure: str) -> str:
    mean, std = row[f"{figure}_mean"], row[f"{figure}_std"]
    if mean is None:
        return "-"
    shortfall = row["seeds"] - row[f"{figure}_n"]
    missing = f" ({shortfall} without evaluation)" if shortfall else ""
    return f"{mean:.1f} ± {std:.1f}{missing}"


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _span(values: Any) -> str:
    """``8``, or ``4-8`` where the runs of a row differ."""
    numbers = sorted(set(values))
    if not numbers:
        return ""
    return str(numbers[0]) if len(numbers) == 1 else f"{numbers[0]}-{numbers[-1]}"


def _write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    with path.open("w", newline="") as file:
        if not rows:
            return
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    sys.exit(main())
