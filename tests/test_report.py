"""`lamo-report`: the table's arithmetic, and a report built from real runs.

The arithmetic test logs runs with known evaluation histories straight into a real SQLite
store, under the names `rllib train file` logs them; the end-to-end test trains LaMo and DT
(2 seeds each, tiny GPT-2, 1 iteration) through `rllib train file` with no MLflow flags, so
the runs land in the default local store.
"""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import run_rllib, tiny_lamo_experiment, write_workdir

from rllib_lamo.experiments.report import main

SHARED_EXPERIMENT = "lamo-vs-dt"
EPISODES = 10
HOPPER = {"env": "Hopper-v5", "data_ratio": 0.1, "language_model": "lamo-tiny-en"}
LAMO = HOPPER | {"lm_pretrained": True, "finetune": "lora", "embedding": "mlp"}
DT = HOPPER | {"language_model": "dt", "finetune": "full", "embedding": "linear"}
RANDOM_INIT = LAMO | {"lm_pretrained": False}


def _log_run(
    client,
    experiment_id: str,
    params: dict,
    evaluations: dict[str, list[float]],
    stds: dict[tuple[str, int], float] | None = None,
) -> None:
    """A finished run whose evaluations at steps 1, 2, ... give each target (``target_<R>``)
    these mean normalised scores over `EPISODES` episodes; std 0 unless `stds` has
    ``(target, step)``. Logged under `rllib_lamo.experiments.tracking`'s names."""
    from mlflow.entities import Metric, Param

    run_id = client.create_run(experiment_id, tags={"algorithm": "LaMo"}).info.run_id
    now = int(time.time() * 1000)
    metrics = []
    for target, scores in evaluations.items():
        for step, score in enumerate(scores, start=1):
            figures = {
                "target_return": float(target.removeprefix("target_")),
                "normalised_score_mean": score,
                "normalised_score_std": (stds or {}).get((target, step), 0.0),
                "return_mean": score * 32.5,
                "return_std": 0.0,
                "num_episodes": EPISODES,
            }
            for figure, value in figures.items():
                metrics.append(Metric(f"eval/{target}/{figure}", value, now, step))
    client.log_batch(run_id, metrics=metrics, params=[Param(k, str(v)) for k, v in params.items()])
    client.set_terminated(run_id)


