"""Experiment files for `rllib train file`: YAML or Python, turned into checked RLlib configs.

YAML: a mapping of experiment names to experiments (one file may hold several)::

    hopper-medium-lamo:
      run: LaMo                 # LaMo, or any name in ray.rllib.algorithms.registry (BC, IQL, ...)
      env: Hopper-v5
      stop: {training_iteration: 40}        # nested dicts become Tune's "a/b" keys
      config:                   # attributes of the algorithm's config, as `update_from_dict` takes
        input_: datasets/hopper-medium-v5   # relative local paths: resolved against the cwd
        language_model: smollm2-135m
        lr: {grid_search: [1.0e-4, 3.0e-4]} # Tune search spaces work as in `param_space`
      checkpoint_config: {num_to_keep: 3}   # fields of ray.tune.CheckpointConfig
      storage_path: results     # optional; `--storage-path` overrides it
      num_samples: 1            # optional; Tune samples per search-space point
      mlflow: {experiment_name: hopper, tags: {paper: lamo}}  # optional; see `MLflowSettings`

Python: the file runs as a module and defines ``config`` (an `AlgorithmConfig`; its
``algo_class`` is the algorithm) and optionally ``stop`` (dict), ``name`` (default: the file's
stem), ``checkpoint_config`` (dict), ``storage_path`` and ``num_samples``. Code under
``if __name__ == "__main__":`` does not run.

Every mistake a user can make in these files raises `ExperimentError` with a message that
names the file and the experiment: the CLI prints it as a one-line error instead of a traceback
from inside a Tune trial minutes later.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import logging
import runpy
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from rllib_lamo.checkpoints import OfflineRestoreMixin
from rllib_lamo.data.names import GeneratedDatasetName, default_num_steps, parse_dataset_name
from rllib_lamo.storage import is_uri

if TYPE_CHECKING:
    from ray.rllib.algorithms.algorithm import Algorithm
    from ray.rllib.algorithms.algorithm_config import AlgorithmConfig

LAMO = "LaMo"
OPTIONAL_KEYS = ("stop", "checkpoint_config", "storage_path", "num_samples", "mlflow")
EXPERIMENT_KEYS = ("run", "env", "config", *OPTIONAL_KEYS)
# Old-style spellings `update_from_dict` translates to attribute names (`input` -> `input_`).
CONFIG_KEY_ALIASES = {
    "input": "input_",
    "lambda": "lambda_",
    "framework": "framework_str",
    "callbacks": "callbacks_class",
    "num_workers": "num_env_runners",
    "num_cpus_for_driver": "num_cpus_for_main_process",
    "create_env_on_driver": "create_env_on_local_worker",
    "custom_eval_function": "custom_evaluation_function",
}
# Config attributes that may name a local file or folder; only existing relative paths change.
OPTIONAL_PATH_KEYS = ("language_model", "text_corpus")
# `input_` values that are not paths.
NON_PATH_INPUTS = ("sampler", "dataset")


class ExperimentError(ValueError):
    """A mistake in an experiment file or an override; the message is meant for the user."""


@dataclass(frozen=True)
class MLflowSettings:
    """The optional per-experiment ``mlflow:`` block of an experiment file.

    Where runs go and what they hold: `rllib_lamo.experiments.tracking`. video_every: render
    evaluation videos from every N-th checkpoint (0: never; the last checkpoint always gets
    them unless 0). video_max_steps caps each video's episode.
    """

    tracking_uri: str | None = None
    experiment_name: str | None = None
    run_name: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    video_every: int = 5
    video_max_steps: int = 1000


def mlflow_settings(value: Any, where: str) -> MLflowSettings:
    """Checks an experiment's ``mlflow:`` block; mistakes name the file and the key."""
    if not isinstance(value, Mapping):
        raise ExperimentError(f"{where}: `mlflow` must be a mapping, e.g. {{tracking_uri: ...}}")
    known = [f.name for f in fields(MLflowSettings)]
    unknown = [key for key in value if key not in known]
    if unknown:
        raise ExperimentError(
            f"{where}: unknown mlflow key {unknown[0]!r}; valid: {', '.join(known)}"
        )
    tags = value.get("tags") or {}
    if not isinstance(tags, Mapping):
        raise ExperimentError(f"{where}: `mlflow.tags` must be a mapping of names to values")
    for key in ("video_every", "video_max_steps"):
        number = value.get(key, 0)
        if not isinstance(number, int) or isinstance(number, bool) or number < 0:
            raise ExperimentError(f"{where}: `mlflow.{key}` must be an integer >= 0")
    return MLflowSettings(**{**value, "tags": {str(k): str(v) for k, v in tags.items()}})


