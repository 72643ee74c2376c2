"""Shared fixtures and helpers: one real local Ray cluster per test session (sized for a
2-core machine), toy datasets, and running the `rllib` command on small experiment files.

Test modules import the helpers with ``from conftest import ...``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")


@pytest.fixture(scope="session")
def ray_cluster():
    """A local Ray with more logical CPUs than cores: Ray Data needs spare ones or it stalls."""
    import ray

    if not ray.is_initialized():
        ray.init(
            address="local",  # never a `ray start` head another job left on this machine
            num_cpus=6,
            object_store_memory=400 * 1024**2,
            include_dashboard=False,
            log_to_driver=False,
        )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def toy_dataset(tmp_path_factory: pytest.TempPathFactory):
    """25 toy episodes in shards of at most 120 steps, labelled as Hopper data."""
    from rllib_lamo.data.testing import write_toy_dataset

    out = tmp_path_factory.mktemp("shards") / "toy-v0"
    write_toy_dataset(out, num_episodes=25, max_steps_per_shard=120, env_id="Hopper-v5")
    return out


# ----------------------------------------------------- the `rllib` command and experiment files
CONSOLE_SCRIPT = Path(sys.executable).with_name("rllib")
RLLIB = [str(CONSOLE_SCRIPT)] if CONSOLE_SCRIPT.exists() else [shutil.which("rllib") or "rllib"]
# Every command that starts Ray gets a small local cluster of its own.
SMALL_RAY = ["--ray-num-cpus", "4", "--ray-object-store-mb", "300"]


def rllib_env(**env: str) -> dict[str, str]:
    """The environment of an `rllib` subprocess: never another session's cluster or store."""
    environment = {
        k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")
    }
    environment.update(env)
    return environment


def run_rllib(
    *args: str, cwd: Path, timeout: float = 600, **env: str
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*RLLIB, *args],
        cwd=cwd,
        env=rllib_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def evaluation_table_of(checkpoint: str, *, cwd: Path, **env: str) -> list[str]:
    """`rllib evaluate` of one episode at target 50 in-process; the printed table's lines."""
    evaluated = run_rllib(
        "evaluate",
        checkpoint,
        "--episodes",
        "1",
        "--target-return",
        "50",
        "--num-env-runners",
        "0",
        *SMALL_RAY,
        cwd=cwd,
        timeout=300,
        **env,
    )
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    table = evaluated.stdout[evaluated.stdout.index("target  episodes") :].splitlines()
    assert table[1].split()[:2] == ["50", "1"]
    return table


def write_yaml(path: Path, document: dict) -> Path:
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def tiny_lamo_experiment(**config: object) -> dict:
    """A LaMo run of seconds per iteration on the toy Hopper-shaped dataset of `write_workdir`."""
    return {
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
            "target_returns": [100.0, 50.0],
            "evaluation_interval": 1,
            "evaluation_num_env_runners": 1,
            "evaluation_duration": 1,
            **config,
        },
    }


def write_workdir(folder: Path, experiments: dict) -> Path:
    """A toy Hopper-v5 dataset under ./datasets/hopper-toy and ./experiments.yaml."""
    from rllib_lamo.data.testing import write_toy_dataset

    write_toy_dataset(
        folder / "datasets" / "hopper-toy", 12, obs_dim=11, act_dim=3, env_id="Hopper-v5"
    )
    return write_yaml(folder / "experiments.yaml", experiments)


def write_cartpole_recording(folder: Path, num_episodes: int = 20) -> None:
    """A small RLlib column recording (one row per step) of a noisy pole-angle policy."""
    import gymnasium as gym
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

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
