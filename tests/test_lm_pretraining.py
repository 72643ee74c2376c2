"""The shipped small LM and `lamo-lm pretrain`, which makes it and its synthetic control."""

from __future__ import annotations

import json
import math

import huggingface_hub.constants
import pytest
import torch
from safetensors import safe_open

from rllib_lamo import language_models, lm_pretraining
from rllib_lamo.language_models import (
    PACKAGED_TINY_ENGLISH,
    TINY_SYNTHETIC,
    load_language_model,
    packaged_tiny_english_dir,
)
from rllib_lamo.lm_pretraining import (
    RECIPE_FILE,
    MarkovChainCorpus,
    PretrainConfig,
    build_synthetic_control,
    evaluate_blocks,
    held_out_blocks,
    main,
    split_builtin_articles,
)
from rllib_lamo.text_corpus import TextCorpus

TINY_RECIPE = {
    "vocab-size": 300,
    "n-layer": 1,
    "n-embd": 32,
    "n-head": 2,
    "n-positions": 64,
    "block-len": 32,
    "batch-size": 2,
    "steps": 3,
    "warmup-steps": 1,
    "held-out-articles": 2,
    "eval-blocks": 2,
    "seed": 3,
}


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def _shipped_recipe() -> PretrainConfig:
    report = json.loads((packaged_tiny_english_dir() / RECIPE_FILE).read_text())
    return PretrainConfig(**report["config"])


def test_shipped_english_lm_loads_by_name_offline_in_float32(offline):
    model, tokenizer = load_language_model(PACKAGED_TINY_ENGLISH)
    recipe = _shipped_recipe()
    assert type(model).__name__ == "GPT2LMHeadModel"
    assert (model.config.n_layer, model.config.n_embd) == (recipe.n_layer, recipe.n_embd)
    assert model.config.n_positions >= 512
    assert model.get_input_embeddings().num_embeddings == len(tokenizer) == recipe.vocab_size
    assert all(parameter.dtype == torch.float32 for parameter in model.parameters())
    size = sum(f.stat().st_size for f in packaged_tiny_english_dir().iterdir())
    assert size < 15e6


def test_shipped_english_lm_predicts_held_out_articles_far_better_than_uniform(offline):
    recipe = _shipped_recipe()
    _, held_out = split_builtin_articles(recipe.held_out_articles, recipe.seed)
    pretrained, tokenizer = load_language_model(PACKAGED_TINY_ENGLISH)
    torch.manual_seed(0)
    random_init, _ = load_language_model(PACKAGED_TINY_ENGLISH, pretrained=False)
    blocks = held_out_blocks(tokenizer, held_out, block_len=256, num_blocks=4)
    uniform = math.log(len(tokenizer))
    # 2.5 nats below uniform: the right token is ~12 times likelier than a uniform guess
    # (the shipped model measures ~3.0 below on these articles).
    assert evaluate_blocks(pretrained, tokenizer, blocks)["loss"] < uniform - 2.5
    # The same architecture untrained is no better than uniform guessing.
    assert evaluate_blocks(random_init, tokenizer, blocks)["loss"] > uniform - 0.5
    assert type(random_init) is type(pretrained)
    assert random_init.config.n_layer == pretrained.config.n_layer


def test_held_out_articles_are_disjoint_from_training_and_fixed_by_the_seed():
    training, held_out = split_builtin_articles(5, seed=0)
    assert len(held_out) == 5 and not set(held_out) & set(training)
    assert split_builtin_articles(5, seed=0)[1] == held_out
    assert split_builtin_articles(5, seed=1)[1] != held_out


def test_text_blocks_longer_than_the_lm_takes_fail_naming_the_setting():
    _, tokenizer = load_language_model(PACKAGED_TINY_ENGLISH)
    with pytest.raises(ValueError, match="text_block_len <= 512"):
        TextCorpus.from_spec("builtin", tokenizer, block_len=1024, batch_size=2, seed=0)


def test_markov_chain_corpus_is_seeded_and_stays_in_the_vocabulary():
    def batches(seed: int) -> list[torch.Tensor]:
        chain = MarkovChainCorpus(50, block_len=16, batch_size=4, temperature=0.5, seed=seed)
        return [chain.next_batch() for _ in range(3)]

    first, again, other = batches(7), batches(7), batches(8)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[0], other[0])
    assert first[0].shape == (4, 16) and 0 <= int(first[0].min()) and int(first[0].max()) < 50
    chain = MarkovChainCorpus(50, block_len=16, batch_size=4, temperature=0.5, seed=7)
    assert 0 < chain.entropy_rate() < math.log(50)


def test_pretrain_command_end_to_end_and_the_synthetic_control_is_built_once(
    tmp_path, monkeypatch, offline
):
    english_dir = tmp_path / "english"
    flags = [item for key, value in TINY_RECIPE.items() for item in (f"--{key}", str(value))]
    main(["pretrain", "--output", str(english_dir), "--log-every", "1", *flags])

    model, tokenizer = load_language_model(str(english_dir))
    assert (model.config.n_layer, model.config.n_embd, len(tokenizer)) == (1, 32, 300)
    assert all(parameter.dtype == torch.float32 for parameter in model.parameters())
    with safe_open(english_dir / "model.safetensors", "pt") as stored:  # stored as fp16
        assert {stored.get_tensor(key).dtype for key in stored.keys()} == {torch.float16}
    report = json.loads((english_dir / RECIPE_FILE).read_text())
    assert report["corpus"] == "english" and report["config"]["steps"] == 3
    assert report["command"].startswith("lamo-lm pretrain --output")
    assert math.isfinite(report["held_out"]["loss"])
    assert "lamo-lm pretrain --output" in (english_dir / "README.md").read_text()

    # lamo-tiny-synthetic follows the shipped model's recipe; point it at the tiny one.
    monkeypatch.setattr(language_models, "packaged_tiny_english_dir", lambda: english_dir)
    monkeypatch.setattr(lm_pretraining, "packaged_tiny_english_dir", lambda: english_dir)
    with pytest.raises(FileNotFoundError, match="lamo-lm pretrain --corpus synthetic"):
        load_language_model(TINY_SYNTHETIC, cache_dir=str(tmp_path))
    build_synthetic_control(cache_dir=str(tmp_path), threads=None)
    synthetic, synthetic_tokenizer = load_language_model(TINY_SYNTHETIC, cache_dir=str(tmp_path))
    assert synthetic_tokenizer.get_vocab() == tokenizer.get_vocab()
    assert synthetic.config.to_diff_dict() == model.config.to_diff_dict()
    built = next((tmp_path / "pretrained").glob(f"{TINY_SYNTHETIC}-*"))
    assert json.loads((built / RECIPE_FILE).read_text())["corpus"] == "synthetic"
    assert not torch.equal(
        synthetic.get_input_embeddings().weight, model.get_input_embeddings().weight
    )