@dataclass
class ExperimentSpec:
    """One experiment, ready for `tune.Tuner`: what to run, how long, where to write."""

    name: str
    source: str
    algo_name: str
    trainable: type[Algorithm]
    config: AlgorithmConfig
    stop: dict[str, float]
    checkpoint_config: dict[str, Any]
    storage_path: str | None
    num_samples: int
    # The optional `mlflow:` block, checked.
    mlflow: MLflowSettings | None = None

    @property
    def env(self) -> str:
        return str(self.config.env)


def load_experiments(
    path: str | Path,
    *,
    config_overrides: Mapping[str, Any] | None = None,
    stop_overrides: Mapping[str, Any] | None = None,
) -> list[ExperimentSpec]:
    """Reads a YAML or Python experiment file and applies `--config`/`--stop` overrides."""
    path = Path(path)
    if not path.is_file():
        raise ExperimentError(f"experiment file not found: {path}")
    if path.suffix in (".yaml", ".yml"):
        specs = _load_yaml(path, config_overrides or {}, stop_overrides or {})
    elif path.suffix == ".py":
        specs = [_load_python(path, config_overrides or {}, stop_overrides or {})]
    else:
        raise ExperimentError(f"{path}: expected a .yaml, .yml or .py experiment file")
    return specs


def algorithm_names() -> list[str]:
    """Every name `run:` accepts."""
    from ray.rllib.algorithms.registry import ALGORITHMS

    return [LAMO, *ALGORITHMS]


def resolve_algorithm(name: str, where: str) -> tuple[type[Algorithm], AlgorithmConfig]:
    """The algorithm class named by `run:` and a fresh default config of it."""
    if name == LAMO:
        from rllib_lamo.lamo import LaMo

        return LaMo, LaMo.get_default_config()
    from ray.rllib.algorithms.registry import ALGORITHMS

    if name not in ALGORITHMS:
        raise ExperimentError(
            f"{where}: unknown algorithm {name!r}{_did_you_mean(name, algorithm_names())}; "
            f"valid: {', '.join(algorithm_names())}"
        )
    algo_class, default_config = ALGORITHMS[name]()
    return algo_class, default_config


def trainable_for(algo_class: type[Algorithm]) -> type[Algorithm]:
    """The class Tune runs: RLlib's own algorithms get the offline-restore fix mixed in.

    Ray 2.60's `Algorithm.restore_from_path` syncs weights to the training env runners, which
    offline algorithms (BC, MARWIL, CQL, IQL) do not have, so `Tuner.restore` of such a run
    dies with `'NoneType' object has no attribute 'sync_weights'`. The subclass keeps the
    algorithm's name, which Tune stores and compares on restore. LaMo fixes this itself
    (both with `rllib_lamo.checkpoints.restore_offline`).
    """
    from ray.rllib.algorithms.algorithm import Algorithm

    if algo_class.restore_from_path is not Algorithm.restore_from_path:
        return algo_class
    return type(
        algo_class.__name__,
        (OfflineRestoreMixin, algo_class),
        {"__doc__": algo_class.__doc__, "__module__": __name__},
    )


def valid_config_keys(default_config: AlgorithmConfig) -> set[str]:
    """Keys `update_from_dict` accepts: attributes, settable properties, old spellings.

    Deprecated properties stay accepted so that RLlib's own message names their replacement.
    """
    keys = listed_config_keys(default_config)
    keys |= {name for name, _ in _settable_properties(default_config)}
    keys |= {attribute for attribute in vars(default_config) if attribute.startswith("_")}
    keys -= {"_is_frozen"}
    keys |= {alias for alias, attribute in CONFIG_KEY_ALIASES.items() if attribute in keys}
    return keys


def listed_config_keys(default_config: AlgorithmConfig) -> set[str]:
    """The public, current settings of a config (what an unknown-key message lists)."""
    from ray._common.deprecation import DEPRECATED_VALUE

    attributes = vars(default_config)
    keys = {
        key
        for key, value in attributes.items()
        if not key.startswith("_")
        and key != "algo_class"
        and not (type(value) is int and value == DEPRECATED_VALUE)
    }
    # Properties backed by a private attribute (`train_batch_size_per_learner`) are current
    # settings; the others are deprecated spellings.
    keys |= {name for name, _ in _settable_properties(default_config) if f"_{name}" in attributes}
    return keys


