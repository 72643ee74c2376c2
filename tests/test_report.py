"""`lamo-report`: the table's arithmetic, and a report built from real runs.

The arithmetic test logs runs with known evaluation histories straight into a real SQLite
store; the end-to-end test trains LaMo and DT (2 seeds each, tiny GPT-2, 1 iteration) through
`rllib train file` with no MLflow flags, so the runs land in the default local store.
"""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import run_rllib, tiny_lamo_experiment, write_workdir

from rllib_lamo.experiments.report import main

SHARED_EXPERIMENT = "lamo-vs-dt"


def _log_run(client, experiment_id: str, params: dict, evaluations: dict[str, list[float]]) -> None:
    """A finished run with per-target normalised scores at steps 1, 2, ... (best = max)."""
    from mlflow.entities import Metric, Param

    run_id = client.create_run(experiment_id, tags={"algorithm": "LaMo"}).info.run_id
    now = int(time.time() * 1000)
    metrics = []
    for target, scores in evaluations.items():
        for step, score in enumerate(scores, start=1):
            metrics.append(Metric(f"eval/{target}/normalised_score_mean", score, now, step))
    for step, best in enumerate(zip(*evaluations.values(), strict=True), start=1):
        metrics.append(Metric("eval/best/normalised_score", max(best), now, step))
    client.log_batch(run_id, metrics=metrics, params=[Param(k, str(v)) for k, v in params.items()])
    client.set_terminated(run_id)


def test_table_arithmetic_on_a_real_sqlite_store(tmp_path: Path) -> None:
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment_id = client.create_experiment("arith", artifact_location=(tmp_path / "a").as_uri())
    lamo = {"env": "Hopper-v5", "data_ratio": 0.1, "lm_pretrained": True}
    dt = lamo | {"lm_pretrained": False}
    # Per target over 3 evaluations; final = best target's last (or mean of last 2).
    _log_run(
        client,
        experiment_id,
        lamo | {"seed": 0},
        {"target_3600": [10, 50, 40], "target_1800": [20, 30, 44]},
    )
    _log_run(
        client,
        experiment_id,
        lamo | {"seed": 1},
        {"target_3600": [10, 60, 50], "target_1800": [5, 5, 5]},
    )
    _log_run(
        client,
        experiment_id,
        dt | {"seed": 0},
        {"target_3600": [1, 2, 3], "target_1800": [4, 5, 6]},
    )
    _log_run(
        client,
        experiment_id,
        dt | {"seed": 1},
        {"target_3600": [1, 2, 3], "target_1800": [4, 5, 8]},
    )

    out = tmp_path / "report"
    assert main(["--experiment", "arith", "--tracking-uri", uri, "--out", str(out)]) == 0
    rows = {row["method"]: row for row in csv.DictReader((out / "results.csv").open())}
    assert set(rows) == {"LaMo", "DT"}
    assert rows["LaMo"]["task"] == "hopper" and rows["LaMo"]["seeds"] == "2"
    # LaMo final: seed 0 max(40, 44) = 44, seed 1 max(50, 5) = 50 -> 47 ± 3.
    assert float(rows["LaMo"]["final_mean"]) == pytest.approx(47.0)
    assert float(rows["LaMo"]["final_std"]) == pytest.approx(3.0)
    # LaMo best: seed 0 max over evaluations of the best target 50, seed 1 60 -> 55 ± 5.
    assert float(rows["LaMo"]["best_mean"]) == pytest.approx(55.0)
    assert float(rows["DT"]["final_mean"]) == pytest.approx(7.0)
    markdown = (out / "results.md").read_text()
    assert "| hopper | 0.1 | LaMo | 2 | 47.0 ± 3.0 | 55.0 ± 5.0 |" in markdown
    assert "final = best target's last evaluation" in markdown
    assert "| hopper | 0.1 | 47.0 ± 3.0 | 7.0 ± 1.0 |" in markdown  # paper layout
    assert (out / "curves_hopper_ratio_0.1.png").stat().st_size > 10_000

    assert main(["--experiment", "nope", "--tracking-uri", uri, "--out", str(out)]) == 2

    again = tmp_path / "report_last2"
    main(["--experiment", "arith", "--tracking-uri", uri, "--out", str(again), "--final-last", "2"])
    rows = {row["method"]: row for row in csv.DictReader((again / "results.csv").open())}
    # Seed 0: max(mean(50, 40), mean(30, 44)) = 45; seed 1: max(55, 5) = 55 -> 50.
    assert float(rows["LaMo"]["final_mean"]) == pytest.approx(50.0)


@pytest.mark.slow
def test_report_from_real_runs_in_the_default_store(tmp_path: Path) -> None:
    """LaMo vs DT, 2 seeds each, trained with no MLflow flags: the table has both methods."""
    experiments = {}
    for name, extra in (("tiny-lamo", {}), ("tiny-dt", {"lm_pretrained": False})):
        experiment = tiny_lamo_experiment(seed={"grid_search": [0, 1]}, **extra)
        experiment["stop"] = {"training_iteration": 1}
        experiment["mlflow"] = {"experiment_name": SHARED_EXPERIMENT, "video_every": 0}
        experiments[name] = experiment
    write_workdir(tmp_path, experiments)
    trained = run_rllib(
        "train",
        "file",
        "experiments.yaml",
        "--ray-num-cpus",
        "8",
        "--ray-object-store-mb",
        "300",
        cwd=tmp_path,
        timeout=900,
    )
    assert trained.returncode == 0, trained.stderr[-4000:]
    database = tmp_path / "ray_results" / "mlflow.db"
    assert database.is_file()

    reporter = shutil.which("lamo-report")
    command = [reporter] if reporter else [sys.executable, "-m", "rllib_lamo.experiments.report"]
    completed = subprocess.run(
        [
            *command,
            "--experiment",
            SHARED_EXPERIMENT,
            "--tracking-uri",
            f"sqlite:///{database}",
            "--out",
            "report",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "4 run(s)" in completed.stdout
    rows = list(csv.DictReader((tmp_path / "report" / "results.csv").open()))
    assert [(row["task"], row["data_ratio"], row["method"], row["seeds"]) for row in rows] == [
        ("hopper", "1.0", "DT", "2"),
        ("hopper", "1.0", "LaMo", "2"),
    ]
    assert all(row["final_mean"] and row["best_mean"] for row in rows)
    runs = list(csv.DictReader((tmp_path / "report" / "runs.csv").open()))
    assert sorted(run["seed"] for run in runs) == ["0", "0", "1", "1"]
    assert (tmp_path / "report" / "curves_hopper_ratio_1.png").is_file()
