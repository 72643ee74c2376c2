"""lamo-data: generate, convert, subset, inspect and validate trajectory datasets.

Every command that writes builds its output in a hidden temp folder and renames it into place
only when complete, so an interrupted or failed run leaves nothing behind.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence


def _generate(args: argparse.Namespace) -> None:
    from rllib_lamo.data.names import default_num_steps, kinds_of
    from rllib_lamo.envs.atari import ATARI_GAMES

    if args.task in ATARI_GAMES:
        from rllib_lamo.data.atari_generate import generate_atari

        generate_atari(
            args.task,
            args.kind or "medium",
            args.out,
            num_steps=args.steps or default_num_steps(args.task),
            seed=args.seed,
            overwrite=args.overwrite,
        )
        return
    from rllib_lamo.data.generate import generate

    generate(
        args.task,
        args.kind or kinds_of(args.task)[0],
        args.out,
        num_steps=args.steps,
        seed=args.seed,
        cache_dir=args.cache_dir,
        overwrite=args.overwrite,
        show_progress=not args.no_progress,
    )


def _report_written(meta: dict) -> None:
    returns = meta["return"]
    print(
        f"wrote {meta['name']}: {meta['num_episodes']} episodes, {meta['num_steps']} steps, "
        f"return {returns['mean']:.2f} +- {returns['std']:.2f}"
    )


def _from_minari(args: argparse.Namespace) -> None:
    from rllib_lamo.data.converters import convert_minari

    _report_written(
        convert_minari(args.source, args.out, env_id=args.env_id, overwrite=args.overwrite)
    )


def _from_d4rl(args: argparse.Namespace) -> None:
    from rllib_lamo.data.converters import convert_d4rl

    _report_written(convert_d4rl(args.file, args.out, env_id=args.env_id, overwrite=args.overwrite))


def _from_rllib(args: argparse.Namespace) -> None:
    from rllib_lamo.data.rllib_output import convert_rllib

    meta = convert_rllib(
        args.dir,
        args.out,
        env_id=args.env_id,
        recorded_actions=args.recorded_actions,
        overwrite=args.overwrite,
    )
    _report_written(meta)
    dropped = meta["source"]["dropped_unfinished_episodes"]
    if dropped:
        print(f"left out {dropped} episode(s) whose end was not recorded")


def _from_dqn_replay(args: argparse.Namespace) -> None:
    from rllib_lamo.data.dqn_replay import convert_dqn_replay, parse_checkpoints

    _report_written(
        convert_dqn_replay(
            args.dir,
            args.out or f"{args.game}-dqn-replay",
            game=args.game,
            checkpoints=parse_checkpoints(args.checkpoints),
            num_steps=args.steps,
            trajectories_per_buffer=args.trajectories_per_buffer,
            max_transitions_per_buffer=args.max_transitions_per_buffer,
            seed=args.seed,
            overwrite=args.overwrite,
        )
    )


def _subset(args: argparse.Namespace) -> None:
    from rllib_lamo.data.subsets import write_subset

    _report_written(
        write_subset(
            args.path, args.out, ratio=args.ratio, seed=args.seed, overwrite=args.overwrite
        )
    )


def _info(args: argparse.Namespace) -> None:
    from rllib_lamo.data.info import dataset_info, format_info

    info = dataset_info(args.path)
    print(json.dumps(info, indent=1) if args.json else format_info(info))


def _validate(args: argparse.Namespace) -> None:
    from rllib_lamo.data.validation import validate_dataset

    meta = validate_dataset(args.path)
    print(f"{args.path}: valid ({meta['num_episodes']} episodes, {meta['num_steps']} steps)")


def build_parser() -> argparse.ArgumentParser:
    from rllib_lamo.data.generate import DEFAULT_CACHE_DIR
    from rllib_lamo.data.names import (
        ALL_KINDS,
        DEFAULT_NUM_STEPS,
        TASK_ENVS,
        TASK_KINDS,
        default_num_steps,
    )
    from rllib_lamo.data.rllib_output import ACTION_MODES
    from rllib_lamo.envs.atari import ATARI_GAMES

    parser = argparse.ArgumentParser(prog="lamo-data", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, run: Callable[[argparse.Namespace], None], help_text: str):
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(run=run)
        return p

    p = command(
        "generate",
        _generate,
        "train a behaviour policy on a MuJoCo v5 task or Reacher2d-v0 (or reuse "
        "it from the cache) and record a D4RL-style dataset; kitchen: scripted demonstrations; "
        "Atari (pong, breakout): a scripted policy with epsilon noise",
    )
    p.add_argument("task", choices=sorted([*TASK_ENVS, *ATARI_GAMES]))
    p.add_argument(
        "--kind",
        choices=ALL_KINDS,
        default=None,
        help=f"default medium; kitchen: {', '.join(TASK_KINDS['kitchen'])} (default complete)",
    )
    p.add_argument("--out", default=None, help="output folder (default ./<task>-<kind>-v<N>)")
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help=f"steps per policy (default {DEFAULT_NUM_STEPS}; kitchen "
        f"{default_num_steps('kitchen')}; Atari {default_num_steps('breakout')})",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-dir", default=str(DEFAULT_CACHE_DIR), help="trained policies")
    p.add_argument("--no-progress", action="store_true")

    p = command("from-minari", _from_minari, "convert a Minari dataset (local id or folder)")
    p.add_argument("source", metavar="ID_OR_PATH")
    p.add_argument("out", metavar="OUT")
    p.add_argument("--env-id", default=None, help="override the env id (scores, spaces)")

    p = command("from-d4rl", _from_d4rl, "convert a D4RL-layout HDF5 file")
    p.add_argument("file", metavar="FILE.hdf5")
    p.add_argument("out", metavar="OUT")
    p.add_argument(
        "--env-id",
        default=None,
        help="e.g. Hopper-v5 or hopper-medium-v2: scores, and spaces when registered",
    )

    p = command(
        "from-rllib", _from_rllib, "convert RLlib's recorded offline output (either layout)"
    )
    p.add_argument("dir", metavar="DIR")
    p.add_argument("out", metavar="OUT")
    p.add_argument("--env-id", default=None, help="registered env id giving the spaces")
    p.add_argument(
        "--recorded-actions",
        choices=ACTION_MODES,
        default="normalized",
        help="how the recording config mapped actions to the env: 'normalized' "
        "(RLlib's default normalize_actions=True), 'clipped' (clip_actions=True)",
    )

    p = command(
        "from-dqn-replay",
        _from_dqn_replay,
        "sample and convert DQN Replay Dataset checkpoints ($store$_*_ckpt.N.gz) as DT does",
    )
    p.add_argument("dir", metavar="DIR", help="a run's replay_logs folder")
    p.add_argument("--game", choices=sorted(ATARI_GAMES), required=True)
    p.add_argument(
        "--checkpoints", required=True, help="checkpoint numbers: 49, 40-49 or 1,5,40-42"
    )
    p.add_argument("--out", default=None, help="output folder (default ./<game>-dqn-replay)")
    p.add_argument("--steps", type=int, default=500_000, help="transitions to take (DT: 500K)")
    p.add_argument("--trajectories-per-buffer", type=int, default=10)
    p.add_argument("--max-transitions-per-buffer", type=int, default=100_000)
    p.add_argument("--seed", type=int, default=0)

    p = command("subset", _subset, "seeded random subset of whole episodes")
    p.add_argument("path", metavar="IN")
    p.add_argument("out", metavar="OUT")
    p.add_argument("--ratio", type=float, required=True, help="e.g. 0.01 keeps 1%% of episodes")
    p.add_argument("--seed", type=int, default=0)

    p = command("info", _info, "episodes, steps, returns, spaces and size of a dataset")
    p.add_argument("path", metavar="PATH")
    p.add_argument("--json", action="store_true")

    p = command("validate", _validate, "check every shard of a dataset against the format")
    p.add_argument("path", metavar="PATH")

    for name in ("generate", "from-minari", "from-d4rl", "from-rllib", "from-dqn-replay", "subset"):
        sub.choices[name].add_argument(
            "--overwrite", action="store_true", help="replace an existing output folder"
        )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
        sys.stdout.flush()  # here, so that a closed pipe is caught below, not at exit
    except (ValueError, FileExistsError, FileNotFoundError) as err:  # DatasetError included
        print(f"lamo-data {args.command}: error: {err}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # The reader (`| head`) stopped reading: not an error. Point stdout at devnull so that
        # the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
