"""Torch Learner of LaMo: action loss + lambda * language loss in one backward pass."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import gymnasium as gym
import torch
from ray.rllib.core.columns import Columns
from ray.rllib.core.learner.learner import Learner
from ray.rllib.core.learner.torch.torch_learner import TorchLearner
from ray.rllib.utils.annotations import override
from ray.rllib.utils.torch_utils import clip_gradients, compute_global_norm
from ray.rllib.utils.typing import ModuleID, ParamDict, TensorType

from rllib_lamo.lamo_learner import (
    ACTION_LOSS_KEY,
    GRADIENT_STEPS_KEY,
    GRADIENTS_GLOBAL_NORM_KEY,
    HEADS_OPTIMIZER,
    LANGUAGE_LOSS_KEY,
    LM_OPTIMIZER,
    WARMUP_FACTOR_KEY,
    LaMoLearner,
)
from rllib_lamo.windows import ATTENTION_MASK

if TYPE_CHECKING:
    # Type only: `LaMoConfig` imports this learner (its default learner class).
    from rllib_lamo.lamo import LaMoConfig


class LaMoTorchLearner(LaMoLearner, TorchLearner):
    """Trains `LaMoTorchRLModule` with the paper's loss and optimisation recipe.

    - Two AdamW optimizers per module: ``lm`` (the LM's trainable weights, `lm_lr`) and
      ``heads`` (embeddings, LayerNorm, action head, `lr`); RLlib sets one learning rate per
      registered optimizer, so different rates need two.
    - Linear warmup per gradient step, applied here because RLlib's schedules tick once per
      `update()`; the step count is part of the Learner state.
    - Gradient clipping by one global norm over both optimizers' parameters, as in the paper
      (RLlib's default clips each optimizer's gradients separately).
    """

    @override(TorchLearner)
    def build(self) -> None:
        self._base_lrs: dict[torch.optim.Optimizer, float] = {}
        super().build()

    @override(TorchLearner)
    def configure_optimizers_for_module(
        self, module_id: ModuleID, config: LaMoConfig | None = None
    ) -> None:
        module = self.module[module_id].unwrapped()
        groups = (
            (LM_OPTIMIZER, module.lm_parameters(), config.lm_lr),
            (HEADS_OPTIMIZER, module.head_parameters(), config.lr),
        )
        for optimizer_name, params, lr in groups:
            if not isinstance(lr, int | float):
                raise ValueError(
                    "LaMo needs constant learning rates `lr` and `lm_lr` (the warmup is built "
                    f"in via `warmup_steps`), got {lr!r}."
                )
            if not params:  # finetune="frozen": the LM has nothing to train.
                continue
            optimizer = torch.optim.AdamW(
                params, lr=lr, weight_decay=config.weight_decay, eps=config.adam_eps
            )
            # No `lr_or_lr_schedule`: RLlib must not overwrite the per-step warmup rate.
            self.register_optimizer(
                module_id=module_id,
                optimizer_name=optimizer_name,
                optimizer=optimizer,
                params=params,
            )
            self._base_lrs[optimizer] = float(lr)

    @override(Learner)
    def compute_loss_for_module(
        self,
        *,
        module_id: ModuleID,
        config: LaMoConfig,
        batch: dict[str, Any],
        fwd_out: dict[str, TensorType],
    ) -> TensorType:
        module = self.module[module_id].unwrapped()
        predictions = fwd_out[Columns.ACTION_DIST_INPUTS]
        targets = batch[Columns.ACTIONS]
        real = batch[ATTENTION_MASK] > 0
        # Index the real steps rather than multiplying by the mask: padding rows never
        # enter the loss, whatever the network computed for them.
        if isinstance(module.action_space, gym.spaces.Discrete):
            action_loss = torch.nn.functional.cross_entropy(predictions[real], targets[real].long())
        else:
            action_loss = torch.nn.functional.mse_loss(predictions[real], targets[real])
        self.metrics.log_value((module_id, ACTION_LOSS_KEY), action_loss.detach(), reduce="mean")

        if module_id not in self._text_corpora:
            return action_loss
        # Same graph, same backward: DDP averages the gradients of both terms together.
        text = self._text_corpora[module_id].next_batch().to(self._device)
        language_loss = module.language_loss(text)
        self.metrics.log_value(
            (module_id, LANGUAGE_LOSS_KEY), language_loss.detach(), reduce="mean"
        )
        return action_loss + config.language_loss_coeff * language_loss

    @override(Learner)
    def postprocess_gradients_for_module(
        self,
        *,
        module_id: ModuleID,
        config: LaMoConfig | None = None,
        module_gradients_dict: ParamDict,
    ) -> ParamDict:
        """Clips all of the module's gradients together, across both optimizers.

        RLlib's default clips per optimizer, which would give the LoRA weights and the heads
        each their own 0.25 budget; the paper clips the model's global norm once. Parameters
        without a gradient in this step (e.g. token embeddings under full fine-tuning without
        the language loss) are dropped, since the optimizers skip them anyway. The logged norm
        is the one before clipping.
        """
        gradients = {ref: g for ref, g in module_gradients_dict.items() if g is not None}
        global_norm = compute_global_norm(list(gradients.values()))
        self.metrics.log_value((module_id, GRADIENTS_GLOBAL_NORM_KEY), global_norm, reduce="mean")
        clip_gradients(gradients, grad_clip=config.grad_clip, grad_clip_by=config.grad_clip_by)
        return gradients

    @override(TorchLearner)
    def apply_gradients(self, gradients_dict: ParamDict) -> None:
        """Sets the warmed-up learning rates, steps the optimizers, counts the step."""
        factor = self.warmup_factor()
        for optimizer, base_lr in self._base_lrs.items():
            self._set_optimizer_lr(optimizer, base_lr * factor)
        super().apply_gradients(gradients_dict)
        self._gradient_steps += 1

        for module_id, optimizer_names in self._module_optimizers.items():
            for full_name in optimizer_names:
                lr = self._get_optimizer_lr(self._named_optimizers[full_name])
                short_name = full_name[len(module_id) + 1 :]  # "lm" or "heads"
                self.metrics.log_value((module_id, f"lr_{short_name}"), lr, window=1)
            self.metrics.log_value((module_id, WARMUP_FACTOR_KEY), factor, window=1)
            self.metrics.log_value((module_id, GRADIENT_STEPS_KEY), self._gradient_steps, window=1)
