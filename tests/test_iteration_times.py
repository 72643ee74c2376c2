"""Every result splits its iteration's wall time into data, learner and evaluation."""

from __future__ import annotations

from pathlib import Path

import pytest

from rllib_lamo.iteration_times import (
    DATA_S,
    EVALUATION_S,
    ITERATION_S,
    ITERATION_TIME_KEYS,
    LEARNER_S,
    STEPS_PER_S,
    WINDOWS_PER_S,
)
from rllib_lamo.lamo import LaMoConfig

HOPPER = Path(__file__).resolve().parents[1] / "datasets" / "hopper-medium-v5"
STEPS, BATCH = 2, 8


def test_results_hold_this_iterations_own_times(ray_cluster):
    config = (
        LaMoConfig()
        .environment("Hopper-v5", normalize_actions=False, clip_actions=True)
        .offline_data(input_=str(HOPPER), dataset_num_iters_per_learner=STEPS)
        .training(
            language_model="tiny-gpt2",
            context_len=5,
            train_batch_size_per_learner=BATCH,
            language_loss_coeff=0.0,
            data_ratio=0.02,
            target_returns=[3600.0],
        )
        .evaluation(evaluation_interval=2, evaluation_duration=1, evaluation_num_env_runners=0)
        .debugging(seed=0)
    )
    algo = config.build_algo()
    try:
        first, second = algo.train(), algo.train()
    finally:
        algo.stop()
    for result in (first, second):
        assert all(result[key] >= 0.0 for key in ITERATION_TIME_KEYS)
        training_s = result[DATA_S] + result[LEARNER_S]
        assert training_s + result[EVALUATION_S] <= result[ITERATION_S]
        assert result[STEPS_PER_S] == pytest.approx(STEPS / training_s)
        assert result[WINDOWS_PER_S] == pytest.approx(BATCH * STEPS / training_s)
    # Evaluation runs in the second iteration only, and is counted there only.
    assert first[EVALUATION_S] == 0.0
    assert second[EVALUATION_S] > 0.0
