"""LaMo's policy: a Decision Transformer whose backbone is a (LoRA-adapted) causal LM."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from ray.rllib.core.columns import Columns
from ray.rllib.core.distribution.torch.torch_distribution import (
    TorchCategorical,
    TorchDeterministic,
)
from ray.rllib.core.rl_module.rl_module import RLModule
from ray.rllib.core.rl_module.torch.torch_rl_module import TorchRLModule
from ray.rllib.utils.annotations import override
from ray.rllib.utils.numpy import convert_to_numpy
from ray.rllib.utils.torch_utils import convert_to_torch_tensor
from ray.rllib.utils.typing import StateDict
from torch import nn

from rllib_lamo.data.format import frame_layout
from rllib_lamo.language_models import (
    adapt_language_model,
    hidden_size,
    language_modeling_loss,
    load_language_model,
    trajectory_hidden_states,
)
from rllib_lamo.torch.embeddings import (
    NatureCNNEncoder,
    build_action_head,
    build_token_embedding,
)
from rllib_lamo.torch.performance import autocast_dtype
from rllib_lamo.windows import ATTENTION_MASK, RETURNS_TO_GO, TIMESTEPS

# Tokens per environment step: (return-to-go, state, action).
TOKENS_PER_STEP = 3
STATE_TOKEN = 1
# Seed of a randomly initialised LM (`lm_pretrained=False`). Not 0: the tiny test LMs' fixed
# "pre-trained" weights are drawn with seed 0, and a random init must differ from them.
DEFAULT_LM_INIT_SEED = 1


class LaMoDeterministic(TorchDeterministic):
    """`TorchDeterministic` that RLlib's connectors can build from the module's outputs.

    Ray 2.60's `TorchDeterministic` lacks `from_logits`, which `GetActions` calls whenever a
    batch carries `action_dist_inputs` but no `actions`.
    """

    @classmethod
    @override(TorchDeterministic)
    def from_logits(cls, logits: torch.Tensor, **kwargs: Any) -> LaMoDeterministic:
        return cls(loc=logits)


class LaMoTorchRLModule(TorchRLModule):
    """Decision Transformer on a pre-trained causal LM (Shi et al., ICLR 2024).

    Each step of a K-step window becomes three tokens (return-to-go, state, action), embedded
    by MLPs (or linear maps), layer-normalised, given a learned timestep embedding and run
    through the LM body; the action is predicted from each state token's hidden state.

    Only the trainable weights and the observation-normalisation buffers form the module's
    state: the frozen LM is rebuilt identically from `model_config`, so env runners and
    checkpoints never carry it.

    `model_config` keys: those of `LaMoConfig._model_config_auto_includes`, plus optional
    ``obs_mean``/``obs_std`` (dataset statistics) and ``lm_init_seed`` (seed of a randomly
    initialised LM, so that every process builds the same frozen weights).
    """

    @override(RLModule)
    def setup(self) -> None:
        config = self.model_config
        self._discrete = isinstance(self.action_space, gym.spaces.Discrete)
        self._max_ep_len = config["max_ep_len"]
        obs_dim = int(np.prod(self.observation_space.shape))
        # Stacked uint8 frames (Atari) get the conv encoder; vectors the token embedding.
        self._frames = frame_layout(self.observation_space)
        action_dim = int(self.action_space.n) if self._discrete else int(self.action_space.shape[0])

        # A private RNG stream for the LM's construction: a random init (lm_pretrained=False)
        # is the same in every learner, env runner and restored run, and the global RNG that
        # seeds the heads and LoRA is left untouched.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.get("lm_init_seed", DEFAULT_LM_INIT_SEED))
            base_model, self.tokenizer = load_language_model(
                config["language_model"],
                num_layers=config["lm_num_layers"],
                pretrained=config["lm_pretrained"],
                dropout=config["dropout"],
            )
        hidden = hidden_size(base_model)
        self.language_model = adapt_language_model(
            base_model,
            finetune=config["finetune"],
            lora_rank=config["lora_rank"],
            lora_alpha=config["lora_alpha"],
            lora_dropout=config["lora_dropout"],
            lora_target_modules=config["lora_target_modules"],
        )

        embedding = config["embedding"]
        self.return_embedding = build_token_embedding(embedding, 1, hidden)
        if self._frames is not None:
            self.state_embedding = NatureCNNEncoder(*self.observation_space.shape, hidden)
        else:
            self.state_embedding = build_token_embedding(embedding, obs_dim, hidden)
        self.action_embedding = build_token_embedding(embedding, action_dim, hidden)
        self.timestep_embedding = nn.Embedding(self._max_ep_len, hidden)
        self.embedding_norm = nn.LayerNorm(hidden)
        # GPT-2's body already drops out its input embeddings (`embd_pdrop`); dropping them
        # twice would double the rate. Bodies without that (Llama) get the dropout here.
        has_own_dropout = hasattr(base_model.config, "embd_pdrop")
        self.embedding_dropout = nn.Dropout(0.0 if has_own_dropout else config["dropout"])
        self.action_head = build_action_head(
            embedding, hidden, action_dim, continuous=not self._discrete
        )

        obs_mean = config.get("obs_mean")
        obs_std = config.get("obs_std")
        # Frames are normalised by one constant (set from the dataset: 0 and 255).
        stats_dim = 1 if self._frames is not None else obs_dim
        self.register_buffer(
            "obs_mean",
            torch.zeros(stats_dim) if obs_mean is None else torch.as_tensor(obs_mean).float(),
        )
        self.register_buffer(
            "obs_std",
            torch.ones(stats_dim) if obs_std is None else torch.as_tensor(obs_std).float(),
        )

        self._state_keys = [n for n, p in self.named_parameters() if p.requires_grad] + [
            "obs_mean",
            "obs_std",
        ]

    def lm_parameters(self) -> list[nn.Parameter]:
        """The LM's trainable weights: LoRA (+ biases it unfreezes), all of it, or none."""
        return [p for p in self.language_model.parameters() if p.requires_grad]

    def head_parameters(self) -> list[nn.Parameter]:
        """Everything trainable outside the LM: embeddings, LayerNorm, action head."""
        lm_ids = {id(p) for p in self.language_model.parameters()}
        return [p for p in self.parameters() if p.requires_grad and id(p) not in lm_ids]

    def language_loss(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Next-token cross-entropy of the shared LM on a text batch (LaMo's auxiliary loss)."""
        if self.tokenizer is None:
            raise ValueError(
                f"language_model={self.model_config['language_model']!r} has no tokenizer or "
                "trained LM head (the Decision Transformer baseline): it has no language loss."
            )
        with self._training_autocast():
            return language_modeling_loss(self.language_model, input_ids).float()

    def _training_autocast(self) -> torch.autocast:
        """Autocast per ``model_config["mixed_precision"]`` for training passes (float32 if
        unset); inference on env runners always runs in float32."""
        device = self.obs_mean.device
        dtype = autocast_dtype(self.model_config.get("mixed_precision"), device)
        return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)

    def _state_hidden(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Hidden states of the K state tokens, [B, K, H]."""
        mask = batch[ATTENTION_MASK]
        batch_size, context_len = mask.shape
        real = mask.to(self.obs_mean.dtype).unsqueeze(-1)

        if self._frames is not None:
            frames = batch[Columns.OBS].reshape(-1, *self.observation_space.shape)
            frames = (frames.to(self.obs_mean.dtype) - self.obs_mean) / self.obs_std
            states = self.state_embedding(frames * real.reshape(-1, 1, 1, 1))
            states = states.reshape(batch_size, context_len, -1)
        else:
            obs = batch[Columns.OBS].reshape(batch_size, context_len, -1)
            # Padding rows stay 0 after normalisation, as in the unnormalised data.
            states = self.state_embedding((obs - self.obs_mean) / self.obs_std * real)
        actions = batch[Columns.ACTIONS]
        if self._discrete:
            actions = nn.functional.one_hot(actions.long(), self.action_space.n).to(real.dtype)
        returns_to_go = batch[RETURNS_TO_GO].unsqueeze(-1).to(real.dtype)

        tokens = torch.stack(
            [
                self.return_embedding(returns_to_go),
                states,
                self.action_embedding(actions),
            ],
            dim=2,
        ).reshape(batch_size, TOKENS_PER_STEP * context_len, -1)
        # LaMo normalises the stacked tokens first and adds the timestep embedding after.
        timesteps = batch[TIMESTEPS].long().clamp(0, self._max_ep_len - 1)
        time_embedding = self.timestep_embedding(timesteps)
        tokens = self.embedding_norm(tokens) + time_embedding.repeat_interleave(
            TOKENS_PER_STEP, dim=1
        )
        tokens = self.embedding_dropout(tokens)

        hidden = trajectory_hidden_states(
            self.language_model,
            tokens,
            mask.repeat_interleave(TOKENS_PER_STEP, dim=1),
        )
        return hidden[:, STATE_TOKEN::TOKENS_PER_STEP]

    @override(RLModule)
    def _forward(self, batch: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        """Predicted actions (linear head: post-tanh) or logits at every position, [B, K, A]."""
        return {Columns.ACTION_DIST_INPUTS: self.action_head(self._state_hidden(batch))}

    @override(TorchRLModule)
    def _forward_train(self, batch: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        """`_forward` under the configured autocast; outputs return as float32 for the loss."""
        with self._training_autocast():
            outputs = self._forward(batch, **kwargs)
        return {key: value.float() for key, value in outputs.items()}

    @override(TorchRLModule)
    def _forward_inference(self, batch: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        """The deterministic action for each sequence's last (current) step.

        The head runs on every position, not on the last one alone: a one-row matmul takes
        another kernel than a batch does, and a row's action must not depend on how many
        episodes are evaluated beside it.
        """
        with torch.no_grad():
            outputs = self.action_head(self._state_hidden(batch))[:, -1]
        actions = outputs.argmax(dim=-1) if self._discrete else outputs
        return {Columns.ACTION_DIST_INPUTS: outputs, Columns.ACTIONS: actions}

    @override(TorchRLModule)
    def _forward_exploration(self, batch: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        """Same as inference: a Decision Transformer acts deterministically."""
        return self._forward_inference(batch, **kwargs)

    @override(TorchRLModule)
    def get_inference_action_dist_cls(self) -> type:
        return TorchCategorical if self._discrete else LaMoDeterministic

    @override(TorchRLModule)
    def get_state(
        self,
        components: str | Collection[str] | None = None,
        *,
        not_components: str | Collection[str] | None = None,
        inference_only: bool = False,
        **kwargs: Any,
    ) -> StateDict:
        """Trainable weights and normalisation buffers only (same set for inference)."""
        state_dict = self.state_dict()
        return convert_to_numpy({key: state_dict[key] for key in self._state_keys})

    @override(TorchRLModule)
    def set_state(self, state: StateDict) -> None:
        """Loads the trainable subset from a subset or a full state; the frozen LM stays."""
        missing = [key for key in self._state_keys if key not in state]
        if missing:
            raise ValueError(
                f"LaMo module state lacks {len(missing)} trainable entries, e.g. {missing[:3]}; "
                "was it saved with another language model or fine-tuning mode?"
            )
        subset = {key: state[key] for key in self._state_keys}
        self.load_state_dict(convert_to_torch_tensor(subset), strict=False)
