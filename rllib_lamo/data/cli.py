"""``lamo-data``: generate, convert, subset, inspect and validate trajectory datasets."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from rllib_lamo.data.shards import DatasetError


def _add_generate(sub: argparse._SubParsersAction) -> None:
    from rllib_lamo.data.generate import DEFAULT_CACHE_DIR, DEFAULT_NUM_STEPS, KINDS, TASKS

    p = sub.add_parser(
        "generate",
        help="train a behaviour policy on a MuJoCo v5 task and record a D4RL-style dataset",
        description="Train (or reuse from the cache) a stable-baselines3 behaviour policy and "
        "record it. Default output folder: ./<task>-<kind>-v5.",
    )
    p.add_argument("task", choices=sorted(TASKS))
    p.add_argument("--kind", choices=KINDS, default="medium")
    p.add_argument("--out", default=None, help="output dataset folder")
    p.add_argument("--steps", type=int, default=DEFAULT_NUM_STEPS, help="steps recorded per policy")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-dir", default=str(DEFAULT_CACHE_DIR), help="trained policies")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--no-progress", action="store_true")


def _run_generate(args: argparse.Namespace) -> None:
    from rllib_lamo.data.generate import generate

    generate(
        args.task,
        args.kind,
        args.out,
        num_steps=args.steps,
        seed=args.seed,
        cache_dir=args.cache_dir,
        overwrite=args.overwrite,
        show_progress=not args.no_progress,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lamo-data", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_generate(sub)
    return parser


_RUNNERS = {"generate": _run_generate}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _RUNNERS[args.command](args)
    except (DatasetError, FileExistsError, FileNotFoundError) as err:
        print(f"lamo-data {args.command}: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
