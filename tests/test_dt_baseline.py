"""The paper's Decision Transformer baseline as one named choice: ``language_model="dt"``."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from ray.rllib.core.columns import Columns

from rllib_lamo.lamo import LaMoConfig
from rllib_lamo.language_models import DT_BASELINE, load_language_model
from rllib_lamo.torch.lamo_torch_rl_module import LaMoTorchRLModule
from rllib_lamo.windows import ATTENTION_MASK, RETURNS_TO_GO, TIMESTEPS

OBS_SPACE = gym.spaces.Box(-np.inf, np.inf, (11,), np.float32)
ACTION_SPACE = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)


def _config(**training) -> LaMoConfig:
    return (
        LaMoConfig()
        .environment(observation_space=OBS_SPACE, action_space=ACTION_SPACE)
        .training(**training)
        .offline_data(input_="unused", dataset_num_iters_per_learner=1)
    )


def test_dt_is_the_original_decision_transformer_random_and_without_tokenizer():
    model, tokenizer = load_language_model(DT_BASELINE)
    config = model.config
    assert tokenizer is None
    assert (config.n_layer, config.n_embd, config.n_head, config.n_inner) == (3, 128, 1, 512)
    assert config.activation_function == "relu"
    torch.manual_seed(3)
    again, _ = load_language_model(DT_BASELINE, pretrained=True)  # random by definition
    first = model.transformer.h[0].attn.c_attn.weight
    assert not torch.equal(first, again.transformer.h[0].attn.c_attn.weight)


def test_one_line_choice_sets_the_dt_recipe_unless_told_otherwise():
    config = _config(language_model=DT_BASELINE)
    assert (config.finetune, config.embedding, config.language_loss_coeff) == ("full", "linear", 0)
    assert _config(language_model=DT_BASELINE, embedding="mlp").embedding == "mlp"
    # The LaMo default stays as it was for every other LM.
    lamo = _config(language_model="tiny-gpt2")
    assert (lamo.finetune, lamo.embedding, lamo.language_loss_coeff) == ("lora", "mlp", 0.1)


@pytest.mark.parametrize(
    ("training", "message"),
    [
        ({"language_loss_coeff": 0.1}, "cannot have a language loss"),
        ({"finetune": "lora"}, "must be 'full'"),
    ],
)
def test_dt_refuses_a_language_loss_and_lora(training, message):
    config = _config(language_model=DT_BASELINE).training(**training)
    with pytest.raises(ValueError, match=message):
        config.validate()


def test_dt_module_trains_everything_with_a_tanh_linear_head_and_seeds_its_init():
    def build(seed: int) -> LaMoTorchRLModule:
        config = _config(language_model=DT_BASELINE, context_len=4).debugging(seed=seed)
        return LaMoTorchRLModule(
            observation_space=OBS_SPACE, action_space=ACTION_SPACE, model_config=config.model_config
        )

    module = build(seed=0)
    assert all(p.requires_grad for p in module.language_model.parameters())
    assert isinstance(module.action_head[-1], torch.nn.Tanh)
    assert isinstance(module.state_embedding, torch.nn.Linear)
    trainable_lm = sum(p.numel() for p in module.lm_parameters())
    assert trainable_lm == sum(p.numel() for p in module.language_model.parameters())
    # Each training seed draws its own init; the same seed rebuilds the same one.
    first_block = "language_model.transformer.h.0.attn.c_attn.weight"
    same, other = build(seed=0).state_dict(), build(seed=1).state_dict()
    assert torch.equal(module.state_dict()[first_block], same[first_block])
    assert not torch.equal(module.state_dict()[first_block], other[first_block])

    batch = {
        Columns.OBS: torch.randn(2, 4, 11),
        Columns.ACTIONS: torch.rand(2, 4, 3) * 2 - 1,
        RETURNS_TO_GO: torch.rand(2, 4),
        TIMESTEPS: torch.arange(4).repeat(2, 1),
        ATTENTION_MASK: torch.ones(2, 4),
    }
    actions = module.forward_train(batch)[Columns.ACTION_DIST_INPUTS]
    assert actions.shape == (2, 4, 3) and actions.abs().max() <= 1
    with pytest.raises(ValueError, match="no language loss"):
        module.language_loss(torch.zeros(1, 4, dtype=torch.long))
