"""Torch Learner of LaMo: action loss + lambda * language loss in one backward pass."""

from __future__ import annotations

import os
import time
import warnings
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import numpy as np
import ray
import torch
from ray.rllib.core.columns import Columns
from ray.rllib.core.learner.learner import Learner
from ray.rllib.core.learner.torch.torch_learner import TorchLearner
from ray.rllib.policy.sample_batch import MultiAgentBatch
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
from rllib_lamo.language_models import language_model_body
from rllib_lamo.torch.lamo_torch_rl_module import TOKENS_PER_STEP
from rllib_lamo.torch.performance import (
    ACHIEVED_TFLOPS_KEY,
    GRADIENT_STEPS_PER_S_KEY,
    MFU_KEY,
    TOKENS_PER_S_KEY,
    autocast_dtype,
    forward_flops,
    matmul_weight_count,
    peak_flops,
    training_flops,
)
from rllib_lamo.windows import ATTENTION_MASK, FRAME_INDEX

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
    - Speed: torch uses as many threads as CPUs Ray granted this process; ``mixed_precision``
      autocasts the forward passes (fp16 with one gradient scaler for both optimizers); each
      step's throughput is logged under the keys of `rllib_lamo.torch.performance`.
    """

    @override(TorchLearner)
    def build(self) -> None:
        self._base_lrs: dict[torch.optim.Optimizer, float] = {}
        use_granted_cpus()
        super().build()
        fp16 = autocast_dtype(self.config.mixed_precision, self._device) == torch.float16
        self._grad_scaler = torch.amp.GradScaler(self._device.type) if fp16 else None
        self._flops_per_step: dict[ModuleID, int] = {}  # filled on each module's first step
        self._peak_flops = peak_flops(self._device, self.config.mixed_precision is not None)
        self._frames: torch.Tensor | None = None  # an image dataset's frames (`set_frames`)

    def set_frames(self, frames: ray.ObjectRef | np.ndarray) -> None:
        """Takes the dataset's frames [N, H, W] uint8, that image windows' `FRAME_INDEX` points to.

        Sent once per run (`LaMo.setup`) through the object store: on a CPU the array is a
        zero-copy view of it, on a GPU it is copied to the device once, and every batch then
        gathers its frame stacks here, so no image passes through the driver per batch.
        """
        if isinstance(frames, ray.ObjectRef):
            frames = ray.get(frames)
        with warnings.catch_warnings():
            # The object store's arrays are read-only; the frames are only ever read.
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            self._frames = torch.as_tensor(frames, device=self._device)

    def _gather_frames(self, module_batch: dict[str, Any]) -> None:
        """Replaces `FRAME_INDEX` by the stacked frames `OBS` [B, K, C, H, W] (padding: 0)."""
        if FRAME_INDEX not in module_batch:
            return
        if self._frames is None:
            raise RuntimeError(
                "The batch carries frame indices but this learner holds no frames: call "
                "`set_frames` first (LaMo.setup does)."
            )
        index = torch.as_tensor(module_batch.pop(FRAME_INDEX))
        if self._frames.device.type == "cpu":
            # numpy's gather of uint8 rows is ~8x torch's advanced indexing on a CPU thread.
            stacks = torch.from_numpy(np.take(self._frames.numpy(), index.numpy(), axis=0))
        else:
            flat = index.to(self._device).reshape(-1).long()
            stacks = self._frames.index_select(0, flat).reshape(
                *index.shape, *self._frames.shape[1:]
            )
        real = torch.as_tensor(module_batch[ATTENTION_MASK], device=self._device) > 0
        stacks[~real] = 0  # in place: the gather made a new tensor
        module_batch[Columns.OBS] = stacks

    def _training_flops(self, module_id: ModuleID) -> int:
        """Model FLOPs of one gradient step of this module (trajectory batch + text batch)."""
        config = self.config.get_config_for_module(module_id)
        module = self.module[module_id].unwrapped()
        body = language_model_body(module.language_model)
        layers, hidden = body.config.num_hidden_layers, body.config.hidden_size
        trajectory = forward_flops(
            matmul_weight_count(body),
            layers=layers,
            hidden=hidden,
            batch_size=config.train_batch_size_per_learner,
            sequence_len=TOKENS_PER_STEP * config.context_len,
        )
        if module_id in self._text_corpora:
            head = module.language_model.get_output_embeddings()
            trajectory += forward_flops(
                matmul_weight_count(body) + head.weight.numel(),
                layers=layers,
                hidden=hidden,
                batch_size=config.text_batch_size,
                sequence_len=config.text_block_len,
            )
        return training_flops(trajectory, trains_lm_weights=config.finetune == "full")

    @override(TorchLearner)
    def _update(self, batch: dict[str, Any]) -> tuple[Any, Any, Any]:
        """One gradient step, timed: logs steps/s, tokens/s, TFLOP/s and MFU per module."""
        started = time.perf_counter()
        for module_batch in batch.values():
            self._gather_frames(module_batch)
        result = super()._update(batch)
        if self._device.type == "cuda":
            torch.cuda.synchronize(self._device)
        seconds = time.perf_counter() - started
        for module_id, module_batch in batch.items():
            mask = module_batch[ATTENTION_MASK]
            tokens = TOKENS_PER_STEP * mask.numel()
            if module_id in self._text_corpora:
                config = self.config.get_config_for_module(module_id)
                tokens += config.text_batch_size * config.text_block_len
            if module_id not in self._flops_per_step:
                self._flops_per_step[module_id] = self._training_flops(module_id)
            flops_per_s = self._flops_per_step[module_id] / seconds
            throughput = {
                GRADIENT_STEPS_PER_S_KEY: 1.0 / seconds,
                TOKENS_PER_S_KEY: tokens / seconds,
                ACHIEVED_TFLOPS_KEY: flops_per_s / 1e12,
            }
            if self._peak_flops:
                throughput[MFU_KEY] = flops_per_s / self._peak_flops
            for key, value in throughput.items():
                self.metrics.log_value((module_id, key), value, reduce="mean")
        return result

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
            # Fused: one kernel for all parameters instead of a Python loop over them
            # (~2x faster steps of the optimizer on CPU; CPU and CUDA since torch 2.4).
            optimizer = torch.optim.AdamW(
                params, lr=lr, weight_decay=config.weight_decay, eps=config.adam_eps, fused=True
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
        action_loss = window_action_loss(module, fwd_out, batch)
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

    def validation_action_losses(self, batch: MultiAgentBatch) -> dict[ModuleID, float]:
        """The action loss on held-out windows, per module: eval mode (no dropout), no grads."""
        tensors = self._convert_batch_type(batch)
        losses = {}
        for module_id, module_batch in tensors.policy_batches.items():
            module = self.module[module_id].unwrapped()
            self._gather_frames(module_batch)
            was_training = module.training
            module.eval()
            try:
                with torch.no_grad():
                    fwd_out = module.forward_train(module_batch)
                    losses[module_id] = float(window_action_loss(module, fwd_out, module_batch))
            finally:
                module.train(was_training)
        return losses

    @override(TorchLearner)
    def compute_gradients(
        self, loss_per_module: dict[ModuleID, TensorType], **kwargs: Any
    ) -> ParamDict:
        """Back-propagates the (fp16: scaled) losses."""
        if self._grad_scaler is not None:
            loss_per_module = {m: self._grad_scaler.scale(v) for m, v in loss_per_module.items()}
        return super().compute_gradients(loss_per_module, **kwargs)

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
        if self._grad_scaler is not None:  # clip the true gradients, not the scaled ones
            for optimizer_name in self._module_optimizers[module_id]:
                self._grad_scaler.unscale_(self._named_optimizers[optimizer_name])
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
        if self._grad_scaler is None:
            super().apply_gradients(gradients_dict)
        else:
            self._apply_scaled_gradients(gradients_dict)
        self._gradient_steps += 1

        for module_id, optimizer_names in self._module_optimizers.items():
            for full_name in optimizer_names:
                lr = self._get_optimizer_lr(self._named_optimizers[full_name])
                short_name = full_name[len(module_id) + 1 :]  # "lm" or "heads"
                self.metrics.log_value((module_id, f"lr_{short_name}"), lr, window=1)
            self.metrics.log_value((module_id, WARMUP_FACTOR_KEY), factor, window=1)
            self.metrics.log_value((module_id, GRADIENT_STEPS_KEY), self._gradient_steps, window=1)

    def _apply_scaled_gradients(self, gradients_dict: ParamDict) -> None:
        """fp16: every optimizer steps through the one scaler (skipped on inf/NaN), which then
        updates its scale once per gradient step (RLlib's scaler path updates per optimizer)."""
        for param_ref, gradient in gradients_dict.items():
            self._params[param_ref].grad = gradient
        for optimizer in self._base_lrs:
            self._grad_scaler.step(optimizer)
        self._grad_scaler.update()


def window_action_loss(
    module: torch.nn.Module, fwd_out: dict[str, TensorType], batch: dict[str, Any]
) -> torch.Tensor:
    """MSE (continuous) or cross-entropy (discrete) over the windows' real, unpadded steps."""
    predictions = fwd_out[Columns.ACTION_DIST_INPUTS]
    targets = batch[Columns.ACTIONS]
    real = batch[ATTENTION_MASK] > 0
    # Index the real steps rather than multiplying by the mask: padding rows never
    # enter the loss, whatever the network computed for them.
    if isinstance(module.action_space, gym.spaces.Discrete):
        return torch.nn.functional.cross_entropy(predictions[real], targets[real].long())
    return torch.nn.functional.mse_loss(predictions[real], targets[real])


def use_granted_cpus() -> None:
    """Sets torch's intra-op threads to the CPUs Ray granted this process (at most its cores).

    Ray pins a worker to ``OMP_NUM_THREADS`` = its CPU request (1 for RLlib's default learner);
    outside a Ray worker (a learner in the driver) torch keeps its own default.
    """
    if not ray.is_initialized():
        return
    context = ray.get_runtime_context()
    if context.worker.mode != ray.WORKER_MODE:
        return
    granted = context.get_assigned_resources().get("CPU", 0.0)
    if granted >= 1:
        torch.set_num_threads(min(int(granted), os.cpu_count() or 1))