def _settable_properties(config: AlgorithmConfig) -> list[tuple[str, property]]:
    return [
        (name, member)
        for name, member in inspect.getmembers(type(config))
        if isinstance(member, property) and member.fset is not None and not name.startswith("_")
    ]


def check_config_keys(
    config_dict: Mapping[str, Any], default_config: AlgorithmConfig, algo_name: str, where: str
) -> None:
    """Rejects keys `update_from_dict` would silently set as dead attributes.

    The message lists the valid keys, the algorithm's own ones first, and a close match.
    """
    valid = valid_config_keys(default_config)
    unknown = [key for key in config_dict if key not in valid]
    nested = config_dict.get("evaluation_config")
    if isinstance(nested, Mapping):
        unknown += [f"evaluation_config.{key}" for key in nested if key not in valid]
    if not unknown:
        return
    from ray.rllib.algorithms.algorithm_config import AlgorithmConfig

    listed = listed_config_keys(default_config)
    rllib_keys = listed_config_keys(AlgorithmConfig())
    own = sorted(listed - rllib_keys)
    shared = sorted(listed & rllib_keys)
    public = sorted(listed)
    problems = "; ".join(
        f"unknown config key {key!r}{_did_you_mean(key.split('.')[-1], public)}" for key in unknown
    )
    lines = [f"{where}: {problems}."]
    if own:
        lines.append(_wrapped(f"{algo_name} keys: {', '.join(own)}"))
    lines.append(_wrapped(f"RLlib keys: {', '.join(shared)}"))
    raise ExperimentError("\n".join(lines))


def absolutize_paths(config: AlgorithmConfig, where: str, base: Path | None = None) -> None:
    """Makes relative local paths absolute before Tune moves trials into their own folders.

    `input_` must exist (a missing dataset should fail here, not inside a trial); `output` is
    created later; the LM and text corpus are names unless a relative path of that name exists.
    """
    base = base or Path.cwd()
    config.input_ = _absolute_inputs(config.input_, base, where)
    if isinstance(config.output, str) and not is_uri(config.output):
        config.output = str((base / config.output).resolve())
    for key in OPTIONAL_PATH_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, str) and not is_uri(value) and (base / value).exists():
            setattr(config, key, str((base / value).resolve()))


def flatten_stop(stop: Any, where: str) -> dict[str, float]:
    """Stop criteria as Tune compares them: ``{"evaluation/best/return": 3000}``."""
    if not isinstance(stop, Mapping):
        raise ExperimentError(f"{where}: `stop` must be a mapping, got {type(stop).__name__}")
    flat: dict[str, float] = {}
    for key, value in stop.items():
        if isinstance(value, Mapping):
            for sub_key, sub_value in flatten_stop(value, where).items():
                flat[f"{key}/{sub_key}"] = sub_value
        elif isinstance(value, bool) or not isinstance(value, int | float):
            raise ExperimentError(
                f"{where}: stop criterion {key!r} must be a number, got {value!r}"
            )
        else:
            flat[str(key)] = value
    return flat


