"""The `rllib` command (Ray 2.60 ships none): train experiment files through Ray Tune, evaluate.

    rllib train file tuned_examples/hopper-medium-lamo.yaml --stop '{"training_iteration": 5}'
    rllib train file my_experiment.py --config '{"lr": 3e-4}' --checkpoint-freq 5
    rllib train file tuned_examples/hopper-medium-lamo.yaml --resume
    rllib evaluate ray_results/hopper-medium-lamo/LaMo_.../checkpoint_000039 --episodes 20

`train file` keeps the old RLlib file syntax (layout: `rllib_lamo.experiments.experiment_file`) but
runs on the new API stack, through `tune.Tuner`: every experiment is a Tune experiment under
``<storage path>/<experiment name>``, which is also where `--resume` looks for it. Everything
wrong in the file or the flags is reported before Ray starts, as one line, with exit code 2.

Exit codes: 0 done, 1 a trial failed, 2 bad usage or experiment file, 130 interrupted (resume it
with `--resume`).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rllib_lamo import metrics as m
from rllib_lamo.experiments import store
from rllib_lamo.experiments.console import quiet_console, ray_init_options
from rllib_lamo.experiments.errors import root_cause
from rllib_lamo.experiments.experiment_file import (
    ExperimentError,
    ExperimentSpec,
    load_experiments,
)
from rllib_lamo.experiments.results import MISSING, first_present, flatten, format_number
from rllib_lamo.storage import is_uri

if TYPE_CHECKING:
    from ray.tune import Callback, Checkpoint, ResultGrid
    from ray.tune.result_grid import Result

EXIT_OK = 0
EXIT_TRIAL_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
# Ray Data stalls without spare logical CPUs for its read tasks, which small machines lack.
MIN_LOCAL_NUM_CPUS = 4
DEFAULT_OBJECT_STORE_MB = 1024
# Checkpoint scores tried in order when the experiment names no `checkpoint_score_attribute`.
BEST_CHECKPOINT_METRICS = (
    m.evaluation_metric(m.BEST, m.NORMALISED_SCORE),
    m.evaluation_metric(m.BEST, m.RETURN),
    m.RLLIB_EVALUATION_RETURN,
)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `rllib` console script and of ``python -m rllib_lamo.experiments.cli``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    quiet_console(getattr(args, "verbose", False))
    try:
        return args.handler(args)
    except ExperimentError as error:
        return _fail(str(error), args.verbose)
    except KeyboardInterrupt:
        print("rllib: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rllib",
        description="Train RLlib algorithms (LaMo and RLlib's own) from experiment files "
        "through Ray Tune, and evaluate checkpoints.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    ray_options = _ray_options_parser()

    train = commands.add_parser(
        "train",
        help="train from an experiment file",
        description="Train from an experiment file through Ray Tune.",
    )
    train_sources = train.add_subparsers(dest="source", required=True, metavar="SOURCE")
    train_file = train_sources.add_parser(
        "file",
        parents=[ray_options],
        help="run the experiment(s) in a YAML or Python file",
        description="Run the experiment(s) in a YAML or Python file through Ray Tune.",
        epilog="YAML: {name: {run: LaMo, env: Hopper-v5, stop: {...}, config: {...}, "
        "checkpoint_config: {...}, storage_path: ...}}. Python: defines `config` (an "
        "AlgorithmConfig) and optionally `stop`, `name`, `checkpoint_config`. Relative local "
        "paths in the config are resolved against the current directory.",
    )
    train_file.add_argument("file", metavar="FILE", help="experiment file (.yaml, .yml or .py)")
    train_file.add_argument(
        "--stop",
        type=_json_object,
        metavar="JSON",
        help="stop criteria, merged over the file's: '{\"training_iteration\": 40}'",
    )
    train_file.add_argument(
        "--config",
        type=_json_object,
        metavar="JSON",
        help='config keys set over the file\'s: \'{"lr": 3e-4, "seed": 1}\'',
    )
    train_file.add_argument(
        "--only",
        type=_names,
        metavar="NAME[,NAME]",
        help="run only these experiments of the file (default: all, in the file's order)",
    )
    train_file.add_argument(
        "--storage-path",
        metavar="DIR",
        help=f"where experiments are written (default: the file's storage_path, else "
        f"./{store.DEFAULT_STORAGE_PATH}); a local folder or a cloud URI",
    )
    train_file.add_argument(
        "--checkpoint-freq",
        type=_non_negative_int,
        metavar="N",
        help="checkpoint every N iterations (default: the file's checkpoint_config, else only "
        "at the end); a checkpoint is always written at the end",
    )
    train_file.add_argument(
        "--resume",
        action="store_true",
        help="continue the experiment(s) saved under the storage path, with their saved "
        "settings (unfinished and errored trials resume from their last checkpoint)",
    )
    _add_mlflow_options(train_file)
    train_file.set_defaults(handler=train_from_file)

    evaluate = commands.add_parser(
        "evaluate",
        parents=[ray_options],
        help="evaluate a LaMo checkpoint at its target returns",
        description="Roll out a LaMo checkpoint on env runners, per target return.",
        epilog="Security: checkpoints and MLflow models are pickles, and unpickling can run "
        "code. Evaluate only checkpoints and models from a trusted source. A checkpoint whose "
        "algorithm class is not LaMo is refused before anything in it is unpickled.",
    )
    evaluate.add_argument(
        "checkpoint",
        metavar="CHECKPOINT",
        help="checkpoint folder or URI, or an MLflow model (runs:/<run id>/policy, "
        "models:/<name>/<version>)",
    )
    evaluate.add_argument(
        "--episodes",
        type=_positive_int,
        default=10,
        metavar="N",
        help="episodes per target (default 10)",
    )
    evaluate.add_argument(
        "--target-return",
        dest="target_returns",
        type=float,
        nargs="+",
        action="extend",
        metavar="R",
        help="target return(s) (default: the checkpoint's `target_returns`)",
    )
    evaluate.add_argument(
        "--num-env-runners",
        type=_non_negative_int,
        default=2,
        metavar="N",
        help="parallel env runners (0: evaluate in this process; default 2)",
    )
    evaluate.add_argument("--seed", type=int, help="seed of the evaluation environments")
    evaluate.add_argument(
        "--mlflow-uri",
        metavar="URI",
        help="tracking URI that runs:/ and models:/ refer to (default: $MLFLOW_TRACKING_URI, "
        f"else the store `rllib train` writes: sqlite:///{store.DEFAULT_STORAGE_PATH}/"
        f"{store.DEFAULT_DB_FILE})",
    )
    evaluate.set_defaults(handler=evaluate_command)
    return parser


def _add_mlflow_options(train_file: argparse.ArgumentParser) -> None:
    """Experiment tracking (`rllib_lamo.experiments.tracking`): every trial is an MLflow run."""
    group = train_file.add_argument_group("MLflow")
    group.add_argument(
        "--mlflow-uri",
        metavar="URI",
        help="tracking URI (default: the experiment's mlflow.tracking_uri, else "
        "$MLFLOW_TRACKING_URI, else sqlite:///<storage path>/mlflow.db)",
    )
    group.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    group.add_argument(
        "--register-model",
        metavar="NAME",
        help="register each trial's final policy in the MLflow model registry under NAME",
    )


def _ray_options_parser() -> argparse.ArgumentParser:
    """Options every command that starts or joins Ray shares."""
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("Ray")
    group.add_argument(
        "--ray-address",
        metavar="ADDR",
        help="join a running cluster ('auto', 'ray://host:10001', ...; default: $RAY_ADDRESS, "
        "else start a local one)",
    )
    group.add_argument(
        "--ray-num-cpus",
        type=_positive_int,
        metavar="N",
        help=f"logical CPUs of the local cluster (default: max({MIN_LOCAL_NUM_CPUS}, cores), "
        "more than the cores, as Ray Data needs spare ones)",
    )
    group.add_argument(
        "--ray-object-store-mb",
        type=_positive_int,
        metavar="MB",
        help=f"object store of the local cluster (default {DEFAULT_OBJECT_STORE_MB})",
    )
    parent.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="also show Tune's own status output, Ray Data progress bars and tracebacks",
    )
    return parent


# ----------------------------------------------------------------------------------- train
def train_from_file(args: argparse.Namespace) -> int:
    """`rllib train file`: checks everything, then runs each experiment in the file in turn."""
    _check_ray_options(args)
    if args.resume:
        fixed = [f for f, value in _run_setting_flags(args).items() if value is not None]
        if fixed:
            raise ExperimentError(
                f"--resume continues a saved experiment with its saved settings; it cannot be "
                f"combined with {', '.join(fixed)}"
            )
    specs = load_experiments(args.file, config_overrides=args.config, stop_overrides=args.stop)
    if args.only:
        if unknown := [name for name in args.only if name not in {s.name for s in specs}]:
            raise ExperimentError(
                f"{args.file}: --only names no experiment {', '.join(map(repr, unknown))}; "
                f"the file has {', '.join(repr(s.name) for s in specs)}"
            )
        specs = [spec for spec in specs if spec.name in args.only]
    plan = [(spec, store.storage_root(args.storage_path, spec.storage_path)) for spec in specs]
    for spec, storage_root in plan:
        _check_experiment_folder(spec, storage_root, resume=args.resume, file=args.file)

    # Tune saves the experiment's state (which checkpoint each trial resumes from) every
    # 10+ s by default: a run killed just after a checkpoint resumed from the one before and
    # redid an iteration. Every 2 s instead: on every controller step it cost the driver ~8%
    # of a core (each save serialises every trial's last result).
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")
    _start_ray(args)
    exit_code = EXIT_OK
    try:
        for spec, storage_root in plan:
            outcome = run_experiment(spec, storage_root, args)
            exit_code = max(exit_code, outcome)
            if outcome == EXIT_INTERRUPTED:
                break
    finally:
        _stop_ray()
    return exit_code


def run_experiment(spec: ExperimentSpec, storage_root: str, args: argparse.Namespace) -> int:
    """Runs (or resumes) one experiment with Tune and reports where its results are."""
    from ray import tune

    experiment_path = f"{storage_root}/{spec.name}"
    verb = "resuming" if args.resume else "running"
    print(f"rllib: {verb} experiment {spec.name!r}: {spec.algo_name} on {spec.env} ({spec.source})")
    print(f"  results and checkpoints: {experiment_path}")
    if not args.resume:
        print(f"  stop: {_describe_stop(spec.stop)}", flush=True)
    if args.resume:
        tuner = tune.Tuner.restore(
            experiment_path, trainable=spec.trainable, resume_unfinished=True, resume_errored=True
        )
    else:
        checkpoint_settings = {"checkpoint_at_end": True, **spec.checkpoint_config}
        if args.checkpoint_freq is not None:
            checkpoint_settings["checkpoint_frequency"] = args.checkpoint_freq
        tuner = tune.Tuner(
            spec.trainable,
            param_space=spec.config,
            tune_config=tune.TuneConfig(num_samples=spec.num_samples),
            run_config=tune.RunConfig(
                name=spec.name,
                storage_path=storage_root,
                stop=spec.stop or None,
                checkpoint_config=tune.CheckpointConfig(**checkpoint_settings),
                callbacks=tune_callbacks(args, spec, storage_root),
                verbose=1 if args.verbose else 0,
            ),
        )
    results = tuner.fit()
    return report_results(results, spec, args)


def tune_callbacks(
    args: argparse.Namespace, spec: ExperimentSpec, storage_root: str
) -> list[Callback]:
    """Tune callbacks of a run: the progress table and, unless `--no-mlflow`, MLflow."""
    # Imported when needed, as Tune and MLflow cost seconds to import.
    from rllib_lamo.experiments.csv_logger import ResumableCSVLogger
    from rllib_lamo.experiments.progress import ProgressTable

    callbacks: list[Callback] = [
        ProgressTable(show_checkpoints=args.verbose),
        ResumableCSVLogger(),
    ]
    if not args.no_mlflow:
        from rllib_lamo.experiments.tracking import mlflow_callback

        callbacks.append(mlflow_callback(spec, storage_root, args.mlflow_uri, args.register_model))
    return callbacks


def report_results(results: ResultGrid, spec: ExperimentSpec, args: argparse.Namespace) -> int:
    """Prints each trial's outcome and best checkpoint; returns the exit code."""
    score_attribute = spec.checkpoint_config.get("checkpoint_score_attribute")
    score_order = spec.checkpoint_config.get("checkpoint_score_order", "max")
    failures = []
    for result in results:
        where = result.path or "(no results)"
        if result.error is not None:
            failures.append((where, root_cause(result.error)))
            continue
        checkpoint, metric, value = best_checkpoint(result, score_attribute, score_order)
        if checkpoint is None:
            print(f"rllib: no checkpoint written in {where}")
        elif metric is None:
            print(f"rllib: latest checkpoint (no evaluation score to rank by): {checkpoint.path}")
        else:
            print(f"rllib: best checkpoint ({metric} = {value:.4g}): {checkpoint.path}")
    if failures:
        # The causes come last, where a user looks first; the tracebacks stay in the files.
        print(f"rllib: {len(failures)} of {len(results)} trial(s) failed", file=sys.stderr)
        for where, cause in failures:
            print(f"  full traceback: {where}/error.txt", file=sys.stderr)
            print(f"rllib: trial failed: {cause}", file=sys.stderr)
        return EXIT_TRIAL_FAILED
    # Tune marks a trial's last result `done` when it stopped on its own (criteria met or
    # training finished); after Ctrl-C the trials are stopped without it.
    if any(not (result.metrics or {}).get("done") for result in results):
        resume = f"rllib train file {shlex.quote(args.file)} --resume"
        if args.storage_path:
            resume += f" --storage-path {shlex.quote(args.storage_path)}"
        print(f"rllib: interrupted; continue with: {resume}", file=sys.stderr)
        return EXIT_INTERRUPTED
    return EXIT_OK


