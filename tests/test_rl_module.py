"""LaMoTorchRLModule on the real tiny LMs (GPT-2 and Llama architectures) with real peft LoRA."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from ray.rllib.connectors.module_to_env.normalize_and_clip_actions import NormalizeAndClipActions
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.rl_module import RLModule

from rllib_lamo.lamo import LaMoConfig
from rllib_lamo.torch.lamo_torch_rl_module import LaMoDeterministic, LaMoTorchRLModule
from rllib_lamo.windows import (
    ATTENTION_MASK,
    BOX_ACTION_PAD,
    DISCRETE_ACTION_PAD,
    RETURNS_TO_GO,
    TIMESTEPS,
)

OBS_DIM, ACT_DIM, NUM_DISCRETE, CONTEXT_LEN = 5, 3, 4, 4
OBS_SPACE = gym.spaces.Box(-np.inf, np.inf, (OBS_DIM,), np.float32)
BOX = gym.spaces.Box(-1.0, 1.0, (ACT_DIM,), np.float32)
DISCRETE = gym.spaces.Discrete(NUM_DISCRETE)
OBS_MEAN = [0.5, -1.0, 2.0, 0.0, 3.0]
OBS_STD = [2.0, 0.5, 1.0, 4.0, 1.5]
HEAD_MODULES = (
    "return_embedding",
    "state_embedding",
    "action_embedding",
    "timestep_embedding",
    "embedding_norm",
    "action_head",
)


def build_module(
    action_space: gym.Space = BOX, model_config: dict | None = None, **training
) -> LaMoTorchRLModule:
    settings = {
        "language_model": "tiny-gpt2",
        "context_len": CONTEXT_LEN,
        "max_ep_len": 64,
        "lora_rank": 4,
        "lora_alpha": 8,
        "dropout": 0.0,
        "lora_dropout": 0.0,
    } | training
    config = LaMoConfig().training(**settings).rl_module(model_config=model_config or {})
    return LaMoTorchRLModule(
        observation_space=OBS_SPACE, action_space=action_space, model_config=config.model_config
    )


def trajectory(action_space: gym.Space, length: int, seed: int = 0) -> dict[str, np.ndarray]:
    """`length` real steps of one episode, starting at step 10."""
    rng = np.random.default_rng(seed)
    if isinstance(action_space, gym.spaces.Discrete):
        actions = rng.integers(0, action_space.n, size=length)
    else:
        actions = rng.uniform(-1, 1, size=(length, ACT_DIM)).astype(np.float32)
    return {
        Columns.OBS: (rng.normal(size=(length, OBS_DIM)) * 3 + 1).astype(np.float32),
        Columns.ACTIONS: actions,
        RETURNS_TO_GO: rng.uniform(0, 3, size=length).astype(np.float32),
        TIMESTEPS: np.arange(10, 10 + length),
        ATTENTION_MASK: np.ones(length, np.float32),
    }


def left_pad(steps: dict[str, np.ndarray], context_len: int) -> dict[str, np.ndarray]:
    """Left-pads one trajectory to `context_len` with the batch contract's padding values."""
    num_pad = context_len - len(steps[TIMESTEPS])
    action_pad = (
        BOX_ACTION_PAD if steps[Columns.ACTIONS].dtype == np.float32 else DISCRETE_ACTION_PAD
    )
    pad_value = {Columns.ACTIONS: action_pad}
    return {
        key: np.concatenate(
            [np.full((num_pad, *value.shape[1:]), pad_value.get(key, 0), value.dtype), value]
        )
        for key, value in steps.items()
    }


