"""LoRA on Q, K and V, each projection with its own adapter (the paper's loralib MergedLinear).

Parameter counts are pinned to the formula: per block 6·r·d LoRA weights for GPT-2's fused
``c_attn`` (plus its 3·d biases) and r·(d + d_q) + 2·r·(d + d_kv) for a Llama's q/k/v.
"""

from __future__ import annotations

import copy

import pytest
import torch
from peft import PeftModel
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from rllib_lamo.language_models import (
    SplitQKVProjection,
    adapt_language_model,
    load_language_model,
    split_fused_attention,
    trainable_parameter_names,
)

QKV = ("q_proj", "k_proj", "v_proj")


def _trainable_counts(model: torch.nn.Module) -> tuple[int, int]:
    """(LoRA weights, all trainable weights)."""
    parameters = dict(model.named_parameters())
    names = trainable_parameter_names(model)
    lora = sum(parameters[n].numel() for n in names if ".lora_" in n)
    return lora, sum(parameters[n].numel() for n in names)


def _gpt2(n_layer: int, n_embd: int, n_head: int) -> GPT2LMHeadModel:
    # A tiny MLP and vocabulary: the LoRA count depends only on the attention's shape.
    config = GPT2Config(n_layer=n_layer, n_embd=n_embd, n_head=n_head, n_inner=8, vocab_size=8)
    return GPT2LMHeadModel(config).eval()


@pytest.mark.parametrize(("rank", "n_layer", "n_embd"), [(4, 2, 64), (16, 12, 768)])
def test_gpt2_lora_count_is_six_r_d_per_block_plus_the_c_attn_biases(rank, n_layer, n_embd):
    adapted = adapt_language_model(_gpt2(n_layer, n_embd, n_head=4), lora_rank=rank)
    lora, trainable = _trainable_counts(adapted)
    assert lora == n_layer * 6 * rank * n_embd
    assert trainable == lora + n_layer * 3 * n_embd
    if (rank, n_layer, n_embd) == (16, 12, 768):  # GPT-2 small, the paper's numbers
        assert lora == 884_736 and lora // n_layer == 73_728


def test_llama_lora_adapts_q_k_v_each_with_its_own_adapter():
    config = LlamaConfig(
        vocab_size=8,
        hidden_size=96,
        intermediate_size=8,
        num_hidden_layers=3,
        num_attention_heads=6,
        num_key_value_heads=2,
    )
    adapted = adapt_language_model(LlamaForCausalLM(config).eval(), lora_rank=8)
    hidden, kv_width, rank = 96, 2 * 96 // 6, 8
    per_block = rank * (hidden + hidden) + 2 * rank * (hidden + kv_width)
    lora, trainable = _trainable_counts(adapted)
    assert lora == trainable == 3 * per_block
    assert {n.split(".")[-4] for n in trainable_parameter_names(adapted)} == set(QKV)


def test_split_c_attn_reproduces_the_fused_projection_exactly():
    model, _ = load_language_model("tiny-gpt2")
    fused = model.transformer.h[0].attn.c_attn
    split = SplitQKVProjection(fused)
    inputs = torch.randn(3, 5, 64)
    assert torch.equal(split(inputs), fused(inputs))


def test_zero_b_adapters_reproduce_the_base_model_exactly():
    model, _ = load_language_model("tiny-gpt2")
    base = copy.deepcopy(model)
    adapted = adapt_language_model(model, lora_rank=4, lora_dropout=0.0).eval()
    ids = torch.randint(0, 256, (2, 12))
    with torch.no_grad():
        assert torch.equal(adapted(input_ids=ids).logits, base(input_ids=ids).logits)


def _first_split_attention(adapted: PeftModel) -> torch.nn.Module:
    return adapted.get_base_model().transformer.h[0].attn.c_attn


def test_each_projection_adapter_moves_only_its_own_output_columns():
    adapted = adapt_language_model(load_language_model("tiny-gpt2")[0], lora_dropout=0.0).eval()
    c_attn = _first_split_attention(adapted)
    inputs = torch.randn(2, 4, 64)
    before = c_attn(inputs).detach()
    width = before.shape[-1] // 3
    for index, part in enumerate(QKV):
        projection = getattr(c_attn, part)
        with torch.no_grad():
            projection.lora_B["default"].weight.normal_()
        after = c_attn(inputs).detach()
        moved = (after - before).abs().amax(dim=(0, 1)).reshape(3, width).amax(dim=1)
        assert moved[index] > 0
        assert moved[[i for i in range(3) if i != index]].eq(0).all()
        before = after
    # Gradients: a loss on the query columns reaches only the query adapter.
    c_attn(inputs)[..., :width].sum().backward()
    for part in QKV:
        grad = getattr(c_attn, part).lora_A["default"].weight.grad
        assert (grad is not None and grad.abs().sum() > 0) == (part == "q_proj")


def test_split_adapters_save_load_and_merge_through_peft(tmp_path):
    adapted = adapt_language_model(load_language_model("tiny-gpt2")[0], lora_dropout=0.0).eval()
    for name, parameter in adapted.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(parameter)
    ids = torch.randint(0, 256, (2, 10))
    with torch.no_grad():
        expected = adapted(input_ids=ids).logits
    adapted.save_pretrained(tmp_path)

    fresh, _ = load_language_model("tiny-gpt2")
    split_fused_attention(fresh)
    loaded = PeftModel.from_pretrained(fresh, tmp_path).eval()
    merged = copy.deepcopy(loaded).merge_and_unload()
    with torch.no_grad():
        assert torch.allclose(loaded(input_ids=ids).logits, expected, atol=1e-6)
        assert torch.allclose(merged(input_ids=ids).logits, expected, atol=1e-5)
    assert not any("lora_" in name for name, _ in merged.named_parameters())