def best_checkpoint(
    result: Result, score_attribute: str | None = None, score_order: str = "max"
) -> tuple[Checkpoint | None, str | None, float | None]:
    """The trial's best kept checkpoint, its score's name and value.

    Ranks by the experiment's `checkpoint_score_attribute`, else by the first of
    `BEST_CHECKPOINT_METRICS` that any checkpoint has; falls back to the latest checkpoint.
    """
    scored = [(checkpoint, flatten(metrics)) for checkpoint, metrics in result.best_checkpoints]
    for metric in [score_attribute] if score_attribute else BEST_CHECKPOINT_METRICS:
        ranked = [
            (value, checkpoint)
            for checkpoint, metrics in scored
            if (value := first_present(metrics, [metric])) is not None
        ]
        if ranked:
            pick = min if score_order == "min" else max
            value, checkpoint = pick(ranked, key=lambda pair: pair[0])
            return checkpoint, metric, float(value)
    return result.checkpoint, None, None


def _check_experiment_folder(
    spec: ExperimentSpec, storage_root: str, *, resume: bool, file: str
) -> None:
    """Fresh runs never write into an old experiment; `--resume` needs one to exist."""
    from ray import tune

    experiment_path = f"{storage_root}/{spec.name}"
    saved = tune.Tuner.can_restore(experiment_path)
    if resume and not saved:
        raise ExperimentError(
            f"{file}: no saved experiment {spec.name!r} to resume in {storage_root}"
        )
    if not resume and saved:
        raise ExperimentError(
            f"{file}: {experiment_path} already holds experiment {spec.name!r}: add --resume to "
            "continue it, or remove it or choose another --storage-path to start over"
        )


