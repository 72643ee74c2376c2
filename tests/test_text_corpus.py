"""Text blocks for the language loss: sources, determinism, exact resume, clear errors."""

from __future__ import annotations

import gzip
import json
import pickle

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from rllib_lamo.language_models import load_language_model
from rllib_lamo.text_corpus import (
    TextCorpus,
    join_wikitext_articles,
    read_documents,
    tokenize_documents,
)


@pytest.fixture(scope="module")
def tokenizer():
    """The tiny models' byte-level tokenizer: offline, instant, one token per byte."""
    return load_language_model("tiny-gpt2")[1]


@pytest.fixture(scope="module")
def builtin_tokens(tokenizer) -> np.ndarray:
    return tokenize_documents(read_documents("builtin"), tokenizer)


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_builtin_corpus_is_english_wikipedia_with_eos_between_articles(tokenizer, builtin_tokens):
    eos = tokenizer.eos_token_id
    assert builtin_tokens.size > 2_000_000  # ~2.7 MB of text, one byte-level token per byte
    assert (builtin_tokens == eos).sum() == 98  # one EOS after each article
    opening = tokenizer.decode(builtin_tokens[:60].tolist())
    assert opening.startswith("Anarchism is a political philosophy")


def test_batches_are_whole_blocks_of_the_token_stream(tokenizer, builtin_tokens):
    corpus = TextCorpus(builtin_tokens, block_len=128, batch_size=8, seed=3)
    batch = corpus.next_batch()
    assert batch.shape == (8, 128) and batch.dtype == torch.int64
    blocks = builtin_tokens[: corpus.num_blocks * 128].reshape(-1, 128)
    for row in batch.numpy():
        assert (blocks == row).all(axis=1).any()


def test_same_seed_same_stream_other_seed_other_stream(builtin_tokens):
    def stream(seed: int) -> list[torch.Tensor]:
        corpus = TextCorpus(builtin_tokens, block_len=64, batch_size=4, seed=seed)
        return [corpus.next_batch() for _ in range(5)]

    first, again, other = stream(1), stream(1), stream(2)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))
    assert not torch.equal(first[0], first[1])


def test_state_resumes_the_exact_stream_after_a_checkpoint_round_trip(builtin_tokens):
    corpus = TextCorpus(builtin_tokens, block_len=64, batch_size=4, seed=5)
    for _ in range(3):
        corpus.next_batch()
    state = pickle.loads(pickle.dumps(corpus.get_state()))
    expected = [corpus.next_batch() for _ in range(4)]

    resumed = TextCorpus(builtin_tokens, block_len=64, batch_size=4, seed=999)
    resumed.set_state(state)
    assert all(torch.equal(a, resumed.next_batch()) for a in expected)

    with pytest.raises(ValueError, match="cannot resume on a different corpus"):
        TextCorpus(builtin_tokens, block_len=32, batch_size=4, seed=5).set_state(state)


def test_text_files_jsonl_parquet_and_directories_tokenise_to_one_eos_joined_stream(
    tokenizer, tmp_path
):
    docs = ["First document.", "Second one, a bit longer.", "Third."]
    eos = tokenizer.eos_token_id
    expected = [token for doc in docs for token in [*_ids(tokenizer, doc), eos]]

    folder = tmp_path / "corpus"
    (folder / "nested").mkdir(parents=True)
    (folder / "a.txt").write_text(docs[0])
    with gzip.open(folder / "b.jsonl.gz", "wt") as out:
        out.write(json.dumps({"text": docs[1]}) + "\n\n")
    pq.write_table(pa.table({"text": [docs[2], None, ""]}), folder / "nested" / "c.parquet")
    (folder / "ignored.csv").write_text("not,a,corpus")

    for spec in (str(folder), str(folder / "a.txt")):
        want = expected if spec == str(folder) else expected[: len(_ids(tokenizer, docs[0])) + 1]
        corpus = TextCorpus.from_spec(spec, tokenizer, block_len=len(want), batch_size=2, seed=0)
        assert corpus.num_blocks == 1
        assert corpus.next_batch().tolist() == [want, want]
    assert tokenize_documents(docs, tokenizer).tolist() == expected


def test_smollm2_tokenizer_reads_the_builtin_corpus():
    _, smollm2_tokenizer = load_language_model("smollm2-135m", num_layers=1)
    corpus = TextCorpus.from_spec(
        "builtin", smollm2_tokenizer, block_len=1024, batch_size=2, seed=0
    )
    assert corpus.num_blocks > 500  # ~600k subword tokens
    assert int(corpus.next_batch().max()) < len(smollm2_tokenizer)


def test_errors_say_what_is_wrong(tokenizer, tmp_path):
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(ValueError, match="is empty"):
        TextCorpus.from_spec(
            str(tmp_path / "empty.txt"), tokenizer, block_len=8, batch_size=1, seed=0
        )
    (tmp_path / "short.txt").write_text("tiny")
    with pytest.raises(ValueError, match="shorter than one block"):
        TextCorpus.from_spec(
            str(tmp_path / "short.txt"), tokenizer, block_len=8, batch_size=1, seed=0
        )
    (tmp_path / "rows.jsonl").write_text(json.dumps({"body": "no text field"}) + "\n")
    with pytest.raises(ValueError, match="rows.jsonl:1.*'text' field"):
        TextCorpus.from_spec(
            str(tmp_path / "rows.jsonl"), tokenizer, block_len=8, batch_size=1, seed=0
        )
    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "rows.parquet")
    with pytest.raises(ValueError, match="'text' column"):
        TextCorpus.from_spec(
            str(tmp_path / "rows.parquet"), tokenizer, block_len=8, batch_size=1, seed=0
        )
    (tmp_path / "nothing").mkdir()
    with pytest.raises(ValueError, match="holds no"):
        TextCorpus.from_spec(
            str(tmp_path / "nothing"), tokenizer, block_len=8, batch_size=1, seed=0
        )
    with pytest.raises(FileNotFoundError):
        TextCorpus.from_spec(
            str(tmp_path / "missing.txt"), tokenizer, block_len=8, batch_size=1, seed=0
        )
    with pytest.raises(ValueError, match="Unknown text corpus 'wikipedia'.*builtin"):
        TextCorpus.from_spec("wikipedia", tokenizer, block_len=8, batch_size=1, seed=0)


def _has_hf_datasets() -> bool:
    try:
        from datasets import load_dataset  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(_has_hf_datasets(), reason="Hugging Face datasets is installed")
def test_wikitext_103_without_datasets_points_at_the_file_option(tokenizer):
    with pytest.raises(ImportError, match="datasets.*path to a .txt / .jsonl / .parquet"):
        TextCorpus.from_spec("wikitext-103", tokenizer, block_len=8, batch_size=1, seed=0)


def test_wikitext_lines_are_rejoined_into_articles():
    lines = [
        "",
        " = Alpha = \n",
        "",
        " = = History = = \n",
        " Alpha was founded in 1900 . \n",
        " = Beta = \n",
        " Beta is a river . \n",
    ]
    articles = list(join_wikitext_articles(lines))
    assert articles == [
        " = Alpha = \n = = History = = \n Alpha was founded in 1900 . \n",
        " = Beta = \n Beta is a river . \n",
    ]
