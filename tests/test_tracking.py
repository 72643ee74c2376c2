"""MLflow tracking of `rllib train file` runs, against a real `mlflow server` and SQLite stores.

The module fixture starts `mlflow server` on loopback (SQLite backend, proxied artifacts),
trains a tiny LaMo (tiny random GPT-2, 2 iterations, evaluation every iteration) through the
installed `rllib` console script with ``--mlflow-uri`` and ``--register-model``, and the tests
read back what the run holds, load the logged policy, and evaluate it from its ``runs:/`` URI.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import (
    RLLIB,
    SMALL_RAY,
    evaluation_table_of,
    rllib_env,
    run_rllib,
    tiny_lamo_experiment,
    write_workdir,
)

from rllib_lamo.experiments.experiment_file import ExperimentError
from rllib_lamo.experiments.policy_model import MODEL_NAME, local_checkpoint
from rllib_lamo.experiments.tracking import dataset_params, iteration_metrics

MLFLOW = [str(Path(sys.executable).with_name("mlflow"))]
EXPERIMENT = "hopper-lamo-tracked"
REGISTERED_MODEL = "lamo-tiny-hopper"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `mlflow server` on loopback, SQLite-backed, serving artifacts; stopped after."""
    folder = tmp_path_factory.mktemp("mlflow_server")
    port = _free_port()
    server = subprocess.Popen(
        [
            *MLFLOW,
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            f"sqlite:///{folder / 'server.db'}",
            "--artifacts-destination",
            str(folder / "artifacts"),
            "--workers",
            "1",
        ],
        cwd=folder,
        stdout=subprocess.DEVNULL,
        stderr=(folder / "server.log").open("w"),
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"mlflow server did not start: {(folder / 'server.log').read_text()}"
                )
            time.sleep(0.5)
        yield uri
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()


