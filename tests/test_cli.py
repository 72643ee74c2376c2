"""The `rllib` command: experiment files, error messages, and real runs through Ray Tune.

Error paths run the installed console script in a subprocess, as a user would; the end-to-end
tests train RLlib's BC (interrupted with Ctrl-C, then resumed) and LaMo with the tiny random
GPT-2, each through `rllib train file` on a real local Ray cluster started by the command.
"""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import (
    RLLIB,
    SMALL_RAY,
    bc_experiment,
    evaluation_table_of,
    rllib_env,
    run_rllib,
    tiny_lamo_experiment,
    write_workdir,
    write_yaml,
)

from rllib_lamo.evaluation import TargetRollouts, summarise
from rllib_lamo.experiments.cli import build_parser, evaluation_table, main, tune_callbacks
from rllib_lamo.experiments.experiment_file import load_experiments
from rllib_lamo.experiments.tracking import LaMoMLflowCallback

BC_STOP_ITERATION = 4
# Lines a user should not have to read (each was once printed by a default run).
CONSOLE_NOISE = (
    "DeprecationWarning",
    "FutureWarning",
    "UserWarning",
    "Token authentication",
    "Started a local Ray instance",
    "Configuration for experiment",
    "tensorboard",
    "Install gputil",
    "max_restarts",
    "CloudPickle",
    "Downloading artifacts",
    "Failed to kill actor",
    "Progress bars disabled",
    "new API stack",
    "Creating initial MLflow database",
    "Trainable.setup took",
    "Checkpoint successfully created",
    "may be a performance bottleneck",
)


def test_no_mlflow_flag_leaves_only_the_progress_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (spec,) = load_experiments(write_workdir(tmp_path, {"x": tiny_lamo_experiment()}))
    command = ["train", "file", "experiments.yaml", "--register-model", "m"]
    tracked = tune_callbacks(build_parser().parse_args(command), spec, str(tmp_path))
    (callback,) = [c for c in tracked if isinstance(c, LaMoMLflowCallback)]
    assert callback.tracking_uri == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert callback.experiment_name == "x" and callback.register_model == "m"
    untracked = tune_callbacks(build_parser().parse_args([*command, "--no-mlflow"]), spec, "r")
    assert not any(isinstance(c, LaMoMLflowCallback) for c in untracked)


def test_evaluation_table_shows_every_target_and_the_best() -> None:
    metrics = summarise(
        [
            TargetRollouts(3600.0, returns=[1000.0, 1200.0], lengths=[300, 350]),
            TargetRollouts(1800.0, returns=[900.0, 1000.0], lengths=[280, 300]),
        ],
        env_id="Hopper-v5",
    )
    lines = evaluation_table(metrics).splitlines()
    assert lines[0].split() == ["target", "episodes", "return", "normalised"]
    assert lines[1].split()[:5] == ["3600", "2", "1100.0", "±", "100.0"]
    assert lines[2].split()[:5] == ["1800", "2", "950.0", "±", "50.0"]
    assert lines[-1].startswith("best target: 3600 (return 1100.0, normalised 34.")


