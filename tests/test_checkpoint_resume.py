"""Checkpoint and resume: a restored run continues exactly as an uninterrupted one would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HOPPER = REPO / "datasets" / "hopper-medium-v5"

# Runs in a fresh interpreter: trains, optionally saves or restores, prints the losses as JSON.
SCRIPT = r"""
import json, sys
import ray
ray.init(address="local", num_cpus=4, object_store_memory=300 * 1024**2, include_dashboard=False,
         log_to_driver=False)
from rllib_lamo.lamo import LaMo, LaMoConfig

mode, path, iterations = sys.argv[1], sys.argv[2], int(sys.argv[3])
if mode == "restore":
    algo = LaMo.from_checkpoint(path)
else:
    config = (
        LaMoConfig()
        .offline_data(input_=sys.argv[4], dataset_num_iters_per_learner=3)
        .training(
            language_model="tiny-gpt2", train_batch_size_per_learner=8, context_len=5,
            text_block_len=16, warmup_steps=4, data_ratio=0.02, lr=1e-3, lm_lr=1e-3,
        )
        .debugging(seed=11)
    )
    algo = config.build_algo()
losses = []
for _ in range(iterations):
    learner = algo.train()["learners"]["default_policy"]
    losses.append([float(learner[k]) for k in ("action_loss", "language_loss")])
if mode == "save":
    algo.save_to_path(path)
print("LOSSES=" + json.dumps(losses))
algo.stop()
"""


def run_fresh_process(*args: str) -> list[list[float]]:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert result.returncode == 0, result.stderr[-4000:]
    line = next(x for x in result.stdout.splitlines() if x.startswith("LOSSES="))
    return json.loads(line.removeprefix("LOSSES="))


def test_restored_run_continues_exactly(tmp_path):
    checkpoint = tmp_path / "checkpoint"
    uninterrupted = run_fresh_process("train", str(tmp_path / "unused"), "3", str(HOPPER))
    first_two = run_fresh_process("save", str(checkpoint), "2", str(HOPPER))
    assert first_two == uninterrupted[:2]  # same seed, same run
    resumed = run_fresh_process("restore", str(checkpoint), "1")
    assert resumed == uninterrupted[2:]


def test_checkpoint_holds_only_trainable_weights(tmp_path):
    import pickle

    run_fresh_process("save", str(tmp_path / "ckpt"), "1", str(HOPPER))
    (state_file,) = (tmp_path / "ckpt").rglob("default_policy/module_state.pkl")
    names = set(pickle.loads(state_file.read_bytes()))
    assert {"obs_mean", "obs_std"} <= names
    assert any("lora_A" in name for name in names)
    frozen = ("wte.", "lm_head.", "mlp.c_fc.", "ln_1.", "_proj.base_layer.weight")
    assert not [name for name in names if any(part in name for part in frozen)]


def test_restoring_a_corrupt_checkpoint_names_the_problem(tmp_path, ray_cluster):
    from rllib_lamo.lamo import LaMo

    with pytest.raises(FileNotFoundError, match="not a LaMo checkpoint"):
        LaMo.from_checkpoint(str(tmp_path))


def test_a_dataset_from_another_env_is_refused_naming_both(ray_cluster):
    from rllib_lamo.lamo import LaMoConfig

    config = (
        LaMoConfig()
        .environment("Walker2d-v5")
        .offline_data(input_=str(HOPPER))
        .training(language_model="tiny-gpt2", data_ratio=0.01)
        .evaluation(evaluation_interval=1, evaluation_num_env_runners=1)
    )
    with pytest.raises(ValueError, match=r"hopper-medium-v5/metadata.json: observation_space"):
        config.build_algo()


def test_a_truncated_checkpoint_file_is_named(tmp_path):
    from rllib_lamo.checkpoints import CHECKPOINT_FILES

    checkpoint = tmp_path / "ckpt"
    run_fresh_process("save", str(checkpoint), "1", str(HOPPER))
    state = checkpoint / CHECKPOINT_FILES[2]
    state.write_bytes(state.read_bytes()[:100])
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, "restore", str(checkpoint), "1"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    assert result.returncode != 0
    assert "checkpoint is corrupt or incomplete" in result.stderr
    assert str(checkpoint) in result.stderr


def _folder_digest(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_a_failed_save_leaves_the_previous_checkpoint_whole(tmp_path, ray_cluster):
    """Checkpoints are written atomically: a save that fails midway changes nothing."""
    import threading

    from rllib_lamo.checkpoints import missing_checkpoint_files
    from rllib_lamo.lamo import LaMoConfig

    algo = (
        LaMoConfig()
        .offline_data(input_=str(HOPPER), dataset_num_iters_per_learner=1)
        .training(
            language_model="tiny-gpt2",
            train_batch_size_per_learner=4,
            context_len=5,
            data_ratio=0.02,
            language_loss_coeff=0.0,
        )
        .debugging(seed=0)
        .build_algo()
    )
    try:
        checkpoint = tmp_path / "checkpoint"
        algo.train()
        algo.save_to_path(checkpoint)
        before = _folder_digest(checkpoint)
        assert not missing_checkpoint_files(checkpoint)

        algo.train()
        algo._best_evaluation = {"unpicklable": threading.Lock()}  # fails mid-save
        with pytest.raises(TypeError, match="pickle"):
            algo.save_to_path(checkpoint)
        assert _folder_digest(checkpoint) == before
        assert [p.name for p in tmp_path.iterdir()] == ["checkpoint"]  # no partial folder

        algo._best_evaluation = None
        algo.save_to_path(checkpoint)  # a complete save replaces the old checkpoint
        assert _folder_digest(checkpoint) != before
        assert not missing_checkpoint_files(checkpoint)
        assert [p.name for p in tmp_path.iterdir()] == ["checkpoint"]
    finally:
        algo.stop()