def test_table_arithmetic_on_a_real_sqlite_store(tmp_path: Path) -> None:
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment_id = client.create_experiment("arith", artifact_location=(tmp_path / "a").as_uri())
    # LaMo with N = 2: paper = best target's mean over evaluations 2 and 3.
    lamo = LAMO | {"paper_score_last_n_evals": 2}
    seed_0 = {"target_3600": [10, 50, 40], "target_1800": [20, 30, 44]}
    _log_run(client, experiment_id, lamo | {"seed": 0}, seed_0, {("target_1800", 3): 2.0})
    _log_run(
        client,
        experiment_id,
        lamo | {"seed": 1},
        {"target_3600": [10, 60, 50], "target_1800": [5, 5, 5]},
    )
    # DT without the param: N = 8, so its 3 evaluations are all averaged.
    dt_1800 = {0: [4, 5, 6], 1: [4, 5, 8]}
    for seed, scores in dt_1800.items():
        dt_scores = {"target_3600": [1, 2, 3], "target_1800": scores}
        _log_run(client, experiment_id, DT | {"seed": seed}, dt_scores)
    random_init = {"target_3600": [0, 0, 30], "target_1800": [0, 0, 0]}
    _log_run(client, experiment_id, RANDOM_INIT | {"seed": 0}, random_init)

    out = tmp_path / "report"
    assert main(["--experiment", "arith", "--tracking-uri", uri, "--out", str(out)]) == 0
    rows = {row["method"]: row for row in csv.DictReader((out / "results.csv").open())}
    assert set(rows) == {"LaMo", "DT (paper: 3x128)", "LaMo arch, random init"}
    lamo_row, dt_row = rows["LaMo"], rows["DT (paper: 3x128)"]
    assert lamo_row["task"] == "hopper" and lamo_row["seeds"] == "2"
    assert (lamo_row["paper_evaluations"], lamo_row["last_n"]) == ("2", "2")
    assert (dt_row["paper_evaluations"], dt_row["last_n"]) == ("3", "8")

    def figure(row: dict, name: str) -> tuple[float, float, int, float]:
        return (
            float(row[f"{name}_mean"]),
            float(row[f"{name}_std"]),
            int(row[f"{name}_n"]),
            float(row[f"{name}_episode_std"]),
        )

    # LaMo paper: seed 0 max(mean(50, 40), mean(30, 44)) = 45, its episodes at 50 and 40 have
    # std 5; seed 1 max(55, 5) = 55, std 5 -> 50 ± 5 over seeds, episode std 5.
    assert figure(lamo_row, "paper") == pytest.approx((50.0, 5.0, 2, 5.0))
    # Final: seed 0 max(40, 44) = 44 (episode std 2), seed 1 max(50, 5) = 50 (0) -> 47 ± 3.
    assert figure(lamo_row, "final") == pytest.approx((47.0, 3.0, 2, 1.0))
    # Best evaluation: seed 0 50, seed 1 60 -> 55 ± 5.
    assert figure(lamo_row, "best") == pytest.approx((55.0, 5.0, 2, 0.0))
    # DT paper: target 1800 over all 3 evaluations: 5 and 17/3; the std over the pooled
    # episodes (each evaluation's own std 0) is the std of the three means.
    dt_papers = [np.mean(scores) for scores in dt_1800.values()]
    dt_episode_std = np.mean([np.std(scores) for scores in dt_1800.values()])
    paper = (np.mean(dt_papers), np.std(dt_papers), 2, dt_episode_std)
    assert figure(dt_row, "paper") == pytest.approx(paper)
    assert figure(dt_row, "final") == pytest.approx((7.0, 1.0, 2, 0.0))
    assert float(rows["LaMo arch, random init"]["paper_mean"]) == pytest.approx(10.0)

    markdown = (out / "results.md").read_text()
    assert (
        "| hopper | 0.1 | LaMo | 2 | 50.0 ± 5.0 | 2/2 | 47.0 ± 3.0 | 55.0 ± 5.0 | 5.0 / 1.0 / 0.0 |"
    ) in markdown
    assert "paper = the paper's reported number" in markdown
    assert "final = the last evaluation's best target" in markdown
    # The paper's layout: LaMo, then DT, then the rest; the paper's measure.
    assert "| task | ratio | LaMo | DT (paper: 3x128) | LaMo arch, random init |" in markdown
    assert "| hopper | 0.1 | 50.0 ± 5.0 | 5.3 ± 0.3 | 10.0 ± 0.0 |" in markdown
    assert (out / "curves_hopper_ratio_0.1.png").stat().st_size > 10_000
    runs = list(csv.DictReader((out / "runs.csv").open()))
    assert len(runs) == 5 and {"paper", "final", "best", "paper_episode_std"} <= set(runs[0])

    assert main(["--experiment", "nope", "--tracking-uri", uri, "--out", str(out)]) == 2

    # --paper-last-n overrides every run's N: with N = 1 the paper's measure is final.
    again = tmp_path / "report_last1"
    args = ["--experiment", "arith", "--tracking-uri", uri, "--out", str(again)]
    assert main([*args, "--paper-last-n", "1"]) == 0
    rows = {row["method"]: row for row in csv.DictReader((again / "results.csv").open())}
    assert float(rows["LaMo"]["paper_mean"]) == pytest.approx(47.0)
    assert rows["LaMo"]["last_n"] == "1"


def test_a_run_without_per_target_figures_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment_id = client.create_experiment("bare", artifact_location=(tmp_path / "a").as_uri())
    run_id = client.create_run(experiment_id).info.run_id
    client.log_batch(run_id, metrics=[Metric("eval/target_3600/return_mean", 1.0, 0, 1)])
    client.set_terminated(run_id)
    args = ["--experiment", "bare", "--tracking-uri", uri, "--out", str(tmp_path / "r")]
    assert main(args) == 2
    error = capsys.readouterr().err
    assert run_id in error and "eval/target_<R>/" in error and "iteration 1" in error


@pytest.mark.slow
def test_report_from_real_runs_in_the_default_store(tmp_path: Path) -> None:
    """LaMo vs DT, 2 seeds each, trained with no MLflow flags: the table has both methods."""
    experiments = {}
    dt = {"language_model": "dt", "finetune": "full", "embedding": "linear"}
    dt |= {"language_loss_coeff": 0.0}
    for name, extra in (("tiny-lamo", {}), ("tiny-dt", dt)):
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
        ("hopper", "1.0", "DT (paper: 3x128)", "2"),
        ("hopper", "1.0", "LaMo", "2"),
    ]
    assert all(row["paper_mean"] and row["final_mean"] and row["best_mean"] for row in rows)
    runs = list(csv.DictReader((tmp_path / "report" / "runs.csv").open()))
    assert sorted(run["seed"] for run in runs) == ["0", "0", "1", "1"]
    assert (tmp_path / "report" / "curves_hopper_ratio_1.png").is_file()
