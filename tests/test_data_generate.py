"""Behaviour-data generation on the real Hopper-v5 (tiny budgets), and the shipped dataset."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from rllib_lamo.data import generate as generation
from rllib_lamo.data.cli import main
from rllib_lamo.data.format import iter_episodes, list_shards
from rllib_lamo.data.validation import validate_dataset

SHIPPED = Path(__file__).resolve().parents[1] / "datasets" / "hopper-medium-v5"


@pytest.fixture
def tiny_hopper(monkeypatch):
    """Hopper's recipe with budgets small enough for a unit test (one PPO rollout of 2048)."""
    recipe = dataclasses.replace(
        generation.TASKS["hopper"],
        medium_max_steps=2048,
        expert_train_steps=4096,
        eval_every=1024,
        eval_episodes=2,
    )
    monkeypatch.setitem(generation.TASKS, "hopper", recipe)
    return recipe


def _contents(path: Path) -> list[tuple]:
    return [
        (e.eps_id, e.obs.tobytes(), e.actions.tobytes(), e.rewards.tobytes(), e.terminated)
        for e in iter_episodes(path)
    ]


def test_generate_medium_is_seeded_and_documented(tmp_path, tiny_hopper):
    meta = generation.generate(
        "hopper",
        "medium",
        tmp_path / "a",
        num_steps=1500,
        seed=0,
        cache_dir=tmp_path / "cache-a",
        show_progress=False,
    )
    assert validate_dataset(tmp_path / "a")["num_steps"] == meta["num_steps"] >= 1500
    assert meta["env_id"] == "Hopper-v5" and meta["seed"] == 0
    assert meta["ref_max_score"] == pytest.approx(3234.3)
    assert meta["v5_random_score"] == generation.V5_RANDOM_RETURNS["Hopper-v5"]
    policy = meta["policy"]
    assert policy["algorithm"] == "PPO" and policy["train_steps"] == 2048
    assert policy["rollouts"] == "stochastic" and policy["evaluated_return"]["episodes"] == 2
    assert policy["target_return"] == pytest.approx(3234.3 / 3)
    assert meta["source"]["command"].startswith("lamo-data generate hopper --kind medium")
    # A fresh cache (so a fresh training run) writes the very same episodes.
    generation.generate(
        "hopper",
        "medium",
        tmp_path / "b",
        num_steps=1500,
        seed=0,
        cache_dir=tmp_path / "cache-b",
        show_progress=False,
    )
    assert _contents(tmp_path / "a") == _contents(tmp_path / "b")


def test_replay_and_medium_expert_reuse_the_cached_policies(tmp_path, tiny_hopper):
    cache = tmp_path / "cache"
    kwargs = {"num_steps": 800, "seed": 1, "cache_dir": cache, "show_progress": False}
    replay = generation.generate("hopper", "medium-replay", tmp_path / "replay", **kwargs)
    # The replay set is every complete episode of the 2048-step training run.
    assert 0 < replay["num_steps"] <= 2048
    assert replay["policy"]["level"] == "medium"
    mixed = generation.generate("hopper", "medium-expert", tmp_path / "mixed", **kwargs)
    ids = [e.eps_id for e in iter_episodes(tmp_path / "mixed")]
    assert any("-medium-" in i for i in ids) and any("-expert-" in i for i in ids)
    assert mixed["num_steps"] >= 1600
    assert [p["level"] for p in mixed["policy"]["mixture"]] == ["medium", "expert"]
    assert (cache / "hopper-seed1" / "expert-policy.zip").exists()
    # D4RL's definition: medium-expert is the medium set followed by the expert set.
    generation.generate("hopper", "medium", tmp_path / "medium", **kwargs)
    generation.generate("hopper", "expert", tmp_path / "expert", **kwargs)
    assert _contents(tmp_path / "mixed") == (
        _contents(tmp_path / "medium") + _contents(tmp_path / "expert")
    )


