"""Training speed of a LaMo learner: mixed precision, throughput keys, FLOP count, peaks.

One place defines what the per-iteration speed figures mean, so that the progress table,
MLflow and the benchmarks read the same keys:

- `GRADIENT_STEPS_PER_S_KEY`: gradient steps per second of the learner's own step time
  (forward, backward, optimizer; data loading and evaluation excluded).
- `TOKENS_PER_S_KEY`: transformer tokens per second through the LM body, trajectory tokens
  (3 per window step, padding included, as the model computes them) plus text tokens.
- `ACHIEVED_TFLOPS_KEY`: model FLOPs per step (see `training_flops_per_step`) per second.
- `MFU_KEY`: achieved / peak FLOP/s, only where the device's peak is known (`peak_flops`).
"""

from __future__ import annotations

import torch
from torch import nn

GRADIENT_STEPS_PER_S_KEY = "gradient_steps_per_s"
TOKENS_PER_S_KEY = "tokens_per_s"
ACHIEVED_TFLOPS_KEY = "achieved_tflops"
MFU_KEY = "mfu"

# Dense bf16/fp16 tensor-core peaks (FLOP/s) from the vendors' data sheets, by device-name
# fragment. Float32 training has no single peak (TF32 or not), so MFU is reported for mixed
# precision only.
_MIXED_PRECISION_PEAK_FLOPS = {
    "H200": 989e12,
    "H100": 989e12,
    "A100": 312e12,
    "L4": 121e12,
    "V100": 125e12,
    "T4": 65e12,
}


def matmul_weight_count(module: nn.Module) -> int:
    """Weights that multiply activations (2-D, not embedding tables), each counted once."""
    tables = {id(m.weight) for m in module.modules() if isinstance(m, nn.Embedding)}
    return sum(p.numel() for p in module.parameters() if p.ndim == 2 and id(p) not in tables)


def forward_flops(
    matmul_weights: int, *, layers: int, hidden: int, batch_size: int, sequence_len: int
) -> int:
    """FLOPs of one transformer forward pass over ``batch_size`` sequences.

    2 FLOPs per multiply-add: ``2 * matmul weights * tokens`` for the linear layers plus
    ``4 * layers * sequence_len^2 * hidden`` per sequence for the attention scores and their
    weighted sum (the full square, as dense kernels compute it).
    """
    tokens = batch_size * sequence_len
    return 2 * matmul_weights * tokens + 4 * layers * sequence_len**2 * hidden * batch_size


def training_flops(forward: int, *, trains_lm_weights: bool) -> int:
    """Forward plus backward: the backward pass computes input gradients (~1 forward) all the
    way down to the trained embeddings, and weight gradients (~1 forward) only where the
    LM's weights train (full fine-tuning; LoRA's adapters are negligible)."""
    return forward * (3 if trains_lm_weights else 2)


def peak_flops(device: torch.device, mixed_precision: bool) -> float | None:
    """The device's dense tensor-core peak FLOP/s where known (GPUs, mixed precision)."""
    if device.type != "cuda" or not mixed_precision:
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in _MIXED_PRECISION_PEAK_FLOPS.items() if key in name), None)


def autocast_dtype(mode: str | None, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `LaMoConfig.mixed_precision` on this device (None: float32).

    ``bf16`` on a GPU without bf16 fails rather than silently training in another precision;
    ``auto`` picks fp16 there. CPUs run bf16 autocast.
    """
    if mode is None:
        return None
    bf16_supported = device.type != "cuda" or torch.cuda.is_bf16_supported()
    if mode == "bf16" and not bf16_supported:
        raise ValueError(
            f"mixed_precision='bf16': {torch.cuda.get_device_name(device)} has no bfloat16; "
            "set mixed_precision='fp16' (with a gradient scaler) or 'auto'."
        )
    if mode == "fp16" or (mode == "auto" and not bf16_supported):
        return torch.float16
    return torch.bfloat16
