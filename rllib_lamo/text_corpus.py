"""Token blocks of English text for LaMo's auxiliary language-modelling loss.

The paper keeps the LM's language ability alive while it learns control by adding, at every RL
step, a next-token loss on a small batch of text blocks (WikiText-103, 1024-token blocks, 2 per
step). `TextCorpus` tokenises a corpus once into one flat token array (documents joined by the
tokenizer's EOS token), cuts it into non-overlapping ``block_len`` blocks and serves seeded random
batches of them; its state is the RNG state, so a resumed run sees the same stream.

Corpus specs:

- ``"builtin"`` (default): 98 English Wikipedia articles (~434k words) shipped with the package in
  ``rllib_lamo/resources/wikipedia_en_sample.jsonl.xz``, taken from the shortened enwiki dump in
  gensim's test data. Licence: CC BY-SA 3.0 (Wikipedia contributors); source, revisions and the
  cleaning are documented in ``rllib_lamo/resources/README.md``. Works offline, no extra package.
- ``"wikitext-103"``: the paper's corpus (``Salesforce/wikitext``, ``wikitext-103-raw-v1``, train
  split) through the Hugging Face ``datasets`` library, which must be installed and able to reach
  the Hub (or have it cached).
- a path to a ``.txt`` file (one document), a ``.jsonl`` file (one document per line, in a
  ``text`` field), a ``.parquet`` file (a ``text`` column), any of the text formats compressed as
  ``.gz``/``.bz2``/``.xz``, or a directory holding such files (read recursively, in sorted order).
"""

from __future__ import annotations

import bz2
import gzip
import json
import logging
import lzma
import re
import time
from collections.abc import Callable, Iterable, Iterator
from importlib import resources
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

logger = logging.getLogger(__name__)

BUILTIN_CORPUS = "wikipedia_en_sample.jsonl.xz"
WIKITEXT_103 = ("Salesforce/wikitext", "wikitext-103-raw-v1", "train")
_TEXT_SUFFIXES = (".txt", ".jsonl")
_COMPRESSED_OPENERS: dict[str, Callable[..., IO[str]]] = {
    ".gz": gzip.open,
    ".bz2": bz2.open,
    ".xz": lzma.open,
}
_TOKENIZE_CHUNK_DOCS = 256
_WIKITEXT_ARTICLE_TITLE = re.compile(r"^ = [^=].* = $")
ACCEPTED_SPECS = (
    '"builtin" (shipped English Wikipedia sample), "wikitext-103" (needs the `datasets` '
    "library and the Hugging Face Hub), or a path to a .txt / .jsonl / .parquet file (optionally "
    ".gz/.bz2/.xz-compressed for .txt/.jsonl) or a directory of such files"
)


class TextCorpus:
    """Seeded random batches of fixed-length token blocks from one tokenised corpus."""

    def __init__(
        self,
        tokens: np.ndarray,
        *,
        block_len: int,
        batch_size: int,
        seed: int,
        source: str = "tokens",
    ) -> None:
        if block_len < 1 or batch_size < 1:
            raise ValueError(
                f"block_len and batch_size must be >= 1, got {block_len}, {batch_size}"
            )
        tokens = np.asarray(tokens, dtype=np.int32)  # half the memory of int64 for a big corpus
        if tokens.ndim != 1 or tokens.size == 0:
            raise ValueError(f"Text corpus {source!r} is empty: it holds no tokens.")
        if tokens.size < block_len:
            raise ValueError(
                f"Text corpus {source!r} has {tokens.size} tokens, shorter than one block of "
                f"{block_len}; use a larger corpus or a smaller block length."
            )
        num_blocks = tokens.size // block_len
        self._blocks = tokens[: num_blocks * block_len].reshape(num_blocks, block_len)
        self.block_len = block_len
        self.batch_size = batch_size
        self.source = source
        self._rng = np.random.default_rng(seed)

    @classmethod
    def from_spec(
        cls, spec: str, tokenizer: Any, *, block_len: int, batch_size: int, seed: int
    ) -> TextCorpus:
        """Read, tokenise and block the corpus named by `spec` (see the module docstring)."""
        longest = getattr(tokenizer, "model_max_length", None)
        if longest is not None and block_len > longest:
            raise ValueError(
                f"Text block length {block_len} (text_block_len) exceeds the {longest} positions "
                f"this language model takes; set text_block_len <= {longest}."
            )
        started = time.perf_counter()
        tokens = tokenize_documents(read_documents(spec), tokenizer)
        corpus = cls(tokens, block_len=block_len, batch_size=batch_size, seed=seed, source=spec)
        logger.info(
            "Text corpus %r: %d tokens, %d blocks of %d, tokenised in %.1f s.",
            spec,
            tokens.size,
            corpus.num_blocks,
            block_len,
            time.perf_counter() - started,
        )
        return corpus

    @property
    def num_blocks(self) -> int:
        return self._blocks.shape[0]

    def next_batch(self) -> torch.LongTensor:
        """``[batch_size, block_len]`` token ids of uniformly drawn blocks (with replacement)."""
        rows = self._rng.integers(0, self.num_blocks, size=self.batch_size)
        return torch.from_numpy(self._blocks[rows].astype(np.int64))

    def get_state(self) -> dict:
        """The sampler's state; with the same corpus, `set_state` resumes the exact stream."""
        return {
            "rng": self._rng.bit_generator.state,
            "num_blocks": self.num_blocks,
            "block_len": self.block_len,
        }

    def set_state(self, state: dict) -> None:
        if (state["num_blocks"], state["block_len"]) != (self.num_blocks, self.block_len):
            raise ValueError(
                f"Text corpus state was saved for {state['num_blocks']} blocks of "
                f"{state['block_len']} tokens, but this corpus has {self.num_blocks} blocks of "
                f"{self.block_len}: the stream cannot resume on a different corpus or tokenizer."
            )
        self._rng.bit_generator.state = state["rng"]


