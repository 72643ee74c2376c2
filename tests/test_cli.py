"""The `rllib` command: experiment files, error messages, and real runs through Ray Tune.

Error paths run the installed console script in a subprocess, as a user would; the end-to-end
tests train RLlib's BC (interrupted with Ctrl-C, then resumed) and LaMo with the tiny random
GPT-2, each through `rllib train file` on a real local Ray cluster started by the command.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from rllib_lamo.cli import evaluation_table, main
from rllib_lamo.evaluation import TargetRollouts, summarise
from rllib_lamo.experiment import (
    ExperimentError,
    OfflineRestoreMixin,
    listed_config_keys,
    load_experiments,
    valid_config_keys,
)
from rllib_lamo.progress import COLUMNS, MISSING, row_cells

CONSOLE_SCRIPT = Path(sys.executable).with_name("rllib")
RLLIB = [str(CONSOLE_SCRIPT)] if CONSOLE_SCRIPT.exists() else [shutil.which("rllib") or "rllib"]
# Every command that starts Ray gets a small local cluster of its own.
SMALL_RAY = ["--ray-num-cpus", "4", "--ray-object-store-mb", "300"]
BC_STOP_ITERATION = 4


def run_rllib(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*RLLIB, *args], cwd=cwd, env=_cli_env(), capture_output=True, text=True, timeout=timeout
    )


def _cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)  # never join another session's cluster
    return env


def write_yaml(path: Path, document: dict) -> Path:
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def write_cartpole_recording(folder: Path, num_episodes: int = 20) -> None:
    """A small RLlib column recording (one row per step) of a noisy pole-angle policy."""
    env = gym.make("CartPole-v1")
    rng = np.random.default_rng(0)
    rows: list[dict] = []
    for episode in range(num_episodes):
        obs, _ = env.reset(seed=episode)
        done = False
        while not done:
            action = int(obs[2] > 0) if rng.random() > 0.2 else int(rng.integers(2))
            next_obs, reward, terminated, truncated, _ = env.step(action)
            rows.append(
                {
                    "eps_id": str(episode),
                    "obs": obs.tolist(),
                    "new_obs": next_obs.tolist(),
                    "actions": action,
                    "rewards": float(reward),
                    "terminateds": terminated,
                    "truncateds": truncated,
                }
            )
            obs, done = next_obs, terminated or truncated
    folder.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), folder / "part-00000.parquet")


def bc_experiment(stop_iteration: int = 2, **config: object) -> dict:
    """A BC run small enough for tests; `input_` is relative on purpose."""
    return {
        "cartpole-bc": {
            "run": "BC",
            "env": "CartPole-v1",
            "stop": {"training_iteration": stop_iteration},
            "config": {
                "input_": "data/cartpole",
                "dataset_num_iters_per_learner": 5,
                "train_batch_size_per_learner": 32,
                # One map actor, so that Ray Data's reads keep a spare CPU (4 logical CPUs).
                "map_batches_kwargs": {"concurrency": 1, "num_cpus": 1},
                "evaluation_interval": 1,
                "evaluation_num_env_runners": 1,
                "evaluation_duration": 2,
                "evaluation_duration_unit": "episodes",
                **config,
            },
        }
    }


@pytest.fixture
def bc_workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory with a CartPole recording under ./data/cartpole."""
    write_cartpole_recording(tmp_path / "data" / "cartpole")
    monkeypatch.chdir(tmp_path)
    return tmp_path


# ----------------------------------------------------------------- experiment files (in-process)
def test_yaml_experiment_resolves_paths_and_applies_overrides(bc_workdir: Path) -> None:
    experiment = bc_experiment()
    experiment["cartpole-bc"]["stop"]["evaluation"] = {"env_runners": {"episode_return_mean": 150}}
    path = write_yaml(bc_workdir / "bc.yaml", experiment)

    (spec,) = load_experiments(
        path, config_overrides={"lr": 0.01, "input": "data/cartpole"}, stop_overrides={"x": 3}
    )

    assert spec.name == "cartpole-bc" and spec.algo_name == "BC" and spec.env == "CartPole-v1"
    assert spec.config.input_ == str(bc_workdir / "data" / "cartpole")
    assert spec.config.lr == 0.01
    assert spec.stop == {
        "training_iteration": 2,
        "evaluation/env_runners/episode_return_mean": 150,
        "x": 3,
    }
    from ray.rllib.algorithms.bc import BC

    assert spec.trainable.__name__ == "BC"
    assert issubclass(spec.trainable, BC) and issubclass(spec.trainable, OfflineRestoreMixin)


