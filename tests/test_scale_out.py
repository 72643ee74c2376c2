"""Scaling out: several DDP learners train like one; evaluation runs parallel to training.

LaMo's driver streams windows and hands `learner_group.update` one global batch per gradient
step (learner-major, see `LaMo.training_step`); RLlib's LearnerGroup shards it contiguously, so
each learner trains on its own slice of every global batch. The learner and offline-data
subclasses here only record what each side saw; training itself is LaMo's own.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from ray import cloudpickle
from ray.rllib.core import DEFAULT_MODULE_ID
from ray.rllib.core.columns import Columns
from ray.rllib.policy.sample_batch import MultiAgentBatch
from ray.rllib.utils.typing import ModuleID, TensorType

from rllib_lamo.lamo import LaMoConfig
from rllib_lamo.offline_data import LaMoOfflineData
from rllib_lamo.torch.lamo_torch_learner import LaMoTorchLearner
from rllib_lamo.windows import RETURNS_TO_GO, TIMESTEPS

HOPPER = Path(__file__).resolve().parents[1] / "datasets" / "hopper-medium-v5"
GLOBAL_BATCH = 8
STEPS_PER_ITERATION = 3
ITERATIONS = 2

# 2 learners against 1: both start from the same weights and see the same global batches, and
# with K=1 (no padded steps) the mean of two half-batch mean losses is the full-batch mean, so
# DDP's averaged gradient is the full-batch gradient. What is left is float summation order:
# measured here, per-step losses agree to 6e-8 relative and weights to 1.2e-7 after 6 AdamW
# steps. The bounds leave ~100x room and still catch a wrong shard or a missing all-reduce:
# an update from a half-batch gradient alone moves weights elsewhere by up to lr = 1e-3.
LOSS_RTOL = 1e-5
WEIGHT_ATOL = 1e-5


def window_ids(columns: Mapping[str, Any]) -> list[str]:
    """One id per window, from its content, equal for a window on the driver and a learner."""
    parts = [np.asarray(columns[name]) for name in (Columns.OBS, RETURNS_TO_GO, TIMESTEPS)]
    return [
        hashlib.blake2b(b"".join(p[i].tobytes() for p in parts), digest_size=8).hexdigest()
        for i in range(len(parts[0]))
    ]


class RecordingOfflineData(LaMoOfflineData):
    """LaMo's offline data, also keeping the ids of every global batch it hands the driver."""

    def __init__(self, config: Any):
        super().__init__(config)
        self.served: list[list[str]] = []

    def sample(self, num_samples: int, **kwargs: Any) -> MultiAgentBatch:
        batch = super().sample(num_samples, **kwargs)
        self.served.append(window_ids(batch.policy_batches[DEFAULT_MODULE_ID]))
        return batch


class RecordingLearner(LaMoTorchLearner):
    """LaMo's learner, also keeping the windows and the loss of each of its gradient steps."""

    def build(self) -> None:
        super().build()
        self.steps: list[tuple[list[str], float]] = []

    def compute_loss_for_module(
        self,
        *,
        module_id: ModuleID,
        config: LaMoConfig,
        batch: dict[str, Any],
        fwd_out: dict[str, TensorType],
    ) -> TensorType:
        loss = super().compute_loss_for_module(
            module_id=module_id, config=config, batch=batch, fwd_out=fwd_out
        )
        self.steps.append((window_ids(batch), float(loss.detach())))
        return loss


# Learner actors rebuild the recording learner from the config: ship it by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def scale_out_config(num_learners: int, **training: Any) -> LaMoConfig:
    """A few cheap gradient steps on the shipped Hopper data, `GLOBAL_BATCH` windows each."""
    settings = {
        "language_model": "tiny-gpt2",
        "train_batch_size_per_learner": GLOBAL_BATCH // num_learners,
        "context_len": 5,
        "text_block_len": 16,
        "warmup_steps": 2,
        "data_ratio": 0.05,
        "lr": 1e-3,
        "lm_lr": 1e-3,
    } | training
    return (
        LaMoConfig()
        .offline_data(
            input_=str(HOPPER),
            dataset_num_iters_per_learner=STEPS_PER_ITERATION,
            offline_data_class=RecordingOfflineData,
        )
        .training(**settings)
        .learners(num_learners=num_learners, learner_class=RecordingLearner)
        .debugging(seed=7)
    )


@dataclass
class LearnerRecord:
    index: int
    steps: list[tuple[list[str], float]]
    weights: dict[str, np.ndarray]
    next_text: list[list[int]] | None


@dataclass
class Run:
    results: list[dict[str, Any]]
    served: list[list[str]]
    learners: list[LearnerRecord]


