"""Pre-train, and measure, the small causal LM that LaMo can run at full depth on a CPU.

SmolLM2-135M cut to a few blocks is not a pre-trained LM (its next-token loss is worse than
uniform guessing), and all 30 blocks are too slow for 2 CPU cores. This module pre-trains a small
GPT-2-architecture LM with its own byte-level BPE tokenizer on the English Wikipedia sample the
package ships (``lamo-lm pretrain``), keeping a few articles out of training to measure it on, and
compares LMs on those held-out articles (``lamo-lm evaluate``).

``--corpus synthetic`` trains the same architecture, tokenizer and number of steps on token
sequences from a seeded random Markov chain over the same vocabulary instead of English (as in
"Pre-training with synthetic data helps offline RL", ICLR 2024): a control for what the language
itself contributes to LaMo.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from rllib_lamo.language_models import (
    RECIPE_FILE,
    build_directory_once,
    language_modeling_loss,
    load_language_model,
    packaged_tiny_english_dir,
    synthetic_tiny_dir,
)
from rllib_lamo.text_corpus import TextCorpus, read_documents, tokenize_documents

logger = logging.getLogger(__name__)

CORPORA = ("english", "synthetic")
EOS_TOKEN = "<|endoftext|>"


@dataclass(frozen=True)
class PretrainConfig:
    """Everything that determines a pre-training run (with the seed, it fixes the result)."""

    vocab_size: int = 4096
    n_layer: int = 4
    n_embd: int = 256
    n_head: int = 4
    n_positions: int = 512
    block_len: int = 512
    batch_size: int = 4
    steps: int = 1200
    learning_rate: float = 3e-3
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    dropout: float = 0.0
    held_out_articles: int = 6
    eval_blocks: int = 16
    markov_temperature: float = 0.5
    seed: int = 0


def split_builtin_articles(num_held_out: int, seed: int) -> tuple[list[str], list[str]]:
    """The shipped Wikipedia articles split into (training, held-out) by a seeded draw.

    Held-out articles never reach the tokenizer trainer or the LM, so losses on them measure
    generalisation to unseen English text.
    """
    articles = list(read_documents("builtin"))
    if not 1 <= num_held_out < len(articles):
        raise ValueError(
            f"held_out_articles must be between 1 and {len(articles) - 1}, got {num_held_out}."
        )
    held_out = set(np.random.default_rng(seed).choice(len(articles), num_held_out, replace=False))
    training = [text for index, text in enumerate(articles) if index not in held_out]
    return training, [articles[index] for index in sorted(held_out)]


def train_tokenizer(documents: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (GPT-2's scheme: any text encodes, nothing is unknown)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=2,
        show_progress=False,
    )
    backend.train_from_iterator(documents, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token=EOS_TOKEN, bos_token=EOS_TOKEN, pad_token=EOS_TOKEN
    )


class MarkovChainCorpus:
    """Seeded batches of token sequences from a random first-order Markov chain.

    Each token's successor distribution is a softmax of standard-normal logits divided by the
    temperature (lower: more predictable), over the whole vocabulary except EOS.
    """

    def __init__(
        self, vocab_size: int, *, block_len: int, batch_size: int, temperature: float, seed: int
    ) -> None:
        if vocab_size < 2 or temperature <= 0:
            raise ValueError(
                f"Markov chain needs vocab_size >= 2 and temperature > 0, got {vocab_size}, "
                f"{temperature}."
            )
        self._generator = torch.Generator().manual_seed(seed)
        logits = torch.randn(vocab_size, vocab_size, generator=self._generator)
        self.transitions = torch.softmax(logits / temperature, dim=-1)
        self.block_len = block_len
        self.batch_size = batch_size

    def next_batch(self) -> torch.LongTensor:
        tokens = torch.empty(self.batch_size, self.block_len, dtype=torch.long)
        tokens[:, 0] = torch.randint(
            0, self.transitions.shape[0], (self.batch_size,), generator=self._generator
        )
        for position in range(1, self.block_len):  # a chain is sequential; batch rows are not
            rows = self.transitions[tokens[:, position - 1]]
            tokens[:, position] = torch.multinomial(rows, 1, generator=self._generator)[:, 0]
        return tokens

    def entropy_rate(self) -> float:
        """Its stationary per-token entropy in nats: the lowest loss any model can reach."""
        stationary = torch.full((self.transitions.shape[0],), 1 / self.transitions.shape[0])
        for _ in range(200):
            stationary = stationary @ self.transitions
        row_entropy = -(self.transitions * self.transitions.clamp_min(1e-30).log()).sum(-1)
        return float(stationary @ row_entropy)


def build_model(config: PretrainConfig, tokenizer: PreTrainedTokenizerFast) -> GPT2LMHeadModel:
    gpt2_config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=config.n_positions,
        n_embd=config.n_embd,
        n_layer=config.n_layer,
        n_head=config.n_head,
        resid_pdrop=config.dropout,
        embd_pdrop=config.dropout,
        attn_pdrop=config.dropout,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.eos_token_id,
    )
    return GPT2LMHeadModel(gpt2_config)


def held_out_blocks(tokenizer, documents: list[str], *, block_len: int, num_blocks: int) -> Tensor:
    """The first `num_blocks` consecutive ``block_len``-token blocks of the held-out articles."""
    tokens = tokenize_documents(documents, tokenizer)
    available = tokens.size // block_len
    if available < num_blocks:
        raise ValueError(
            f"The held-out articles give {available} blocks of {block_len} tokens with this "
            f"tokenizer, fewer than the {num_blocks} asked for."
        )
    blocks = tokens[: num_blocks * block_len].reshape(num_blocks, block_len)
    return torch.from_numpy(blocks.astype(np.int64))


@torch.no_grad()
def evaluate_blocks(model, tokenizer, blocks: Tensor, batch_size: int = 4) -> dict[str, float]:
    """Mean next-token loss (nats per token) and nats per UTF-8 byte of the predicted text.

    Per-token losses of models with different tokenizers are not comparable; per-byte ones are.
    """
    was_training = model.training
    model.eval()
    total_loss = 0.0
    for start in range(0, len(blocks), batch_size):
        batch = blocks[start : start + batch_size]
        total_loss += float(language_modeling_loss(model, batch)) * batch.numel() / blocks.shape[1]
    model.train(was_training)
    predicted_tokens = blocks.shape[0] * (blocks.shape[1] - 1)
    mean_loss = total_loss / blocks.shape[0]
    predicted_bytes = sum(len(tokenizer.decode(row[1:]).encode("utf-8")) for row in blocks.tolist())
    return {
        "loss": mean_loss,
        "nats_per_byte": mean_loss * predicted_tokens / predicted_bytes,
        "tokens": predicted_tokens,
        "bytes": predicted_bytes,
        "ln_vocab": math.log(len(tokenizer)),
    }


def pretrain(
    corpus: str,
    output_dir: Path,
    config: PretrainConfig,
    *,
    tokenizer_source: str | None = None,
    threads: int | None = 2,
    log_every: int = 10,
    command: str | None = None,
) -> dict:
    """Pre-train one LM into `output_dir` (model in fp16 safetensors, tokenizer, recipe, metrics).

    ``english`` trains a fresh tokenizer on the training articles; ``synthetic`` reuses the
    tokenizer at `tokenizer_source` (the English model's, so both share one vocabulary).
    """
    if corpus not in CORPORA:
        raise ValueError(f"corpus must be one of {CORPORA}, got {corpus!r}.")
    if config.block_len > config.n_positions:
        raise ValueError(
            f"block_len ({config.block_len}) must not exceed n_positions ({config.n_positions})."
        )
    if threads:
        torch.set_num_threads(threads)
    started = time.perf_counter()
    training_articles, held_out_articles = split_builtin_articles(
        config.held_out_articles, config.seed
    )
    if corpus == "english":
        tokenizer = train_tokenizer(training_articles, config.vocab_size)
        batches = TextCorpus(
            tokenize_documents(training_articles, tokenizer),
            block_len=config.block_len,
            batch_size=config.batch_size,
            seed=config.seed,
            source="builtin (training articles)",
        )
        floor = None
    else:
        if tokenizer_source is None:
            raise ValueError("The synthetic corpus needs tokenizer_source (the English model's).")
        _, tokenizer = load_language_model(tokenizer_source)
        batches = MarkovChainCorpus(
            len(tokenizer),
            block_len=config.block_len,
            batch_size=config.batch_size,
            temperature=config.markov_temperature,
            seed=config.seed,
        )
        floor = batches.entropy_rate()
        logger.info("Markov chain entropy rate (the best reachable loss): %.3f nats", floor)
    tokenizer.model_max_length = config.n_positions
    logger.info("Tokenizer: %d tokens (%.1f s).", len(tokenizer), time.perf_counter() - started)

    torch.manual_seed(config.seed)
    model = build_model(config, tokenizer)
    eval_blocks = held_out_blocks(
        tokenizer, held_out_articles, block_len=config.block_len, num_blocks=config.eval_blocks
    )
    random_init = evaluate_blocks(model, tokenizer, eval_blocks)
    num_parameters = sum(parameter.numel() for parameter in model.parameters())
    logger.info(
        "GPT-2 %d x %d, %d heads, %d positions: %d parameters; random-init held-out loss %.3f "
        "(ln vocab %.3f).",
        config.n_layer,
        config.n_embd,
        config.n_head,
        config.n_positions,
        num_parameters,
        random_init["loss"],
        random_init["ln_vocab"],
    )

    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": config.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=config.learning_rate,
        betas=(0.9, 0.95),
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, partial_cosine(config))
    model.train()
    train_started = time.perf_counter()
    running = None
    for step in range(1, config.steps + 1):
        input_ids = batches.next_batch()
        loss = model(input_ids=input_ids, labels=input_ids, use_cache=False).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        schedule.step()
        loss_value = loss.item()
        running = loss_value if running is None else 0.9 * running + 0.1 * loss_value
        if step % log_every == 0 or step == config.steps:
            elapsed = time.perf_counter() - train_started
            logger.info(
                "step %d/%d  loss %.3f (smoothed %.3f)  grad norm %.2f  lr %.2e  "
                "%.0f tokens/s  %.0f s elapsed, ~%.0f s left",
                step,
                config.steps,
                loss_value,
                running,
                float(grad_norm),
                schedule.get_last_lr()[0],
                step * input_ids.numel() / elapsed,
                elapsed,
                elapsed / step * (config.steps - step),
            )
    train_seconds = time.perf_counter() - train_started
    model.eval()
    held_out = evaluate_blocks(model, tokenizer, eval_blocks)
    logger.info(
        "Done in %.0f s: held-out English loss %.3f nats/token (random init %.3f, ln vocab %.3f).",
        train_seconds,
        held_out["loss"],
        random_init["loss"],
        held_out["ln_vocab"],
    )
    output_dir.mkdir(parents=True, exist_ok=True)
    # fp16 halves the shipped size; load_language_model upcasts to float32.
    model.half().save_pretrained(output_dir, safe_serialization=True)
    tokenizer.save_pretrained(output_dir)
    report = {
        "corpus": corpus,
        "config": dataclasses.asdict(config),
        "command": command,
        "parameters": num_parameters,
        "train_seconds": round(train_seconds, 1),
        "threads": torch.get_num_threads(),
        "held_out": held_out,
        "random_init_held_out": random_init,
        "markov_entropy_rate": floor,
    }
    (output_dir / RECIPE_FILE).write_text(json.dumps(report, indent=2) + "\n")
    write_model_card(output_dir)
    logger.info("Saved to %s (%.1f MB).", output_dir, directory_megabytes(output_dir))
    return report


def write_model_card(output_dir: Path) -> None:
    """README.md for a pre-trained directory, from the run's own record (`RECIPE_FILE`)."""
    report = json.loads((output_dir / RECIPE_FILE).read_text())
    config = report["config"]
    held_out, random_init = report["held_out"], report["random_init_held_out"]
    corpus = {
        "english": "the training articles of the shipped English Wikipedia sample "
        "(`rllib_lamo/resources/wikipedia_en_sample.jsonl.xz`)",
        "synthetic": "token sequences of a seeded random first-order Markov chain over the same "
        f"vocabulary (temperature {config['markov_temperature']}; entropy rate "
        f"{report['markov_entropy_rate'] or 0:.2f} nats/token)",
    }[report["corpus"]]
    weights = sum(f.stat().st_size for f in output_dir.glob("*.safetensors")) / 1e6
    vocab = round(math.exp(held_out["ln_vocab"]))
    (output_dir / "README.md").write_text(
        f"""# {output_dir.name}

GPT-2 architecture (`GPT2LMHeadModel`): {config["n_layer"]} blocks x {config["n_embd"]} hidden,
{config["n_head"]} heads, {config["n_positions"]} positions, tied input/output embeddings,
{report["parameters"]:,} parameters; byte-level BPE tokenizer of {
            vocab:,} tokens (`<|endoftext|>` is EOS, BOS and padding).
Pre-trained on {corpus}; {config["held_out_articles"]} articles drawn with seed {config["seed"]}
are held out from the tokenizer and the LM.

Made with (seed {config["seed"]}, {report["threads"]} torch threads):

```bash
{report["command"]}
```

- Training: {config["steps"]} AdamW steps of {config["batch_size"]} x {config["block_len"]} tokens
  (lr {config["learning_rate"]}, {config["warmup_steps"]} warmup steps, cosine decay to
  {config["min_lr_ratio"]} of it, weight decay {config["weight_decay"]}, gradient clipping
  {config["grad_clip"]}), next-token loss; {report["train_seconds"]:.0f} s on the machine it ran on.
- Size on disk: {weights:.1f} MB of fp16 safetensors ({directory_megabytes(output_dir):.1f} MB
  with the tokenizer and config); `load_language_model` upcasts to float32.

Held-out English next-token loss ({held_out["tokens"]:,} predicted tokens, first
{config["eval_blocks"]} blocks of {config["block_len"]} tokens of the held-out articles):

| model | loss (nats/token) | nats/byte |
|---|---|---|
| this model | {held_out["loss"]:.3f} | {held_out["nats_per_byte"]:.3f} |
| same architecture, random init (seed {config["seed"]}) | {random_init["loss"]:.3f} | {
            random_init["nats_per_byte"]:.3f} |
| uniform over the vocabulary, ln(vocab) | {held_out["ln_vocab"]:.3f} | |
"""
    )


def partial_cosine(config: PretrainConfig):
    """Linear warmup, then cosine decay to ``min_lr_ratio`` of the peak learning rate."""

    def factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
        cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        return config.min_lr_ratio + (1 - config.min_lr_ratio) * cosine

    return factor


def directory_megabytes(directory: Path) -> float:
    return sum(file.stat().st_size for file in directory.rglob("*") if file.is_file()) / 1e6


def evaluate_models(
    specs: list[str], *, num_blocks: int, block_len: int, held_out_articles: int, seed: int
) -> list[dict]:
    """Held-out loss of each ``NAME`` or ``NAME:LAYERS`` (first LAYERS blocks) on the same text."""
    _, documents = split_builtin_articles(held_out_articles, seed)
    rows = []
    for spec in specs:
        name, _, layers = spec.rpartition(":") if ":" in spec else (spec, "", "")
        started = time.perf_counter()
        model, tokenizer = load_language_model(name, num_layers=int(layers) if layers else None)
        blocks = held_out_blocks(tokenizer, documents, block_len=block_len, num_blocks=num_blocks)
        result = evaluate_blocks(model, tokenizer, blocks)
        result.update(
            model=name,
            layers=model.config.num_hidden_layers,
            parameters=sum(parameter.numel() for parameter in model.parameters()),
            seconds=round(time.perf_counter() - started, 1),
        )
        logger.info("%s", result)
        rows.append(result)
    return rows


def markdown_table(rows: list[dict]) -> str:
    lines = [
        "| model | blocks | parameters | loss (nats/token) | ln(vocab) | nats/byte |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['model']} | {row['layers']} | {row['parameters'] / 1e6:.1f}M | "
            f"{row['loss']:.2f} | {row['ln_vocab']:.2f} | {row['nats_per_byte']:.3f} |"
        )
    return "\n".join(lines)


def build_synthetic_control(
    cache_dir: str | None = None, *, threads: int | None = 2, log_every: int = 10
) -> Path:
    """Builds ``lamo-tiny-synthetic`` once: the shipped English model's recipe and tokenizer,
    pre-trained on Markov-chain tokens, into the folder `load_language_model` reads it from."""
    english = packaged_tiny_english_dir()
    recipe = json.loads((english / RECIPE_FILE).read_text())["config"]
    return build_directory_once(
        synthetic_tiny_dir(cache_dir),
        lambda output_dir: pretrain(
            "synthetic",
            output_dir,
            PretrainConfig(**recipe),
            tokenizer_source=str(english),
            threads=threads,
            log_every=log_every,
            command="lamo-lm pretrain --corpus synthetic",
        ),
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lamo-lm", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    pretrain_parser = commands.add_parser("pretrain", help="pre-train the small LM")
    pretrain_parser.add_argument(
        "--output",
        type=Path,
        help="output directory (required for english; synthetic: the cache folder that "
        "`language_model: lamo-tiny-synthetic` loads, with the shipped model's recipe)",
    )
    pretrain_parser.add_argument("--corpus", choices=CORPORA, default="english")
    pretrain_parser.add_argument(
        "--tokenizer",
        default="lamo-tiny-en",
        help="synthetic corpus only: the LM whose tokenizer (vocabulary) to reuse",
    )
    pretrain_parser.add_argument("--threads", type=int, default=2)
    pretrain_parser.add_argument("--log-every", type=int, default=10)
    for field in dataclasses.fields(PretrainConfig):
        pretrain_parser.add_argument(
            f"--{field.name.replace('_', '-')}", type=type(field.default), default=field.default
        )
    evaluate_parser = commands.add_parser(
        "evaluate", help="held-out English next-token loss of LMs (NAME or NAME:LAYERS)"
    )
    evaluate_parser.add_argument("models", nargs="+")
    evaluate_parser.add_argument("--num-blocks", type=int, default=16)
    evaluate_parser.add_argument("--block-len", type=int, default=256)
    evaluate_parser.add_argument("--held-out-articles", type=int, default=6)
    evaluate_parser.add_argument("--seed", type=int, default=0)
    evaluate_parser.add_argument("--threads", type=int, default=2)
    evaluate_parser.add_argument("--json", type=Path, help="also write the rows here")
    return parser


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = _parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.command == "pretrain" and args.corpus == "synthetic" and args.output is None:
        build_synthetic_control(threads=args.threads, log_every=args.log_every)
        return
    if args.command == "pretrain":
        if args.output is None:
            _parser().error("pretrain --corpus english needs --output DIR")
        config = PretrainConfig(
            **{
                field.name: getattr(args, field.name)
                for field in dataclasses.fields(PretrainConfig)
            }
        )
        command = "lamo-lm " + shlex.join(sys.argv[1:] if argv is None else argv)
        pretrain(
            args.corpus,
            args.output,
            config,
            tokenizer_source=args.tokenizer if args.corpus == "synthetic" else None,
            threads=args.threads,
            log_every=args.log_every,
            command=command,
        )
        return
    rows = evaluate_models(
        args.models,
        num_blocks=args.num_blocks,
        block_len=args.block_len,
        held_out_articles=args.held_out_articles,
        seed=args.seed,
    )
    print(markdown_table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