def test_one_file_may_hold_several_experiments(bc_workdir: Path) -> None:
    first = bc_experiment()["cartpole-bc"]
    second = first | {"config": first["config"] | {"lr": 1e-3}}
    write_yaml(bc_workdir / "two.yaml", {"bc-a": first, "bc-b": second})
    specs = load_experiments("two.yaml")
    assert [(spec.name, spec.config.lr) for spec in specs] == [("bc-a", 1e-4), ("bc-b", 1e-3)]


def test_python_experiment_file(bc_workdir: Path) -> None:
    path = bc_workdir / "bc_experiment.py"
    path.write_text(
        "from ray.rllib.algorithms.bc import BCConfig\n"
        "config = (\n"
        "    BCConfig().environment('CartPole-v1')\n"
        "    .offline_data(input_='data/cartpole', dataset_num_iters_per_learner=2)\n"
        "    .evaluation(evaluation_interval=1, evaluation_num_env_runners=1)\n"
        ")\n"
        "stop = {'training_iteration': 3}\n"
        "checkpoint_config = {'num_to_keep': 2}\n"
        "if __name__ == '__main__':\n"
        "    raise SystemExit('must not run')\n"
    )

    (spec,) = load_experiments(path, config_overrides={"seed": 7})

    assert spec.name == "bc_experiment" and spec.algo_name == "BC"
    assert spec.stop == {"training_iteration": 3}
    assert spec.checkpoint_config == {"num_to_keep": 2}
    assert spec.config.seed == 7
    assert spec.config.input_ == str(bc_workdir / "data" / "cartpole")


def test_unknown_key_in_override_names_the_flag_and_a_close_match(bc_workdir: Path) -> None:
    write_yaml(bc_workdir / "bc.yaml", bc_experiment())
    with pytest.raises(ExperimentError) as caught:
        load_experiments("bc.yaml", config_overrides={"evaluation_interva": 2})
    message = str(caught.value)
    assert message.startswith("--config (for bc.yaml, experiment 'cartpole-bc')")
    assert "did you mean 'evaluation_interval'" in message
    assert "BC keys: bc_logstd_coeff" in message


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"config": {"input_": "data/missing"}}, "input_ path not found: data/missing"),
        ({"config": {"env": "Pendulum-v1"}}, "`env` given twice"),
        ({"checkpoint_config": {"num_to_kep": 2}}, "did you mean 'num_to_keep'"),
        ({"stop": {"training_iteration": "ten"}}, "must be a number"),
        ({"num_sample": 2}, "unknown key(s) 'num_sample' (did you mean 'num_samples'?)"),
        # RLlib's own validation, before any trial starts: BC needs spaces or an env to evaluate.
        (
            {"config": {"evaluation_interval": None, "evaluation_num_env_runners": 0}},
            "invalid config: If no evaluation should be run",
        ),
    ],
)
def test_experiment_mistakes_are_reported_before_ray_starts(
    bc_workdir: Path, change: dict, expected: str
) -> None:
    experiment = bc_experiment()
    body = experiment["cartpole-bc"]
    for key, value in change.items():
        body[key] = body[key] | value if isinstance(body.get(key), dict) else value
    path = write_yaml(bc_workdir / "bc.yaml", experiment)
    with pytest.raises(ExperimentError, match=re.escape(expected)):
        load_experiments(path)


def test_search_spaces_are_left_to_tune(bc_workdir: Path) -> None:
    path = write_yaml(bc_workdir / "bc.yaml", bc_experiment(lr={"grid_search": [1e-4, 1e-3]}))
    (spec,) = load_experiments(path)
    assert spec.config.to_dict()["lr"] == {"grid_search": [1e-4, 1e-3]}


def test_config_keys_accept_old_spellings_but_list_only_current_settings() -> None:
    from rllib_lamo.lamo import LaMoConfig

    config = LaMoConfig()
    listed = listed_config_keys(config)
    assert {"lm_num_layers", "target_returns", "train_batch_size_per_learner", "input_"} <= listed
    assert not {"num_rollout_workers", "input", "lambda"} & listed
    assert {"input", "num_rollout_workers", "_validate_config"} <= valid_config_keys(config)