def _run_setting_flags(args: argparse.Namespace) -> dict[str, Any]:
    return {"--stop": args.stop, "--config": args.config, "--checkpoint-freq": args.checkpoint_freq}


def _describe_stop(stop: Mapping[str, float]) -> str:
    if not stop:
        return "none (runs until interrupted; continue later with --resume)"
    return ", ".join(f"{key} >= {value}" for key, value in stop.items())


# -------------------------------------------------------------------------------- evaluate
def evaluate_command(args: argparse.Namespace) -> int:
    """`rllib evaluate`: rolls out a checkpoint per target return and prints a table."""
    _check_ray_options(args)
    checkpoint = args.checkpoint
    if checkpoint.startswith(("runs:/", "models:/")):
        # Imported when needed: MLflow costs seconds to import.
        from rllib_lamo.experiments.policy_model import local_checkpoint

        checkpoint = local_checkpoint(checkpoint, evaluation_tracking_uri(args.mlflow_uri))
    if not is_uri(checkpoint):
        if not Path(checkpoint).is_dir():
            raise ExperimentError(f"checkpoint folder not found: {checkpoint}")
        checkpoint = str(Path(checkpoint).resolve())
        _check_checkpoint_before_ray(checkpoint)
    # Imported when needed: it loads RLlib, which costs seconds.
    from rllib_lamo.evaluation import evaluate_checkpoint

    options: dict[str, Any] = {} if args.seed is None else {"seed": args.seed}
    _start_ray(args)
    try:
        metrics = evaluate_checkpoint(
            checkpoint,
            episodes=args.episodes,
            target_returns=args.target_returns,
            num_env_runners=args.num_env_runners,
            **options,
        )
    except Exception as error:  # a failure inside Ray: summarise it like a failed trial
        if args.verbose:
            traceback.print_exc()
        print(f"rllib: error: evaluation failed: {root_cause(error)}", file=sys.stderr)
        return EXIT_TRIAL_FAILED
    finally:
        _stop_ray()
    print(evaluation_table(metrics))
    return EXIT_OK


