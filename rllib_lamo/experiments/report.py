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

Method: `rllib_lamo.experiments.runs.method_of` (the paper's DT baseline, LaMo and its
ablations, or the algorithm). Task = the env's D4RL task (hopper, ...) or the env id.

Writes ``results.md``, ``results.csv`` (one row per task x ratio x method) and
``runs.csv`` (one row per run), plus ``curves_<task>_ratio_<r>.png``: mean learning curves
(normalised score of the best target per evaluation) per method, with a band of ± std over seeds.
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

    args = build_parser().parse_args(argv)
    if args.final_last < 1:
        print("lamo-report: error: --final-last must be >= 1", file=sys.stderr)
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
    except LookupError as error:
        print(f"lamo-report: error: {error}", file=sys.stderr)
        return 2
    summaries = [summarise_run(run, client, args.final_last) for run in runs]
    written = write_report(summaries, Path(args.out), args.final_last)
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


def _write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    with path.open("w", newline="") as file:
        if not rows:
            return
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    sys.exit(main())