# -------------------------------------------------------------------------- output (in-process)
def test_progress_row_shows_dashes_until_metrics_appear() -> None:
    titles = [column.title for column in COLUMNS]
    early = dict(zip(titles, row_cells({"training_iteration": 1}), strict=True))
    assert early["iter"] == "1"
    assert {early[title] for title in titles if title != "iter"} == {MISSING}

    result = {
        "training_iteration": 40,
        "time_this_iter_s": 12.3456,
        "learners": {
            "default_policy": {
                "gradient_steps": 4000,
                "action_loss": 0.0123456,
                "language_loss": 3.5,
                "total_loss": 0.362345,
                "lr_heads": 1e-4,
            }
        },
        "evaluation": {
            "best": {"target_return": 3600.0, "normalised_score": 71.25, "return": 2300.5}
        },
    }
    cells = dict(zip(titles, row_cells(result), strict=True))
    assert cells["grad steps"] == "4000" and cells["action loss"] == "0.01235"
    assert cells["lang loss"] == "3.5" and cells["lr"] == "0.0001"
    assert cells["eval return"] == "2300.5" and cells["score"] == "71.25"
    assert cells["target"] == "3600" and cells["s/iter"] == "12.35"


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
        [sys.executable, "-m", "rllib_lamo.cli", "train", "file", "--help"],
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
    first = subprocess.Popen(
        [*RLLIB, "train", "file", "bc.yaml", "--checkpoint-freq", "1", *SMALL_RAY],
        cwd=bc_workdir,
        env=_cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for(lambda: any(experiment_dir.glob("BC_*/checkpoint_000000")), first, 240)
        first.send_signal(signal.SIGINT)
        out, err = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 130, err[-3000:]
    assert "rllib train file bc.yaml --resume" in err
    assert f"results and checkpoints: {experiment_dir}" in out
    assert re.search(r"iter\s+grad steps\s+action loss", out)
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


def test_lamo_train_and_evaluate(tmp_path: Path) -> None:
    """A tiny LaMo run through Tune, then `rllib evaluate` on its checkpoint."""
    from rllib_lamo.data.testing import write_toy_dataset

    write_toy_dataset(
        tmp_path / "datasets" / "hopper-toy", 12, obs_dim=11, act_dim=3, env_id="Hopper-v5"
    )
    write_yaml(
        tmp_path / "lamo.yaml",
        {
            "hopper-lamo-tiny": {
                "run": "LaMo",
                "env": "Hopper-v5",
                "stop": {"training_iteration": 2},
                "config": {
                    "input_": "datasets/hopper-toy",
                    "language_model": "tiny-gpt2",
                    "context_len": 5,
                    "text_block_len": 32,
                    "train_batch_size_per_learner": 8,
                    "dataset_num_iters_per_learner": 2,
                    "warmup_steps": 2,
                    "target_returns": [100.0],
                    "evaluation_interval": 2,
                    "evaluation_num_env_runners": 1,
                    "evaluation_duration": 1,
                },
            }
        },
    )
    trained = run_rllib("train", "file", "lamo.yaml", *SMALL_RAY, cwd=tmp_path, timeout=600)
    assert trained.returncode == 0, trained.stderr[-3000:]
    rows = re.findall(r"^\S+_00000\s+(\d+)\s+(\S+)\s+(\S+)\s+(\S+)\s", trained.stdout, re.M)
    assert [int(row[0]) for row in rows] == [1, 2], trained.stdout
    iteration, grad_steps, action_loss, language_loss = rows[-1]
    assert int(grad_steps) == 4 and float(action_loss) > 0 and float(language_loss) > 0
    best = re.search(r"rllib: best checkpoint \(evaluation/best/\S+ = \S+\): (\S+)", trained.stdout)
    assert best, trained.stdout
    checkpoint = Path(best.group(1))
    assert checkpoint.is_dir()

    evaluated = run_rllib(
        "evaluate",
        str(checkpoint),
        "--episodes",
        "1",
        "--target-return",
        "50",
        "--num-env-runners",
        "0",
        *SMALL_RAY,
        cwd=tmp_path,
        timeout=300,
    )
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    table = evaluated.stdout[evaluated.stdout.index("target  episodes") :].splitlines()
    assert table[1].split()[:2] == ["50", "1"]
    assert table[-1].startswith("best target: 50 (return ")


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