def evaluation_tracking_uri(flag: str | None) -> str:
    """The store `runs:/` and `models:/` refer to: flag, $MLFLOW_TRACKING_URI, else train's.

    `rllib train` writes to ``<storage path>/mlflow.db``, by default ./ray_results/mlflow.db;
    a missing default store is named rather than silently created empty.
    """
    from rllib_lamo.experiments.experiment_file import MLflowSettings

    uri = store.resolve_tracking_uri(flag, MLflowSettings(), store.storage_root(None, None))
    missing = store.missing_local_store(uri)
    if missing and (flag or os.environ.get("MLFLOW_TRACKING_URI")):
        raise ExperimentError(f"no MLflow store at {missing} (from {uri})")
    if missing:
        raise ExperimentError(
            f"no MLflow store at {missing} (where `rllib train` writes by default): run "
            "from the folder you trained in, or pass --mlflow-uri"
        )
    return uri


def _check_checkpoint_before_ray(checkpoint: str) -> None:
    """A folder that is no complete LaMo checkpoint is named, with what it lacks."""
    from rllib_lamo.checkpoints import check_checkpoint_folder

    try:
        check_checkpoint_folder(checkpoint)
    except (FileNotFoundError, ValueError) as error:
        raise ExperimentError(str(error)) from error


