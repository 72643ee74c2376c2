"""LaMoTorchLearner built standalone from a LaMoConfig (no Ray cluster), on the tiny GPT-2."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from ray.rllib.core.columns import Columns
from ray.rllib.policy.sample_batch import MultiAgentBatch, SampleBatch
from ray.rllib.utils.torch_utils import convert_to_torch_tensor

from rllib_lamo.lamo import LaMoConfig
from rllib_lamo.lamo_learner import (
    ACTION_LOSS_KEY,
    GRADIENT_STEPS_KEY,
    LANGUAGE_LOSS_KEY,
    LR_HEADS_KEY,
    LR_LM_KEY,
    TOTAL_LOSS_KEY,
    WARMUP_FACTOR_KEY,
)
from rllib_lamo.windows import (
    ATTENTION_MASK,
    BOX_ACTION_PAD,
    DISCRETE_ACTION_PAD,
    RETURNS_TO_GO,
    TIMESTEPS,
)

MODULE_ID = "default_policy"
OBS_DIM, ACT_DIM, NUM_DISCRETE, CONTEXT_LEN, BATCH_SIZE = 5, 3, 4, 4, 8
OBS_SPACE = gym.spaces.Box(-np.inf, np.inf, (OBS_DIM,), np.float32)
BOX = gym.spaces.Box(-1.0, 1.0, (ACT_DIM,), np.float32)
DISCRETE = gym.spaces.Discrete(NUM_DISCRETE)
TEXT = "A small corpus of plain English text, repeated so that it fills some blocks. " * 40


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT)
    return str(path)


def build_learner(text_file: str, action_space: gym.Space = BOX, **training):
    settings = {
        "language_model": "tiny-gpt2",
        "context_len": CONTEXT_LEN,
        "max_ep_len": 32,
        "lora_rank": 4,
        "lora_alpha": 8,
        "dropout": 0.0,
        "lora_dropout": 0.0,
        "lr": 1e-3,
        "lm_lr": 5e-4,
        "warmup_steps": 1,
        "language_loss_coeff": 0.1,
        "text_corpus": text_file,
        "text_block_len": 16,
        "text_batch_size": 2,
    } | training
    config = LaMoConfig().training(**settings).debugging(seed=0)
    return config.build_learner(spaces={MODULE_ID: (OBS_SPACE, action_space)})


def window_batch(action_space: gym.Space = BOX, seed: int = 0) -> MultiAgentBatch:
    """Windows whose actions are a fixed function of the observation; two are left-padded."""
    rng = np.random.default_rng(seed)
    obs = rng.normal(size=(BATCH_SIZE, CONTEXT_LEN, OBS_DIM)).astype(np.float32)
    weights = np.random.default_rng(123).normal(size=(OBS_DIM, ACT_DIM)).astype(np.float32)
    if isinstance(action_space, gym.spaces.Discrete):
        actions = (obs[..., :NUM_DISCRETE]).argmax(-1)
    else:
        actions = np.tanh(obs @ weights).astype(np.float32)
    mask = np.ones((BATCH_SIZE, CONTEXT_LEN), np.float32)
    mask[0, :2] = mask[1, :1] = 0
    padding = mask == 0
    obs[padding] = 0
    actions[padding] = BOX_ACTION_PAD if actions.dtype == np.float32 else DISCRETE_ACTION_PAD
    columns = {
        Columns.OBS: obs,
        Columns.ACTIONS: actions,
        RETURNS_TO_GO: (rng.uniform(0, 2, (BATCH_SIZE, CONTEXT_LEN)) * mask).astype(np.float32),
        TIMESTEPS: (np.arange(CONTEXT_LEN) * mask).astype(np.int64),
        ATTENTION_MASK: mask,
    }
    return MultiAgentBatch({MODULE_ID: SampleBatch(columns)}, env_steps=BATCH_SIZE)


def module_results(learner, batch: MultiAgentBatch) -> dict[str, float]:
    results = learner.update(batch=batch)[MODULE_ID]
    return {key: stats.peek() for key, stats in results.items()}


def test_action_loss_decreases_with_the_language_loss_in_the_same_step(text_file):
    learner = build_learner(text_file)
    batch = window_batch()
    history = [module_results(learner, batch) for _ in range(8)]

    assert history[-1][ACTION_LOSS_KEY] < 0.8 * history[0][ACTION_LOSS_KEY]
    for results in history:
        assert math.isfinite(results[LANGUAGE_LOSS_KEY])
        assert results[TOTAL_LOSS_KEY] == pytest.approx(
            results[ACTION_LOSS_KEY] + 0.1 * results[LANGUAGE_LOSS_KEY], rel=1e-5
        )
    assert history[-1][GRADIENT_STEPS_KEY] == 8


def test_discrete_actions_train_with_cross_entropy(text_file):
    learner = build_learner(text_file, DISCRETE, language_loss_coeff=0.0, embedding="linear")
    batch = window_batch(DISCRETE)
    losses = [module_results(learner, batch)[ACTION_LOSS_KEY] for _ in range(6)]
    assert losses[-1] < losses[0]
    assert losses[0] == pytest.approx(math.log(NUM_DISCRETE), rel=0.3)


@pytest.mark.parametrize(
    ("finetune", "coeff", "optimizers", "has_language_loss"),
    [
        ("lora", 0.1, {"lm", "heads"}, True),
        ("lora", 0.0, {"lm", "heads"}, False),
        ("full", 0.0, {"lm", "heads"}, False),
        ("frozen", 0.1, {"heads"}, False),
    ],
)
def test_optimizers_and_language_loss_per_setting(
    text_file, finetune, coeff, optimizers, has_language_loss
):
    learner = build_learner(text_file, finetune=finetune, language_loss_coeff=coeff)
    module = learner.module[MODULE_ID].unwrapped()

    registered = dict(learner.get_optimizers_for_module(MODULE_ID))
    assert set(registered) == optimizers
    expected_params = {"lm": module.lm_parameters(), "heads": module.head_parameters()}
    for name, optimizer in registered.items():
        params = [p for group in optimizer.param_groups for p in group["params"]]
        assert {id(p) for p in params} == {id(p) for p in expected_params[name]}
        assert optimizer.defaults["weight_decay"] == 1e-5 and optimizer.defaults["eps"] == 1e-6

    results = module_results(learner, window_batch())
    assert (LANGUAGE_LOSS_KEY in results) == has_language_loss
    assert math.isfinite(results[ACTION_LOSS_KEY])


def test_linear_warmup_per_gradient_step_with_two_learning_rates(text_file):
    learner = build_learner(text_file, warmup_steps=4, language_loss_coeff=0.0)
    batch = window_batch()
    lm_optimizer = learner.get_optimizer(MODULE_ID, "lm")
    for step in range(6):
        results = module_results(learner, batch)
        factor = min(1.0, (step + 1) / 4)
        assert results[WARMUP_FACTOR_KEY] == pytest.approx(factor)
        assert results[LR_HEADS_KEY] == pytest.approx(1e-3 * factor)
        assert results[LR_LM_KEY] == pytest.approx(5e-4 * factor)
        assert lm_optimizer.param_groups[0]["lr"] == pytest.approx(5e-4 * factor)


def test_gradient_clipping_uses_one_norm_across_both_optimizers(text_file):
    learner = build_learner(text_file, grad_clip=1e-3)
    batch = convert_to_torch_tensor(window_batch().policy_batches)
    losses = learner.compute_losses(fwd_out=learner.module.forward_train(batch), batch=batch)
    gradients = learner.compute_gradients(losses)
    raw = {ref: g.clone() for ref, g in gradients.items()}
    clipped = learner.postprocess_gradients(gradients)

    raw_norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in raw.values()]))
    clipped_norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in clipped.values()]))
    assert raw_norm > 1e-3
    assert clipped_norm == pytest.approx(1e-3, rel=1e-3)
    # One coefficient for every gradient, LoRA and heads alike.
    coefficient = 1e-3 / raw_norm
    for ref, gradient in raw.items():
        torch.testing.assert_close(clipped[ref], gradient * coefficient, rtol=1e-4, atol=1e-12)


def test_learner_state_resumes_exactly(text_file):
    batches = [window_batch(seed=seed) for seed in range(3)]
    original = build_learner(text_file, warmup_steps=10)
    for batch in batches[:2]:
        original.update(batch=batch)
    state = original.get_state()

    resumed = build_learner(text_file, warmup_steps=10)
    resumed.set_state(state)
    assert resumed.gradient_steps == 2

    expected = module_results(original, batches[2])
    actual = module_results(resumed, batches[2])
    for key in (ACTION_LOSS_KEY, LANGUAGE_LOSS_KEY, LR_HEADS_KEY, GRADIENT_STEPS_KEY):
        assert actual[key] == expected[key], key
    module_state = resumed.module[MODULE_ID].get_state()
    for key, value in original.module[MODULE_ID].get_state().items():
        np.testing.assert_array_equal(module_state[key], value)