def has_search_space(value: Any) -> bool:
    """Whether a config holds Tune search spaces (then it is checked per trial, not here)."""
    from ray.tune.search.sample import Domain

    if isinstance(value, Domain):
        return True
    if isinstance(value, Mapping):
        return "grid_search" in value or any(has_search_space(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(has_search_space(v) for v in value)
    return False


def _load_yaml(
    path: Path, config_overrides: Mapping[str, Any], stop_overrides: Mapping[str, Any]
) -> list[ExperimentSpec]:
    try:
        document = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ExperimentError(f"{path}: bad YAML{at}: {problem}") from error
    if not isinstance(document, Mapping) or not document:
        raise ExperimentError(
            f"{path}: expected a mapping of experiment names to experiments "
            "({name: {run: ..., env: ..., stop: ..., config: ...}})"
        )
    return [
        _yaml_experiment(path, name, body, config_overrides, stop_overrides)
        for name, body in document.items()
    ]


def _yaml_experiment(
    path: Path,
    name: Any,
    body: Any,
    config_overrides: Mapping[str, Any],
    stop_overrides: Mapping[str, Any],
) -> ExperimentSpec:
    where = f"{path}, experiment {name!r}"
    _check_experiment_name(name, where)
    if not isinstance(body, Mapping):
        raise ExperimentError(f"{where}: expected a mapping with `run`, `env`, `config`, ...")
    unknown = [key for key in body if key not in EXPERIMENT_KEYS]
    if unknown:
        suggestion = _did_you_mean(str(unknown[0]), EXPERIMENT_KEYS)
        raise ExperimentError(
            f"{where}: unknown key(s) {', '.join(map(repr, unknown))}{suggestion}; "
            f"valid: {', '.join(EXPERIMENT_KEYS)}"
        )
    if "run" not in body:
        raise ExperimentError(f"{where}: missing `run:` (the algorithm, e.g. LaMo or BC)")
    algo_class, config = resolve_algorithm(str(body["run"]), where)
    if not isinstance(body.get("config") or {}, Mapping):
        raise ExperimentError(f"{where}: `config` must be a mapping of config keys to values")
    config_dict = dict(body.get("config") or {})
    if "env" in body:
        if "env" in config_dict and config_dict["env"] != body["env"]:
            raise ExperimentError(f"{where}: `env` given twice (top level and in `config`)")
        config_dict["env"] = body["env"]
    check_config_keys(config_dict, config, str(body["run"]), where)
    _update_config(config, config_dict, where)
    return _finish_spec(
        name=name,
        source=str(path),
        algo_name=str(body["run"]),
        algo_class=algo_class,
        config=config,
        stop=body.get("stop") or {},
        checkpoint_config=body.get("checkpoint_config") or {},
        storage_path=body.get("storage_path"),
        num_samples=body.get("num_samples", 1),
        mlflow=body.get("mlflow"),
        config_overrides=config_overrides,
        stop_overrides=stop_overrides,
        where=where,
    )


def _load_python(
    path: Path, config_overrides: Mapping[str, Any], stop_overrides: Mapping[str, Any]
) -> ExperimentSpec:
    from ray.rllib.algorithms.algorithm_config import AlgorithmConfig

    try:
        namespace = runpy.run_path(str(path), run_name="__rllib_experiment__")
    except Exception as error:
        raise ExperimentError(f"{path}: failed to run: {type(error).__name__}: {error}") from error
    config = namespace.get("config")
    if not isinstance(config, AlgorithmConfig):
        raise ExperimentError(
            f"{path}: define `config` as an AlgorithmConfig (e.g. `config = LaMoConfig()...`); "
            f"optional: name, {', '.join(OPTIONAL_KEYS)}"
        )
    name = namespace.get("name", path.stem)
    where = f"{path}, experiment {name!r}"
    _check_experiment_name(name, where)
    algo_class = config.algo_class
    if algo_class is None:
        raise ExperimentError(f"{where}: `config` has no algo_class; use the algorithm's config")
    config = config.copy(copy_frozen=False)
    return _finish_spec(
        name=name,
        source=str(path),
        algo_name=algo_class.__name__,
        algo_class=algo_class,
        config=config,
        stop=namespace.get("stop") or {},
        checkpoint_config=namespace.get("checkpoint_config") or {},
        storage_path=namespace.get("storage_path"),
        num_samples=namespace.get("num_samples", 1),
        # A module-level dict; `import mlflow` in the file is not a settings block.
        mlflow=namespace.get("mlflow") if isinstance(namespace.get("mlflow"), Mapping) else None,
        config_overrides=config_overrides,
        stop_overrides=stop_overrides,
        where=where,
    )


def _finish_spec(
    *,
    name: str,
    source: str,
    algo_name: str,
    algo_class: type[Algorithm],
    config: AlgorithmConfig,
    stop: Any,
    checkpoint_config: Any,
    storage_path: Any,
    num_samples: Any,
    mlflow: Any,
    config_overrides: Mapping[str, Any],
    stop_overrides: Mapping[str, Any],
    where: str,
) -> ExperimentSpec:
    """What YAML and Python experiments share: overrides, paths, checks."""
    if config_overrides:
        override_where = f"--config (for {where})"
        check_config_keys(
            config_overrides, algo_class.get_default_config(), algo_name, override_where
        )
        _update_config(config, config_overrides, override_where)
    stop_criteria = flatten_stop(stop, where) | flatten_stop(stop_overrides, "--stop")
    if not isinstance(num_samples, int) or isinstance(num_samples, bool) or num_samples < 1:
        raise ExperimentError(f"{where}: `num_samples` must be a positive integer")
    if storage_path is not None and not isinstance(storage_path, str):
        raise ExperimentError(f"{where}: `storage_path` must be a string")
    absolutize_paths(config, where)
    _check_config(config, where)
    if mlflow is not None:
        mlflow = mlflow_settings(mlflow, where)
    return ExperimentSpec(
        name=name,
        source=source,
        algo_name=algo_name,
        trainable=trainable_for(algo_class),
        config=config,
        stop=stop_criteria,
        checkpoint_config=_checked_checkpoint_config(checkpoint_config, where),
        storage_path=storage_path,
        num_samples=num_samples,
        mlflow=mlflow,
    )


def _update_config(config: AlgorithmConfig, values: Mapping[str, Any], where: str) -> None:
    try:
        config.update_from_dict(dict(values))
    except (TypeError, ValueError) as error:
        raise ExperimentError(f"{where}: {error}") from error


def _check_config(config: AlgorithmConfig, where: str) -> None:
    """Runs the algorithm's own validation now, unless search spaces make that per trial."""
    if has_search_space(config.to_dict()):
        return
    # RLlib logs warnings while validating (e.g. "running on the new API stack"), which
    # the trial repeats anyway.
    config_logger = logging.getLogger("ray.rllib.algorithms.algorithm_config")
    level = config_logger.level
    config_logger.setLevel(logging.ERROR)
    try:
        config.copy(copy_frozen=False).validate()
    except (ValueError, TypeError, KeyError) as error:
        message = " ".join(
            line.strip() for line in str(error).splitlines() if not line.startswith("To suppress")
        )
        raise ExperimentError(f"{where}: invalid config: {message}") from error
    finally:
        config_logger.setLevel(level)


def _checked_checkpoint_config(values: Any, where: str) -> dict[str, Any]:
    from ray.tune import CheckpointConfig

    if not isinstance(values, Mapping):
        raise ExperimentError(f"{where}: `checkpoint_config` must be a mapping")
    fields = [field.name for field in dataclasses.fields(CheckpointConfig)]
    unknown = [key for key in values if key not in fields]
    if unknown:
        raise ExperimentError(
            f"{where}: unknown checkpoint_config key {unknown[0]!r}"
            f"{_did_you_mean(str(unknown[0]), fields)}; valid: {', '.join(fields)}"
        )
    return dict(values)


def _check_experiment_name(name: Any, where: str) -> None:
    if not isinstance(name, str) or not name or "/" in name or name in (".", ".."):
        raise ExperimentError(f"{where}: the experiment name must be a plain folder name")


def _absolute_inputs(value: Any, base: Path, where: str) -> Any:
    if isinstance(value, list):
        return [_absolute_inputs(item, base, where) for item in value]
    if isinstance(value, dict) and set(value) == {"grid_search"}:
        # Each grid point is one trial's input: resolve every one before trials change folder.
        return {
            "grid_search": [_absolute_inputs(item, base, where) for item in value["grid_search"]]
        }
    if not isinstance(value, str) or is_uri(value) or value in NON_PATH_INPUTS:
        return value
    resolved = (base / value).resolve()
    if not resolved.exists():
        name = parse_dataset_name(resolved.name)
        if name is None:
            raise ExperimentError(f"{where}: input_ path not found: {value} (looked in {base})")
        _generate_missing_dataset(resolved, name, where=where)
    return str(resolved)


def _generate_missing_dataset(out: Path, name: GeneratedDatasetName, *, where: str) -> None:
    """Makes a missing generated dataset on the spot, saying so, rather than failing."""
    from rllib_lamo.data.generate import generate

    name = dataclasses.replace(name, num_steps=name.num_steps or default_num_steps(name.task))
    print(
        f"rllib: {where}: dataset {out} does not exist yet; generating it now "
        f"({name.command(str(out))}). "
        + (
            "This records scripted demonstrations and can take a few minutes."
            if name.task == "kitchen"
            else "This trains a behaviour policy first and can take a while."
        ),
        flush=True,
    )
    generate(name.task, name.kind, out, num_steps=name.num_steps)


def _did_you_mean(name: str, candidates: Any) -> str:
    candidates = list(candidates)
    by_lower = {candidate.lower(): candidate for candidate in candidates}
    if name.lower() in by_lower and by_lower[name.lower()] != name:
        return f" (did you mean {by_lower[name.lower()]!r}?)"
    matches = difflib.get_close_matches(name, candidates, n=3, cutoff=0.6)
    if not matches:
        return ""
    return f" (did you mean {' or '.join(repr(match) for match in matches)}?)"


def _wrapped(text: str) -> str:
    return textwrap.fill(text, width=100, subsequent_indent="  ", break_on_hyphens=False)