def to_batch(*windows: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {key: torch.from_numpy(np.stack([w[key] for w in windows])) for key in windows[0]}


def random_batch(action_space: gym.Space, num_real: tuple[int, ...] = (4, 2)) -> dict:
    return to_batch(
        *(
            left_pad(trajectory(action_space, n, seed=i), CONTEXT_LEN)
            for i, n in enumerate(num_real)
        )
    )


def test_box_output_shapes_and_inference_contract():
    module = build_module(model_config={"obs_mean": OBS_MEAN, "obs_std": OBS_STD})
    batch = random_batch(BOX)

    train_out = module.forward_train(batch)[Columns.ACTION_DIST_INPUTS]
    assert train_out.shape == (2, CONTEXT_LEN, ACT_DIM)
    assert torch.isfinite(train_out).all()

    inference = module.forward_inference(batch)
    assert inference[Columns.ACTIONS].shape == (2, ACT_DIM)
    torch.testing.assert_close(inference[Columns.ACTIONS], train_out[:, -1].detach())
    # RLlib's GetActions connector path, should a connector drop `actions`.
    dist_cls = module.get_inference_action_dist_cls()
    assert dist_cls is LaMoDeterministic
    sampled = dist_cls.from_logits(inference[Columns.ACTION_DIST_INPUTS]).to_deterministic()
    torch.testing.assert_close(sampled.sample(), inference[Columns.ACTIONS])
    exploration = module.forward_exploration(batch)
    torch.testing.assert_close(exploration[Columns.ACTIONS], inference[Columns.ACTIONS])


@pytest.mark.parametrize("embedding", ["mlp", "linear"])
def test_only_the_linear_head_ends_in_tanh_and_the_env_runner_clips(embedding):
    """Paper: the MLP head is Linear -> GELU -> Linear, unbounded; the linear head is DT's."""
    module = build_module(embedding=embedding)
    last = module.action_head[-1]
    assert isinstance(last, torch.nn.Tanh) == (embedding == "linear")
    with torch.no_grad():
        module.action_head[-2 if embedding == "linear" else -1].bias.fill_(5.0)
    actions = module.forward_inference(random_batch(BOX))[Columns.ACTIONS]
    assert (actions.abs().max() > 1.0) == (embedding == "mlp")
    # What reaches the env is clipped to the action space by RLlib's module-to-env pipeline.
    env = gym.make("Hopper-v5")
    pipeline = LaMoConfig().environment("Hopper-v5").build_module_to_env_connector(env=env)
    clip = next(c for c in pipeline.connectors if isinstance(c, NormalizeAndClipActions))
    batch = {Columns.ACTIONS: {("episode",): [np.array([5.0, -5.0, 0.5], np.float32)]}}
    clipped = clip(rl_module=module, batch=batch, episodes=[], explore=False)
    np.testing.assert_array_equal(
        clipped[Columns.ACTIONS_FOR_ENV][("episode",)][0], np.array([1.0, -1.0, 0.5], np.float32)
    )


def test_discrete_output_shapes_and_argmax_action():
    module = build_module(DISCRETE, embedding="linear")
    batch = random_batch(DISCRETE)

    logits = module.forward_train(batch)[Columns.ACTION_DIST_INPUTS]
    assert logits.shape == (2, CONTEXT_LEN, NUM_DISCRETE)

    inference = module.forward_inference(batch)
    assert inference[Columns.ACTIONS].dtype == torch.int64
    assert inference[Columns.ACTIONS].shape == (2,)
    torch.testing.assert_close(
        inference[Columns.ACTIONS], inference[Columns.ACTION_DIST_INPUTS].argmax(-1)
    )
    dist = module.get_inference_action_dist_cls().from_logits(inference[Columns.ACTION_DIST_INPUTS])
    torch.testing.assert_close(dist.to_deterministic().sample(), inference[Columns.ACTIONS])


@pytest.mark.parametrize("language_model", ["tiny-gpt2", "tiny-llama"])
@pytest.mark.parametrize("action_space", [BOX, DISCRETE], ids=["box", "discrete"])
def test_left_padding_does_not_change_predictions(language_model, action_space):
    module = build_module(
        action_space,
        model_config={"obs_mean": OBS_MEAN, "obs_std": OBS_STD},
        language_model=language_model,
    )
    steps = trajectory(action_space, 3)
    unpadded = to_batch(steps)
    padded = to_batch(left_pad(steps, 6))

    torch.testing.assert_close(
        module.forward_inference(padded)[Columns.ACTION_DIST_INPUTS],
        module.forward_inference(unpadded)[Columns.ACTION_DIST_INPUTS],
        atol=1e-5,
        rtol=1e-4,
    )
    padded_train = module.forward_train(padded)[Columns.ACTION_DIST_INPUTS]
    assert torch.isfinite(padded_train).all()
    torch.testing.assert_close(
        padded_train[:, 3:],
        module.forward_train(unpadded)[Columns.ACTION_DIST_INPUTS],
        atol=1e-5,
        rtol=1e-4,
    )


def test_observation_normalisation_uses_the_buffers():
    normalising = build_module(model_config={"obs_mean": OBS_MEAN, "obs_std": OBS_STD})
    identity = build_module()
    identity.set_state(normalising.get_state() | {"obs_mean": np.zeros(5), "obs_std": np.ones(5)})
    raw = random_batch(BOX)
    real = raw[ATTENTION_MASK].unsqueeze(-1)
    prenormalised = raw | {
        Columns.OBS: (raw[Columns.OBS] - torch.tensor(OBS_MEAN)) / torch.tensor(OBS_STD) * real
    }

    torch.testing.assert_close(
        normalising.forward_train(raw)[Columns.ACTION_DIST_INPUTS],
        identity.forward_train(prenormalised)[Columns.ACTION_DIST_INPUTS],
    )


@pytest.mark.parametrize(
    ("finetune", "lm_pretrained"),
    [("lora", True), ("full", True), ("frozen", True), ("lora", False), ("full", False)],
)
def test_trainable_parameters_per_ablation(finetune, lm_pretrained):
    module = build_module(finetune=finetune, lm_pretrained=lm_pretrained)
    lm_trainable = {name for name, p in module.language_model.named_parameters() if p.requires_grad}
    lm_all = {name for name, _ in module.language_model.named_parameters()}

    if finetune == "lora":
        assert lm_trainable and all(
            "lora_" in n or (".c_attn." in n and n.endswith("_proj.base_layer.bias"))
            for n in lm_trainable
        )
        assert any("lora_A" in n for n in lm_trainable)
    elif finetune == "full":
        assert lm_trainable == lm_all
    else:
        assert not lm_trainable
    for name in HEAD_MODULES:
        assert all(p.requires_grad for p in getattr(module, name).parameters())

    lm_ids = {id(p) for p in module.lm_parameters()}
    head_ids = {id(p) for p in module.head_parameters()}
    trainable_ids = {id(p) for p in module.parameters() if p.requires_grad}
    assert len(lm_ids) == len(lm_trainable)
    assert not lm_ids & head_ids and lm_ids | head_ids == trainable_ids


@pytest.mark.parametrize(
    ("finetune", "lm_pretrained"), [("lora", True), ("lora", False), ("frozen", True)]
)
def test_state_holds_only_trainable_weights_and_round_trips(finetune, lm_pretrained):
    torch.manual_seed(0)
    source = build_module(
        model_config={"obs_mean": OBS_MEAN, "obs_std": OBS_STD},
        finetune=finetune,
        lm_pretrained=lm_pretrained,
    )
    with torch.no_grad():  # LoRA's B starts at 0: make the adapters matter.
        for parameter in source.lm_parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    state = source.get_state()

    trainable = {n for n, p in source.named_parameters() if p.requires_grad}
    assert set(state) == trainable | {"obs_mean", "obs_std"}
    assert set(source.get_state(inference_only=True)) == set(state)
    assert all(isinstance(v, np.ndarray) for v in state.values())

    torch.manual_seed(1)  # different heads and LoRA init in the fresh module
    target = build_module(finetune=finetune, lm_pretrained=lm_pretrained)
    batch = random_batch(BOX)
    before = target.forward_inference(batch)[Columns.ACTIONS]
    target.set_state(state)
    expected = source.forward_inference(batch)[Columns.ACTIONS]
    assert not torch.allclose(before, expected)
    torch.testing.assert_close(target.forward_inference(batch)[Columns.ACTIONS], expected)


def test_set_state_accepts_a_full_state_and_rejects_a_foreign_one():
    source = build_module()
    target = build_module()
    full_state = {k: v.numpy() for k, v in source.state_dict().items()}
    target.set_state(full_state)
    batch = random_batch(BOX)
    torch.testing.assert_close(
        target.forward_inference(batch)[Columns.ACTIONS],
        source.forward_inference(batch)[Columns.ACTIONS],
    )
    with pytest.raises(ValueError, match="lacks"):
        target.set_state(build_module(finetune="frozen").get_state())


def test_checkpoint_restores_module_without_the_frozen_lm(tmp_path):
    module = build_module(model_config={"obs_mean": OBS_MEAN, "obs_std": OBS_STD})
    module.save_to_path(tmp_path)
    restored = RLModule.from_checkpoint(tmp_path)
    batch = random_batch(BOX)
    torch.testing.assert_close(
        restored.forward_inference(batch)[Columns.ACTIONS],
        module.forward_inference(batch)[Columns.ACTIONS],
    )
    checkpoint_bytes = sum(f.stat().st_size for f in tmp_path.rglob("*") if f.is_file())
    lm_bytes = sum(p.numel() * 4 for p in module.language_model.parameters())
    assert checkpoint_bytes < lm_bytes / 2


def test_random_init_is_reproducible_and_separate_from_the_pretrained_weights():
    def frozen_weights(module: LaMoTorchRLModule) -> dict[str, torch.Tensor]:
        return {n: p for n, p in module.language_model.named_parameters() if not p.requires_grad}

    torch.manual_seed(0)
    first = frozen_weights(build_module(lm_pretrained=False))
    torch.manual_seed(1)
    second = frozen_weights(build_module(lm_pretrained=False))
    other_seed = frozen_weights(build_module(lm_pretrained=False, model_config={"lm_init_seed": 7}))
    pretrained = frozen_weights(build_module())

    torch.testing.assert_close(first, second)
    name = next(n for n in first if n.endswith("c_attn.q_proj.base_layer.weight"))
    assert not torch.equal(first[name], other_seed[name])
    assert not torch.equal(first[name], pretrained[name])


def test_language_loss_uses_the_shared_lm():
    module = build_module()
    tokens = torch.randint(0, len(module.tokenizer), (2, 16))
    loss = module.language_loss(tokens)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in module.lm_parameters())