def tokenize_documents(documents: Iterable[str], tokenizer: Any) -> np.ndarray:
    """One flat token array: every document's ids followed by the tokenizer's EOS token."""
    eos_id = tokenizer.eos_token_id
    if eos_id is None:
        raise ValueError("The tokenizer has no EOS token to separate documents with.")
    pieces: list[np.ndarray] = []
    for chunk in _chunks(documents, _TOKENIZE_CHUNK_DOCS):
        encoded = tokenizer(
            chunk, add_special_tokens=False, return_attention_mask=False, verbose=False
        )["input_ids"]
        for ids in encoded:
            pieces.append(np.asarray(ids + [eos_id], dtype=np.int32))
    return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int32)


def _chunks(documents: Iterable[str], size: int) -> Iterator[list[str]]:
    chunk: list[str] = []
    for document in documents:
        if document.strip():
            chunk.append(document)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def read_documents(spec: str) -> Iterator[str]:
    """The raw documents of a corpus spec, in a fixed order (see the module docstring)."""
    if spec == "builtin":
        return _builtin_documents()
    if spec == "wikitext-103":
        return _wikitext_103_articles()
    path = Path(spec).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and _corpus_kind(p))
        if not files:
            raise ValueError(f"Directory {spec!r} holds no .txt / .jsonl / .parquet files.")
        return (document for file in files for document in _read_file(file))
    if path.is_file():
        if not _corpus_kind(path):
            raise ValueError(f"Unsupported text corpus file {spec!r}; accepted: {ACCEPTED_SPECS}.")
        return _read_file(path)
    if _corpus_kind(path) or "/" in spec or "\\" in spec:
        raise FileNotFoundError(f"Text corpus file or directory {spec!r} does not exist.")
    raise ValueError(f"Unknown text corpus {spec!r}; accepted: {ACCEPTED_SPECS}.")


def _builtin_documents() -> Iterator[str]:
    shipped = resources.files("rllib_lamo") / "resources" / BUILTIN_CORPUS
    with resources.as_file(shipped) as path:
        yield from _read_file(path)


def _corpus_kind(path: Path) -> str | None:
    """``.txt``, ``.jsonl`` or ``.parquet`` for a file this module reads, else None."""
    if path.suffix == ".parquet":
        return ".parquet"
    suffixes = path.suffixes[:-1] if path.suffix in _COMPRESSED_OPENERS else path.suffixes
    return suffixes[-1] if suffixes and suffixes[-1] in _TEXT_SUFFIXES else None


def _read_file(path: Path) -> Iterator[str]:
    kind = _corpus_kind(path)
    if kind == ".parquet":
        yield from _read_parquet(path)
        return
    opener = _COMPRESSED_OPENERS.get(path.suffix, open)
    with opener(path, "rt", encoding="utf-8") as stream:
        if kind == ".txt":
            yield stream.read()
            return
        for line_number, line in enumerate(stream, start=1):
            if line.strip():
                yield _text_field(json.loads(line), f"{path}:{line_number}")


def _text_field(row: Any, where: str) -> str:
    if not isinstance(row, dict) or not isinstance(row.get("text"), str):
        raise ValueError(f"{where}: each JSON line needs a string 'text' field.")
    return row["text"]


def _read_parquet(path: Path) -> Iterator[str]:
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(path)
    if "text" not in parquet.schema_arrow.names:
        raise ValueError(f"{path}: a parquet text corpus needs a 'text' column.")
    for batch in parquet.iter_batches(columns=["text"]):
        yield from (text for text in batch.column(0).to_pylist() if text)


def _wikitext_103_articles() -> Iterator[str]:
    """The paper's corpus through `datasets`; fails at once when it cannot be had."""
    try:
        # Imported by name: a bare `import datasets` can pick up a same-named project folder.
        from datasets import load_dataset
    except ImportError as err:
        raise ImportError(
            'Text corpus "wikitext-103" needs the Hugging Face `datasets` library '
            "(pip install datasets) and access to the Hub. Offline, download the text elsewhere "
            'and pass a path to a .txt / .jsonl / .parquet file or a directory, or use "builtin".'
        ) from err
    name, config, split = WIKITEXT_103
    try:
        rows = load_dataset(name, config, split=split)
    except Exception as err:  # datasets raises many types for "not reachable / not cached"
        raise OSError(
            f"Could not load {name} ({config}, {split} split) with `datasets`: the Hugging Face "
            "Hub may be unreachable and the dataset is not cached. Download it elsewhere and pass "
            'a path to a .txt / .jsonl / .parquet file or a directory, or use "builtin".'
        ) from err
    return join_wikitext_articles(rows["text"])


def join_wikitext_articles(lines: Iterable[str]) -> Iterator[str]:
    """WikiText rows are single lines; rejoin them into articles so EOS separates articles.

    An article starts at a top-level title line such as `` = Valkyria Chronicles III = ``.
    """
    article: list[str] = []
    has_text = False
    for line in lines:
        if has_text and _WIKITEXT_ARTICLE_TITLE.match(line.rstrip("\n")):
            yield "".join(article)
            article, has_text = [], False
        article.append(line)
        has_text = has_text or bool(line.strip())
    if has_text:
        yield "".join(article)
