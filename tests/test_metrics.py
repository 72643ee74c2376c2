"""The metric names the application reads are the ones the algorithm logs."""

from __future__ import annotations

from ray.rllib.core import DEFAULT_MODULE_ID
from ray.rllib.core.learner.learner import Learner
from ray.rllib.utils import metrics as rllib_metrics

from rllib_lamo import metrics
from rllib_lamo.lamo_learner import HEADS_OPTIMIZER, LM_OPTIMIZER
from rllib_lamo.torch import performance


def test_names_match_rllib_and_the_learner() -> None:
    assert metrics.DEFAULT_MODULE_ID == DEFAULT_MODULE_ID
    assert metrics.LEARNER_RESULTS == rllib_metrics.LEARNER_RESULTS
    assert metrics.EVALUATION_RESULTS == rllib_metrics.EVALUATION_RESULTS
    assert metrics.ENV_RUNNER_RESULTS == rllib_metrics.ENV_RUNNER_RESULTS
    assert metrics.ALL_MODULES == rllib_metrics.ALL_MODULES
    assert metrics.TOTAL_LOSS_KEY == Learner.TOTAL_LOSS_KEY
    assert metrics.LR_LM_KEY == f"lr_{LM_OPTIMIZER}"
    assert metrics.LR_HEADS_KEY == f"lr_{HEADS_OPTIMIZER}"
    assert metrics.GRADIENT_STEPS_PER_S_KEY == performance.GRADIENT_STEPS_PER_S_KEY
    assert metrics.TOKENS_PER_S_KEY == performance.TOKENS_PER_S_KEY
    assert metrics.ACHIEVED_TFLOPS_KEY == performance.ACHIEVED_TFLOPS_KEY
    assert metrics.MFU_KEY == performance.MFU_KEY


def test_flattened_keys() -> None:
    assert metrics.learner_metric("action_loss") == "learners/default_policy/action_loss"
    assert metrics.evaluation_metric("best", "return") == "evaluation/best/return"
    assert metrics.RLLIB_EVALUATION_RETURN == "evaluation/env_runners/episode_return_mean"