def test_generate_refuses_to_overwrite(tmp_path, capsys):
    (tmp_path / "out").mkdir()
    assert main(["generate", "hopper", "--out", str(tmp_path / "out")]) == 1
    assert "already exists" in capsys.readouterr().err


def test_shipped_hopper_medium_is_valid_and_described():
    meta = validate_dataset(SHIPPED)
    assert meta["env_id"] == "Hopper-v5"
    assert meta["num_steps"] >= 200_000
    assert 20 < meta["normalised_return"]["mean"] < 60
    size = sum(Path(p).stat().st_size for p in list_shards(SHIPPED))
    assert size < 12 * 1024**2
    assert meta["policy"]["algorithm"] == "PPO"


def test_info_command_reports_the_shipped_dataset(capsys):
    assert main(["info", str(SHIPPED)]) == 0
    out = capsys.readouterr().out
    for text in ("Hopper-v5", "episodes", "normalised", "Box(shape=(11,)", "MB"):
        assert text in out


@pytest.mark.slow
def test_shipped_dataset_is_reproduced_by_its_command(tmp_path):
    """The documented command rebuilds the shipped episodes exactly (minutes of CPU)."""
    meta = generation.generate(
        "hopper",
        "medium",
        tmp_path / "hopper-medium-v5",
        num_steps=200_000,
        seed=0,
        cache_dir=tmp_path / "cache",
        show_progress=False,
    )
    assert meta["num_steps"] == validate_dataset(SHIPPED)["num_steps"]
    for ours, shipped in zip(
        list_shards(tmp_path / "hopper-medium-v5"), list_shards(SHIPPED), strict=True
    ):
        assert pq.read_table(ours).equals(pq.read_table(shipped))


def test_random_reference_return_is_measured_not_assumed():
    value = generation.measure_random_return("Hopper-v5", episodes=20, seed=123)
    assert np.isfinite(value) and -50 < value < 100


def test_generate_reacher2d_trains_on_the_dense_reward_and_records_the_sparse_one(
    tmp_path, monkeypatch
):
    """`lamo-data generate reacher2d`: PPO on the shaped reward, data with the task's reward."""
    recipe = dataclasses.replace(
        generation.TASKS["reacher2d"],
        medium_max_steps=2048,
        eval_every=1024,
        eval_episodes=2,
    )
    monkeypatch.setitem(generation.TASKS, "reacher2d", recipe)
    cache = tmp_path / "cache"
    common = ["--steps", "300", "--seed", "0", "--cache-dir", str(cache), "--no-progress"]
    out = tmp_path / "reacher2d-medium-v0"
    assert main(["generate", "reacher2d", "--kind", "medium", "--out", str(out), *common]) == 0
    replay = tmp_path / "reacher2d-medium-replay-v0"
    replay_args = ["generate", "reacher2d", "--kind", "medium-replay", "--out", str(replay)]
    assert main([*replay_args, *common]) == 0
    meta, replay_meta = validate_dataset(out), validate_dataset(replay)
    assert meta["env_id"] == replay_meta["env_id"] == "Reacher2d-v0"
    assert meta["num_steps"] == 100 * meta["num_episodes"] >= 300  # 100-step episodes
    # The replay set is the training run's complete episodes (8 envs x 256 steps: 2 each),
    # with the sparse reward.
    assert replay_meta["num_steps"] == 1600
    for path in (out, replay):
        for episode in iter_episodes(path):
            assert set(np.unique(episode.rewards)) <= {0.0, 1.0}
            assert episode.obs.shape == (100, 12) and not episode.terminated
    policy = meta["policy"]
    assert policy["train_env_kwargs"] == {"reward_type": "dense"}
    assert policy["target_return"] == pytest.approx(100 / 3)
    assert policy["evaluated_return"]["episodes"] == 2
    assert meta["v5_random_score"] == generation.V5_RANDOM_RETURNS["Reacher2d-v0"]
    # Normalised = return / 100 in percent (the paper's references, 0 and 100).
    assert meta["normalised_return"]["mean"] == pytest.approx(meta["return"]["mean"])
