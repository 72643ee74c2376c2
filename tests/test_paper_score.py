"""The paper's reported number: each target's mean over the last N evaluations, best target."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rllib_lamo.evaluation import target_key
from rllib_lamo.scores import (
    PAPER_SCORE,
    PAPER_SCORE_KEY,
    PAPER_SCORE_METRIC,
    PAPER_SCORE_NUM_EVALUATIONS,
    PAPER_SCORE_PER_TARGET,
    PAPER_SCORE_STD,
    PAPER_SCORE_TARGET,
    TargetScore,
    paper_score,
    reference_scores,
    target_scores,
    task_of_env,
)

HOPPER = Path(__file__).resolve().parents[1] / "datasets" / "hopper-medium-v5"


def _evaluation(rng: np.random.Generator, means: dict[float, float]) -> tuple[list, dict]:
    """Per-target evaluation metrics of 20 episodes each, and the episodes' scores."""
    episodes = {t: rng.normal(mean, 5.0, size=20) for t, mean in means.items()}
    metrics = [
        {
            "target_return": t,
            "num_episodes": 20,
            "normalised_score_mean": float(scores.mean()),
            "normalised_score_std": float(scores.std()),
            "return_mean": 0.0,
            "return_std": 0.0,
        }
        for t, scores in episodes.items()
    ]
    return target_scores(metrics), episodes


def test_mean_over_the_last_n_evaluations_then_the_best_target():
    rng = np.random.default_rng(0)
    history, episodes = [], []
    # Target 3600 is best early, 1800 is best over the last 3 evaluations.
    for means in ({3600: 90, 1800: 10}, {3600: 80, 1800: 50}, {3600: 20, 1800: 60},
                  {3600: 30, 1800: 55}, {3600: 40, 1800: 70}):  # fmt: skip
        scores, raw = _evaluation(rng, means)
        history.append(scores)
        episodes.append(raw)
    result = paper_score(history, last_n=3, key_of_target=target_key)
    last = {t: np.concatenate([e[t] for e in episodes[-3:]]) for t in (3600, 1800)}
    assert result[PAPER_SCORE_TARGET] == 1800
    assert result[PAPER_SCORE] == pytest.approx(last[1800].mean())
    assert result[PAPER_SCORE_STD] == pytest.approx(last[1800].std())
    assert result[PAPER_SCORE_NUM_EVALUATIONS] == 3
    assert result[PAPER_SCORE_METRIC] == "normalised_score"
    per_target = result[PAPER_SCORE_PER_TARGET]
    assert set(per_target) == {"target_1800", "target_3600"}
    assert per_target["target_3600"][PAPER_SCORE] == pytest.approx(last[3600].mean())
    assert per_target["target_3600"][PAPER_SCORE_STD] == pytest.approx(last[3600].std())
    # Over all 5 evaluations target 3600 wins: the window matters.
    assert paper_score(history, last_n=8)[PAPER_SCORE_TARGET] == 3600
    assert paper_score(history, last_n=8)[PAPER_SCORE_NUM_EVALUATIONS] == 5


def test_without_reference_scores_it_uses_returns_and_before_evaluations_none():
    raw = {"target_return": 5.0, "num_episodes": 4, "return_mean": 3.0, "return_std": 1.0}
    (score,) = target_scores([raw])
    assert score == TargetScore(5.0, 3.0, 1.0, 4, "return")
    assert paper_score([[score]], last_n=8)[PAPER_SCORE_METRIC] == "return"
    assert paper_score([], last_n=8) is None
    with pytest.raises(ValueError, match="paper_score_last_n_evals"):
        paper_score([[score]], last_n=0)


def test_gymnasium_dense_reacher_is_not_reacher2d():
    assert task_of_env("Reacher-v5") is None and reference_scores("Reacher-v5") is None
    assert task_of_env("reacher2d-medium-v0") == "reacher2d"
    assert reference_scores("Reacher2d-v0").expert == 100.0
    assert task_of_env("Hopper-v5") == "hopper"


def test_paper_score_history_survives_checkpoint_and_resume(tmp_path, ray_cluster):
    from rllib_lamo.lamo import LaMo, LaMoConfig

    config = (
        LaMoConfig()
        .environment("Hopper-v5")
        .offline_data(input_=str(HOPPER), dataset_num_iters_per_learner=1)
        .training(
            language_model="tiny-gpt2",
            train_batch_size_per_learner=4,
            context_len=3,
            language_loss_coeff=0.0,
            data_ratio=0.02,
            target_returns=[3600.0, 1800.0],
            paper_score_last_n_evals=2,
        )
        .evaluation(evaluation_interval=1, evaluation_duration=2, evaluation_num_env_runners=1)
        .debugging(seed=3)
    )
    algo = config.build_algo()
    first = algo.train()["evaluation"]
    assert first[PAPER_SCORE_KEY][PAPER_SCORE_NUM_EVALUATIONS] == 1
    second = algo.train()["evaluation"]
    algo.save_to_path(tmp_path / "checkpoint")
    algo.stop()

    restored = LaMo.from_checkpoint(tmp_path / "checkpoint")
    third = restored.train()["evaluation"]
    restored.stop()
    score = third[PAPER_SCORE_KEY]
    assert score[PAPER_SCORE_NUM_EVALUATIONS] == 2  # one from before the checkpoint
    for target in ("target_3600", "target_1800"):
        expected = (
            second[target]["normalised_score_mean"] + third[target]["normalised_score_mean"]
        ) / 2
        assert score[PAPER_SCORE_PER_TARGET][target][PAPER_SCORE] == pytest.approx(expected)
    best = max(score[PAPER_SCORE_PER_TARGET].values(), key=lambda t: t[PAPER_SCORE])
    assert score[PAPER_SCORE] == best[PAPER_SCORE]