def run(config: LaMoConfig, iterations: int = ITERATIONS) -> Run:
    """Trains, then collects what the driver served and what every learner trained on."""

    def record(learner: RecordingLearner) -> LearnerRecord:
        corpus = learner._text_corpora.get(DEFAULT_MODULE_ID)
        return LearnerRecord(
            index=learner._learner_index,
            steps=learner.steps,
            weights=learner.module[DEFAULT_MODULE_ID].get_state(),
            next_text=corpus.next_batch().tolist() if corpus else None,
        )

    algo = config.build_algo()
    try:
        results = [algo.train() for _ in range(iterations)]
        learners = [r.get() for r in algo.learner_group.foreach_learner(record)]
        return Run(
            results=results,
            served=algo.offline_data.served,
            learners=sorted(learners, key=lambda learner: learner.index),
        )
    finally:
        algo.stop()


@pytest.fixture(scope="module")
def one_and_two_learners(ray_cluster) -> dict[int, Run]:
    """The same run (seed, global batch) on 1 and on 2 learners, deterministic: no dropout
    and no language loss (whose text batches differ per learner by design)."""
    deterministic = {"context_len": 1, "dropout": 0.0, "lora_dropout": 0.0}
    return {n: run(scale_out_config(n, language_loss_coeff=0.0, **deterministic)) for n in (1, 2)}


def test_two_learners_follow_the_single_learner_loss_curve(one_and_two_learners):
    one, two = one_and_two_learners[1], one_and_two_learners[2]
    (single,) = one.learners
    first, second = two.learners
    num_steps = ITERATIONS * STEPS_PER_ITERATION
    assert len(single.steps) == len(first.steps) == len(second.steps) == num_steps

    single_losses = [loss for _, loss in single.steps]
    ddp_losses = [(a + b) / 2 for (_, a), (_, b) in zip(first.steps, second.steps, strict=True)]
    assert ddp_losses == pytest.approx(single_losses, rel=LOSS_RTOL)

    # The curves users see: the per-iteration action loss reported by `train()`.
    def curve(r: Run) -> list[float]:
        return [x["learners"][DEFAULT_MODULE_ID]["action_loss"] for x in r.results]

    assert curve(two) == pytest.approx(curve(one), rel=LOSS_RTOL)

    # DDP keeps the replicas identical, and they end where the single learner does.
    for name, value in first.weights.items():
        np.testing.assert_array_equal(value, second.weights[name], err_msg=name)
        np.testing.assert_allclose(value, single.weights[name], rtol=0, atol=WEIGHT_ATOL)


def test_each_learner_trains_on_its_own_slice_of_every_global_batch(one_and_two_learners):
    one, two = one_and_two_learners[1], one_and_two_learners[2]
    num_steps = ITERATIONS * STEPS_PER_ITERATION
    # Same seed, same global batches, whatever the number of learners.
    assert len(two.served) == num_steps
    assert one.served == two.served
    assert all(len(batch) == GLOBAL_BATCH for batch in two.served)

    half = GLOBAL_BATCH // 2
    (single,) = one.learners
    first, second = two.learners
    for step, batch in enumerate(two.served):
        assert single.steps[step][0] == batch
        assert first.steps[step][0] == batch[:half]
        assert second.steps[step][0] == batch[half:]
        assert first.steps[step][0] != second.steps[step][0]

    sampled = [r["num_env_steps_sampled_lifetime"] for r in two.results]
    assert sampled == [GLOBAL_BATCH * STEPS_PER_ITERATION * (i + 1) for i in range(ITERATIONS)]


def test_language_loss_under_ddp_with_evaluation_parallel_to_training(ray_cluster):
    """Each learner draws its own text; the action and language gradients are all-reduced
    together, so the replicas stay identical although their text batches differ.

    The same run evaluates parallel to training: a fixed number of episodes per target runs
    on the evaluation runner while the iteration trains (RLlib needs
    `evaluation_duration="auto"` only without a custom evaluation function).
    """
    config = (
        scale_out_config(2, language_loss_coeff=0.1, target_returns=[3600.0, 1800.0])
        .environment("Hopper-v5")
        .evaluation(
            evaluation_interval=1,
            evaluation_duration=1,
            evaluation_num_env_runners=1,
            evaluation_parallel_to_training=True,
        )
    )
    result = run(config)
    first, second = result.learners
    assert first.next_text != second.next_text
    for name, value in first.weights.items():
        np.testing.assert_array_equal(value, second.weights[name], err_msg=name)

    for iteration in result.results:
        learner_metrics = iteration["learners"][DEFAULT_MODULE_ID]
        assert np.isfinite(learner_metrics["action_loss"])
        assert (
            np.isfinite(learner_metrics["language_loss"]) and learner_metrics["language_loss"] > 0
        )
        evaluation = iteration["evaluation"]
        for key in ("target_3600", "target_1800"):
            assert evaluation[key]["num_episodes"] == 1
        assert evaluation["best"]["target_return"] in (3600.0, 1800.0)


def test_full_fine_tuning_without_text_trains_under_ddp(ray_cluster):
    """The DT ablation leaves the LM's token embeddings and head without gradients."""
    config = scale_out_config(2, finetune="full", language_loss_coeff=0.0, lm_pretrained=False)
    result = run(config, iterations=1).results[0]
    assert np.isfinite(result["learners"]["default_policy"]["action_loss"])