# ------------------------------------------------------------------- the console script (errors)
def test_help_reads_well_from_both_entry_points(tmp_path: Path) -> None:
    top = run_rllib("--help", cwd=tmp_path)
    assert top.returncode == 0 and "train" in top.stdout and "evaluate" in top.stdout
    module = subprocess.run(
        [sys.executable, "-m", "rllib_lamo.experiments.cli", "train", "file", "--help"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert module.returncode == 0
    for flag in ("--stop", "--config", "--storage-path", "--checkpoint-freq", "--resume"):
        assert flag in module.stdout


@pytest.mark.parametrize(
    ("yaml_text", "extra_args", "expected"),
    [
        (None, [], "rllib: error: experiment file not found: missing.yaml"),
        ("x:\n  run: [BC\n", [], "rllib: error: exp.yaml: bad YAML (line 3, column 1)"),
        ("x:\n  env: CartPole-v1\n", [], "experiment 'x': missing `run:`"),
        ("x:\n  run: bc\n", [], "unknown algorithm 'bc' (did you mean 'BC'?); valid: LaMo, "),
        ("x:\n  run: BC\n", ["--config", "{lr: 1}"], "argument --config: not valid JSON"),
        ("x:\n  run: BC\n", ["--resume", "--stop", "{}"], "cannot be combined with --stop"),
        (
            "x:\n  run: BC\n",
            ["--ray-address", "auto", "--ray-num-cpus", "2"],
            "cannot be combined with --ray-address",
        ),
        (
            "x:\n  run: BC\n  env: CartPole-v1\n"
            "  config: {evaluation_interval: 1, dataset_num_iters_per_learner: 1}\n",
            ["--resume"],
            "no saved experiment 'x' to resume",
        ),
    ],
)
def test_console_script_errors_are_one_line_with_exit_code_2(
    tmp_path: Path, yaml_text: str | None, extra_args: list[str], expected: str
) -> None:
    file_name = "missing.yaml" if yaml_text is None else "exp.yaml"
    if yaml_text is not None:
        (tmp_path / file_name).write_text(yaml_text)
    completed = run_rllib("train", "file", file_name, *extra_args, cwd=tmp_path)
    assert completed.returncode == 2, completed.stderr
    assert expected in completed.stderr
    assert "Traceback" not in completed.stderr
    assert len([line for line in completed.stderr.splitlines() if "error:" in line]) == 1


def test_console_script_lists_valid_keys_for_an_unknown_lamo_key(tmp_path: Path) -> None:
    (tmp_path / "lamo.yaml").write_text(
        "hopper:\n  run: LaMo\n  env: Hopper-v5\n  config: {lm_layers: 4}\n"
    )
    completed = run_rllib("train", "file", "lamo.yaml", cwd=tmp_path)
    assert completed.returncode == 2
    first_line, *listing = completed.stderr.strip().splitlines()
    assert first_line.startswith("rllib: error: lamo.yaml, experiment 'hopper': unknown config ")
    assert "'lm_layers' (did you mean 'lm_num_layers'" in first_line
    listing_text = " ".join(listing)
    assert listing_text.startswith("LaMo keys: adam_eps, context_len,")
    assert "RLlib keys:" in listing_text and "train_batch_size_per_learner" in listing_text
    assert "Traceback" not in completed.stderr


def test_verbose_shows_the_traceback(tmp_path: Path) -> None:
    completed = run_rllib("train", "file", "missing.yaml", "-v", cwd=tmp_path)
    assert completed.returncode == 2 and "Traceback" in completed.stderr


# ----------------------------------------------------------------------- real runs through Tune
@pytest.mark.slow  # ~2 min; resume itself is in the default suite (the SIGKILL test below)
def test_bc_train_interrupt_and_resume(
    bc_workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`rllib train file` writes checkpoints; Ctrl-C stops it; `--resume` finishes the run.

    `min_time_s_per_iteration` keeps iterations at >= 1 s, so the interrupt lands well before
    the last one.
    """
    write_yaml(
        bc_workdir / "bc.yaml",
        bc_experiment(BC_STOP_ITERATION, min_time_s_per_iteration=1),
    )
    experiment_dir = bc_workdir / "ray_results" / "cartpole-bc"
    first = _start_training("bc.yaml", bc_workdir)
    try:
        _wait_for(lambda: any(experiment_dir.glob("BC_*/checkpoint_000000")), first, 600)
        first.send_signal(signal.SIGINT)
        out, err = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 130, err[-3000:]
    assert "rllib train file bc.yaml --resume" in err
    assert f"results and checkpoints: {experiment_dir}" in out
    assert re.search(r"iter\s+steps\s+act loss", out)
    (trial_dir,) = experiment_dir.glob("BC_CartPole-v1_*")
    assert _iterations(trial_dir)[-1] < BC_STOP_ITERATION

    resumed = run_rllib(
        "train", "file", "bc.yaml", "--resume", *SMALL_RAY, cwd=bc_workdir, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    iterations = _iterations(trial_dir)
    assert iterations[-1] == BC_STOP_ITERATION
    resumed_rows = [int(m) for m in re.findall(r"^\S+_00000\s+(\d+)\s", resumed.stdout, re.M)]
    assert resumed_rows and resumed_rows[0] > 1, resumed.stdout  # continued, not restarted
    best = re.search(r"rllib: best checkpoint \(evaluation/\S+ = \S+\): (\S+)", resumed.stdout)
    assert best and Path(best.group(1)).is_dir(), resumed.stdout

    # A fresh run never writes into an existing experiment (checked before Ray starts).
    assert main(["train", "file", "bc.yaml"]) == 2
    assert "add --resume to continue it" in capsys.readouterr().err


def test_a_killed_run_resumes_from_its_newest_checkpoint(tmp_path: Path) -> None:
    """SIGKILL to the whole process group 3 s after a checkpoint; `--resume` continues
    from that checkpoint (not the one before), and `progress.csv` stays aligned with its
    header although evaluation and validation columns come and go."""
    from rllib_lamo.checkpoints import missing_checkpoint_files

    experiment = tiny_lamo_experiment(
        evaluation_interval=2, validation_fraction=0.2, min_time_s_per_iteration=1
    )
    experiment["stop"] = {"training_iteration": 5}
    write_workdir(tmp_path, {"killed": experiment})
    experiment_dir = tmp_path / "ray_results" / "killed"
    # Its own process group: the kill takes Ray's processes too.
    first = _start_training("experiments.yaml", tmp_path, start_new_session=True)
    try:
        _wait_for(lambda: any(experiment_dir.glob("LaMo_*/checkpoint_000001")), first, 480)
        time.sleep(3)  # the command saves Tune's experiment state every 2 s
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.communicate(timeout=60)
    (trial_dir,) = experiment_dir.glob("LaMo_*")
    complete = [
        int(c.name.removeprefix("checkpoint_"))
        for c in trial_dir.glob("checkpoint_*")
        if not missing_checkpoint_files(c)
    ]
    newest = max(complete)
    assert newest >= 1 and newest + 1 < 5

    resumed = run_rllib("train", "file", "experiments.yaml", "--resume", *SMALL_RAY, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    rows = [int(m) for m in re.findall(r"^\S+_00000\s+(\d+)\s", resumed.stdout, re.M)]
    assert rows == list(range(newest + 2, 6)), resumed.stdout  # checkpoint_N is after N + 1
    assert _iterations(trial_dir)[-1] == 5

    with (trial_dir / "progress.csv").open(newline="") as file:
        header, *lines = list(csv.reader(file))
    assert all(len(line) == len(header) for line in lines)
    column = header.index("training_iteration")
    assert [int(line[column]) for line in lines][-1] == 5
    losses = [line[header.index("validation/action_loss")] for line in lines]
    assert all(float(loss) > 0 for loss in losses)


def test_a_failed_trial_ends_with_its_root_cause(tmp_path: Path) -> None:
    """A NaN reward in one shard fails the trial inside Ray Data; the command's last line is
    our message naming the shard and the field, not Ray's generic retry hint."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    write_workdir(tmp_path, {"nan-reward": tiny_lamo_experiment(evaluation_interval=0)})
    shard = sorted((tmp_path / "datasets" / "hopper-toy").glob("*.parquet"))[-1]
    table = pq.read_table(shard)
    rewards = table.column("rewards").to_pylist()
    rewards[0] = [float("nan")] * len(rewards[0])
    column = table.schema.get_field_index("rewards")
    nan_rewards = pa.array(rewards, type=table.schema.field("rewards").type)
    pq.write_table(table.set_column(column, "rewards", nan_rewards), shard)
    assert np.isnan(pq.read_table(shard).column("rewards")[0].values.to_numpy()).all()

    failed = run_rllib("train", "file", "experiments.yaml", *SMALL_RAY, cwd=tmp_path)
    assert failed.returncode == 1, failed.stderr[-3000:]
    last = failed.stderr.strip().splitlines()[-1]
    assert last.startswith("rllib: trial failed: ") and shard.name in last, failed.stderr[-3000:]
    assert "'rewards'" in last and "NaN" in last, last
    assert "error.txt" in failed.stderr.strip().splitlines()[-2]


def test_lamo_train_and_evaluate(tmp_path: Path) -> None:
    """A tiny LaMo run through Tune, then `rllib evaluate` on its checkpoint."""
    experiment = tiny_lamo_experiment(target_returns=[100.0], evaluation_interval=2)
    write_workdir(tmp_path, {"hopper-lamo-tiny": experiment})
    trained = run_rllib("train", "file", "experiments.yaml", *SMALL_RAY, cwd=tmp_path, timeout=600)
    assert trained.returncode == 0, trained.stderr[-3000:]
    console = trained.stdout + trained.stderr
    assert not [noise for noise in CONSOLE_NOISE if noise.lower() in console.lower()], console
    assert len(console.splitlines()) <= 40, console  # fits on a screen
    # iter, steps, act loss, (val loss: "-" without a validation split), lang loss
    rows = re.findall(r"^\S+_00000\s+(\d+)\s+(\S+)\s+(\S+)\s+-\s+(\S+)\s", trained.stdout, re.M)
    assert [int(row[0]) for row in rows] == [1, 2], trained.stdout
    iteration, grad_steps, action_loss, language_loss = rows[-1]
    assert int(grad_steps) == 4 and float(action_loss) > 0 and float(language_loss) > 0
    best = re.search(r"rllib: best checkpoint \(evaluation/best/\S+ = \S+\): (\S+)", trained.stdout)
    assert best, trained.stdout
    checkpoint = Path(best.group(1))
    assert checkpoint.is_dir()

    table = evaluation_table_of(str(checkpoint), cwd=tmp_path)
    assert table[-1].startswith("best target: 50 (return ")


def _start_training(file: str, workdir: Path, **popen: object) -> subprocess.Popen:
    """`rllib train file FILE --checkpoint-freq 1` in the background, output captured."""
    return subprocess.Popen(
        [*RLLIB, "train", "file", file, "--checkpoint-freq", "1", *SMALL_RAY],
        cwd=workdir,
        env=rllib_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


def _wait_for(condition, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            raise AssertionError(
                f"rllib exited early ({process.returncode}): {process.stderr.read()}"
            )
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(0.2)


def _iterations(trial_dir: Path) -> list[int]:
    lines = (trial_dir / "result.json").read_text().splitlines()
    return [json.loads(line)["training_iteration"] for line in lines if line.strip()]