@pytest.fixture(scope="module")
def tracked_run(mlflow_server: str, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One tiny LaMo run logged to the server; returns its MLflow run and the CLI output."""
    from mlflow import MlflowClient

    workdir = tmp_path_factory.mktemp("tracked")
    experiment = tiny_lamo_experiment()
    # Videos from the final checkpoint only (rendering costs seconds per target).
    experiment["mlflow"] = {"tags": {"purpose": "test"}, "video_every": 99, "video_max_steps": 30}
    write_workdir(workdir, {EXPERIMENT: experiment})
    started = time.perf_counter()
    completed = run_rllib(
        "train",
        "file",
        "experiments.yaml",
        "--checkpoint-freq",
        "1",
        "--mlflow-uri",
        mlflow_server,
        "--register-model",
        REGISTERED_MODEL,
        *SMALL_RAY,
        cwd=workdir,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    client = MlflowClient(mlflow_server)
    experiment_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
    (run,) = client.search_runs([experiment_id])
    return {
        "client": client,
        "run": run,
        "uri": mlflow_server,
        "workdir": workdir,
        "stdout": completed.stdout,
        "seconds": time.perf_counter() - started,
    }


# ------------------------------------------------------------------------- fast, no Ray
def test_dataset_hash_is_read_from_metadata_not_recomputed(tmp_path: Path) -> None:
    from rllib_lamo.data.format import CONTENT_HASH_KEY, content_hash
    from rllib_lamo.data.testing import write_toy_dataset

    folder = tmp_path / "toy"
    written = write_toy_dataset(folder, 6)
    assert dataset_params(str(folder)) == {
        "dataset_id": "toy",
        "dataset_hash": written[CONTENT_HASH_KEY],
    }
    # A dataset written before the key existed is hashed once, by the same definition.
    metadata_file = folder / "metadata.json"
    old_style = {k: v for k, v in written.items() if k != CONTENT_HASH_KEY}
    metadata_file.write_text(json.dumps(old_style))
    assert dataset_params(str(folder))["dataset_hash"] == written[CONTENT_HASH_KEY]
    # With the key present, the stored value is what is logged: no shard is read.
    metadata_file.write_text(json.dumps({**old_style, CONTENT_HASH_KEY: "f" * 64}))
    assert dataset_params(str(folder))["dataset_hash"] == "f" * 64 == content_hash(str(folder))
    assert dataset_params(str(tmp_path / "missing")) == {}


def test_evaluation_metrics_are_logged_only_when_evaluation_ran() -> None:
    result = {
        "training_iteration": 3,
        "time_this_iter_s": 5.5,
        "time_total_s": 20.0,
        "time_iteration_s": 5.25,
        "time_data_s": 0.01,
        "time_learner_s": 4.0,
        "time_evaluation_s": 1.125,
        "steps_per_s": 25.0,
        "windows_per_s": 1600.0,
        "learners": {
            "default_policy": {
                "action_loss": 0.5,
                "lr_heads": 1e-4,
                "gradient_steps_per_s": 26.0,
                "tokens_per_s": 93600.0,
                "achieved_tflops": 0.5,
            }
        },
        "evaluation": {
            "target_3600": {"return_mean": 900.0, "normalised_score_mean": 28.3},
            "best": {"return": 900.0, "normalised_score": 28.3, "target_return": 3600.0},
            "best_so_far": {"normalised_score": 30.1},
            "paper_score": {
                "score": 25.5,
                "std_over_episodes": 4.25,
                "target_return": 3600.0,
                "metric": "normalised_score",
                "num_evaluations": 3,
                "last_n_evaluations": 8,
                "per_target": {
                    "target_3600": {
                        "score": 25.5,
                        "std_over_episodes": 4.25,
                        "num_evaluations": 3,
                        "num_episodes": 60,
                        "metric": "normalised_score",
                    }
                },
            },
            "env_runners": {"episode_return_mean": 900.0},
        },
    }
    training = {
        "action_loss": 0.5,
        "lr_heads": 1e-4,
        "time/iteration_s": 5.25,
        "time/data_s": 0.01,
        "time/learner_s": 4.0,
        "time/evaluation_s": 1.125,
        "time/total_s": 20.0,
        "throughput/steps_per_s": 25.0,
        "throughput/windows_per_s": 1600.0,
        "throughput/gradient_steps_per_s": 26.0,
        "throughput/tokens_per_s": 93600.0,
        "throughput/achieved_tflops": 0.5,
    }
    assert iteration_metrics(result, evaluated=False) == training
    evaluated = iteration_metrics(result, evaluated=True)
    assert evaluated == training | {
        "eval/target_3600/return_mean": 900.0,
        "eval/target_3600/normalised_score_mean": 28.3,
        "eval/target_3600/paper_score": 25.5,
        "eval/target_3600/paper_score_std_over_episodes": 4.25,
        "eval/target_3600/paper_score_num_evaluations": 3.0,
        "eval/best/return": 900.0,
        "eval/best/normalised_score": 28.3,
        "eval/best/target_return": 3600.0,
        "eval/best_so_far/normalised_score": 30.1,
        "eval/paper_score": 25.5,
        "eval/paper_score_std_over_episodes": 4.25,
        "eval/paper_score_target_return": 3600.0,
        "eval/paper_score_num_evaluations": 3.0,
        "eval/episode_return_mean": 900.0,
    }
    # MFU only where the device's peak is known; other algorithms' iteration time is Tune's.
    result["learners"]["default_policy"]["mfu"] = 0.41
    del result["time_iteration_s"]
    logged = iteration_metrics(result, evaluated=False)
    assert logged["throughput/mfu"] == 0.41 and logged["time/iteration_s"] == 5.5


# ------------------------------------------------------------- a real run, a real server
def test_run_holds_names_params_tags_and_metrics(tracked_run: dict) -> None:
    run = tracked_run["run"]
    assert run.info.status == "FINISHED"
    assert run.info.run_name.startswith(f"{EXPERIMENT}-")
    params = run.data.params
    assert params["language_model"] == "tiny-gpt2" and params["lora_rank"] == "16"
    assert params["embedding"] == "mlp" and params["language_loss_coeff"] == "0.1"
    assert params["data_ratio"] == "1.0" and params["seed"] == "None"
    assert params["dataset_id"] == "hopper-toy" and len(params["dataset_hash"]) == 64
    assert params["method"] == "LaMo"
    tags = run.data.tags
    assert len(tags["git_commit"]) == 40 and tags["version.ray"].startswith("2.60")
    assert tags["purpose"] == "test" and tags["algorithm"] == "LaMo"

    client = tracked_run["client"]
    losses = client.get_metric_history(run.info.run_id, "action_loss")
    assert [point.step for point in losses] == [1, 2]
    for name in (
        "language_loss",
        "lr_heads",
        "time/iteration_s",
        "time/data_s",
        "time/learner_s",
        "time/evaluation_s",
        "throughput/steps_per_s",
        "throughput/windows_per_s",
        "throughput/tokens_per_s",
    ):
        assert len(client.get_metric_history(run.info.run_id, name)) == 2, name
    assert "throughput/mfu" not in run.data.metrics  # no known peak on a CPU
    for name in (
        "eval/target_100/normalised_score_mean",
        "eval/target_50/return_mean",
        "eval/best/normalised_score",
        "eval/best_so_far/normalised_score",
        "eval/paper_score",
        "eval/paper_score_std_over_episodes",
        "eval/paper_score_num_evaluations",
        "eval/target_100/paper_score",
    ):
        assert len(client.get_metric_history(run.info.run_id, name)) == 2, name


def test_run_holds_config_checkpoints_plot_videos_and_model(tracked_run: dict) -> None:
    client, run_id = tracked_run["client"], tracked_run["run"].info.run_id
    top = {artifact.path for artifact in client.list_artifacts(run_id)}
    assert {"config", "checkpoints", "plots", "videos"} <= top
    assert {a.path for a in client.list_artifacts(run_id, "config")} == {
        "config/experiments.yaml",
        "config/trial_config.json",
    }
    checkpoints = {a.path for a in client.list_artifacts(run_id, "checkpoints")}
    assert checkpoints == {"checkpoints/checkpoint_000000", "checkpoints/checkpoint_000001"}
    plot = client.list_artifacts(run_id, "plots")[0]
    assert plot.path == "plots/learning_curve.png" and plot.file_size > 10_000
    videos = sorted(a.path for a in client.list_artifacts(run_id, "videos"))
    assert videos == [
        "videos/checkpoint_000001_target_100.gif",
        "videos/checkpoint_000001_target_50.gif",
    ]
    (version,) = client.search_model_versions(f"name = '{REGISTERED_MODEL}'")
    assert version.run_id == run_id
    assert "registered models:/" in tracked_run["stdout"]


def test_logged_policy_loads_and_acts(tracked_run: dict) -> None:
    """The `policy` pyfunc predicts actions and steps the real env (MuJoCo Hopper)."""
    import gymnasium as gym
    import mlflow.pyfunc

    from rllib_lamo.experiments.videos import rollout_episode

    mlflow.set_tracking_uri(tracked_run["uri"])
    model = mlflow.pyfunc.load_model(f"runs:/{tracked_run['run'].info.run_id}/{MODEL_NAME}")
    policy = model.unwrap_python_model()
    k = policy.config.context_len
    contexts = {
        "obs": np.zeros((4, k, 11), np.float32),
        "actions": np.full((4, k, 3), -10.0, np.float32),
        "returns_to_go": np.full((4, k), 0.1, np.float32),
        "timesteps": np.zeros((4, k), np.int64),
        "attention_mask": np.ones((4, k), np.float32),
    }
    actions = model.predict(contexts)
    assert actions.shape == (4, 3) and np.isfinite(actions).all()

    env = gym.make("Hopper-v5")
    try:
        rollout = rollout_episode(policy.module, policy.config, env, 100.0, max_steps=50, seed=0)
    finally:
        env.close()
    assert 1 <= rollout.length <= 50 and np.isfinite(rollout.episode_return)


def test_rllib_evaluate_runs_uri(tracked_run: dict) -> None:
    """`rllib evaluate runs:/<id>/policy` downloads the model's checkpoint and rolls it out."""
    uri = f"runs:/{tracked_run['run'].info.run_id}/{MODEL_NAME}"
    evaluation_table_of(uri, cwd=tracked_run["workdir"], MLFLOW_TRACKING_URI=tracked_run["uri"])


def test_local_checkpoint_of_a_registered_model(tracked_run: dict) -> None:
    import mlflow

    mlflow.set_tracking_uri(tracked_run["uri"])
    checkpoint = Path(local_checkpoint(f"models:/{REGISTERED_MODEL}/1"))
    assert (checkpoint / "learner_group").is_dir()
    with pytest.raises(ExperimentError, match="cannot download runs:/"):
        local_checkpoint("runs:/0123456789abcdef/policy")


def test_videos_are_skipped_with_a_note_where_mujoco_cannot_render(tracked_run: dict) -> None:
    """glfw without a display cannot render: the run gets a `videos` tag and stderr a note."""
    run_id = tracked_run["client"].create_run(tracked_run["run"].info.experiment_id).info.run_id
    script = (
        "import mlflow\n"
        "from rllib_lamo.experiments.policy_model import local_checkpoint\n"
        "from rllib_lamo.experiments.tracking import LaMoMLflowCallback\n"
        f"mlflow.set_tracking_uri({tracked_run['uri']!r})\n"
        f"checkpoint = local_checkpoint('runs:/{tracked_run['run'].info.run_id}/{MODEL_NAME}')\n"
        f"callback = LaMoMLflowCallback(tracking_uri={tracked_run['uri']!r}, "
        f"experiment_name={EXPERIMENT!r})\n"
        f"callback.log_videos({run_id!r}, checkpoint, 'checkpoint_000001')\n"
    )
    environment = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    completed = subprocess.run(
        [sys.executable, "-c", script],
        env={**environment, "MUJOCO_GL": "glfw"},
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tracked_run["workdir"],
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    note = "evaluation videos skipped: RendererUnavailable: MuJoCo could not render offscreen"
    assert f"rllib: {note} with MUJOCO_GL=glfw" in completed.stderr
    tags = tracked_run["client"].get_run(run_id).data.tags
    assert tags["videos"].startswith(note)
    assert not tracked_run["client"].list_artifacts(run_id, "videos")


@pytest.mark.slow
def test_resume_continues_the_same_mlflow_run(tmp_path: Path) -> None:
    """Ctrl-C, then `--resume`: the trial keeps logging into its run, not a new one."""
    from mlflow import MlflowClient

    experiment = tiny_lamo_experiment()
    experiment["stop"] = {"training_iteration": 3}
    experiment["mlflow"] = {"video_every": 0}
    write_workdir(tmp_path, {EXPERIMENT: experiment})
    environment = rllib_env()
    command = [*RLLIB, "train", "file", "experiments.yaml", "--checkpoint-freq", "1", *SMALL_RAY]
    first = subprocess.Popen(
        command, cwd=tmp_path, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    experiment_dir = tmp_path / "ray_results" / EXPERIMENT
    try:
        deadline = time.monotonic() + 400
        while not any(experiment_dir.glob("LaMo_*/checkpoint_000000")):
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.5)
        first.send_signal(signal.SIGINT)
        first.communicate(timeout=180)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 130

    resumed = run_rllib("train", "file", "experiments.yaml", "--resume", *SMALL_RAY, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path / 'ray_results' / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id])
    steps = [point.step for point in client.get_metric_history(run.info.run_id, "action_loss")]
    assert steps[-1] == 3 and sorted(set(steps)) == list(range(1, 4))
    assert run.info.status == "FINISHED"