def evaluation_table(metrics: Mapping[str, Any]) -> str:
    """Target, episodes, return and normalised score (mean ± std) per target, then the best."""

    def mean_std(values: Mapping[str, Any], name: str) -> str:
        if f"{name}_mean" not in values:
            return MISSING
        return f"{values[f'{name}_mean']:.1f} ± {values.get(f'{name}_std', 0.0):.1f}"

    per_target = [
        values
        for values in metrics.values()
        if isinstance(values, Mapping) and m.RETURN_MEAN in values
    ]
    header = ("target", "episodes", "return", "normalised")
    rows = [
        (
            format_number(values.get("target_return")),
            format_number(values.get("num_episodes")),
            mean_std(values, "return"),
            mean_std(values, "normalised_score"),
        )
        for values in per_target
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True))
        for row in [header, *rows]
    ]
    best = metrics.get("best")
    if isinstance(best, Mapping):
        summary = f"return {best['return']:.1f}" if "return" in best else "return -"
        if "normalised_score" in best:
            summary += f", normalised {best['normalised_score']:.1f}"
        lines.append(f"best target: {format_number(best.get('target_return'))} ({summary})")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------- Ray
def _check_ray_options(args: argparse.Namespace) -> None:
    if args.ray_address and (args.ray_num_cpus or args.ray_object_store_mb):
        raise ExperimentError(
            "--ray-num-cpus and --ray-object-store-mb size a local cluster; they cannot be "
            "combined with --ray-address"
        )


def _start_ray(args: argparse.Namespace) -> None:
    """Joins `--ray-address` (or $RAY_ADDRESS), else starts a local cluster sized for it."""
    import ray

    options = ray_init_options(args.verbose)
    address = args.ray_address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, **options)
    else:
        # "local": always a cluster of our own; without it Ray joins the newest `ray start` head
        # on this machine (its /tmp/ray/ray_current_cluster) and then refuses `num_cpus`.
        ray.init(
            address="local",
            num_cpus=args.ray_num_cpus or max(MIN_LOCAL_NUM_CPUS, os.cpu_count() or 1),
            object_store_memory=(args.ray_object_store_mb or DEFAULT_OBJECT_STORE_MB) * 1024**2,
            include_dashboard=False,
            **options,
        )
    if not args.verbose and (logs := _session_logs()):
        print(f"rllib: Ray's logs (actors' output): {logs} (-v shows them here)", flush=True)


def _session_logs() -> str | None:
    """The local Ray session's log folder (None when connected through Ray Client)."""
    from ray._private.worker import global_worker

    node = getattr(global_worker, "node", None)
    return f"{node.get_session_dir_path()}/logs" if node is not None else None


def _stop_ray() -> None:
    import ray

    ray.shutdown()


# ------------------------------------------------------------------------------- arguments
def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"not valid JSON ({error.msg}): {text}") from error
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object {{...}}, got: {text}")
    return value


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def _positive_int(text: str) -> int:
    return _bounded_int(text, 1, "a positive integer")


def _non_negative_int(text: str) -> int:
    return _bounded_int(text, 0, "an integer >= 0")


def _bounded_int(text: str, minimum: int, description: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = minimum - 1
    if value < minimum:
        raise argparse.ArgumentTypeError(f"expected {description}, got {text!r}")
    return value


def _fail(message: str, verbose: bool) -> int:
    if verbose:
        traceback.print_exc()
    print(f"rllib: error: {message}", file=sys.stderr)
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
