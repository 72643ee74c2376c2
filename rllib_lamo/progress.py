"""A compact per-iteration progress table for `rllib train`, as a Tune callback.

RLlib results are nested dicts of hundreds of entries; Tune's own tables show a few generic
ones. This prints one row per training iteration with what a Decision-Transformer run is
judged by: gradient steps, action and language loss, learning rate, and the evaluation's best
target (return, normalised score), each read from the first of a few candidate keys so that
any RLlib algorithm gets a useful table and columns show "-" until their metric appears.

It is a `ray.tune.Callback` rather than a legacy `ProgressReporter`, which Tune's default
output engine ignores. It is pickled with the run's config and prints again on `--resume`.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ray.tune import Callback
from ray.tune.experiment import Trial

MISSING = "-"
HEADER_EVERY_ROWS = 25


@dataclass(frozen=True)
class Column:
    """One table column: a title and the flattened result keys to try, in order."""

    title: str
    keys: tuple[str, ...]
    width: int


COLUMNS: tuple[Column, ...] = (
    Column("iter", ("training_iteration",), 5),
    Column(
        "grad steps",
        (
            "learners/default_policy/gradient_steps",
            "learners/__all_modules__/dataset_num_iters_trained_lifetime",
        ),
        10,
    ),
    Column("action loss", ("learners/default_policy/action_loss",), 11),
    Column("lang loss", ("learners/default_policy/language_loss",), 9),
    Column("total loss", ("learners/default_policy/total_loss",), 10),
    Column(
        "lr",
        (
            "learners/default_policy/lr_heads",
            "learners/default_policy/default_optimizer_learning_rate",
        ),
        9,
    ),
    Column(
        "eval return",
        ("evaluation/best/return", "evaluation/env_runners/episode_return_mean"),
        11,
    ),
    Column("score", ("evaluation/best/normalised_score",), 7),
    Column("target", ("evaluation/best/target_return",), 7),
    Column("s/iter", ("time_this_iter_s",), 7),
    Column("total s", ("time_total_s",), 8),
)


def flatten(result: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a/b": 1}``, the way Tune names nested metrics."""
    flat: dict[str, Any] = {}
    for key, value in result.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}/"))
        else:
            flat[name] = value
    return flat


def first_present(flat_result: Mapping[str, Any], keys: Sequence[str]) -> Any:
    """The value of the first key that holds a number, else None."""
    for key in keys:
        value = flat_result.get(key)
        if _is_number(value):
            return value
    return None


def format_number(value: Any) -> str:
    """Short, width-stable rendering: integers as such, floats with 4 significant digits."""
    if not _is_number(value):
        return MISSING
    if isinstance(value, int) or float(value).is_integer() and abs(float(value)) < 1e9:
        return str(int(value))
    value = float(value)
    if math.isnan(value):
        return "nan"
    if 1000 <= abs(value) < 1e7:
        return f"{value:.1f}"
    return f"{value:.4g}"


def row_cells(result: Mapping[str, Any]) -> list[str]:
    """One table row's cells (without the trial column) for a Tune result."""
    flat = flatten(result)
    return [format_number(first_present(flat, column.keys)) for column in COLUMNS]


def format_row(cells: Sequence[str], widths: Sequence[int], trial_width: int) -> str:
    trial, *values = cells
    return "  ".join(
        [trial.ljust(trial_width), *(v.rjust(w) for v, w in zip(values, widths, strict=True))]
    )


class ProgressTable(Callback):
    """Prints a row per result, trial starts/ends/errors, and checkpoints when verbose."""

    def __init__(self, *, show_checkpoints: bool = False):
        self.show_checkpoints = show_checkpoints
        self._rows_since_header = HEADER_EVERY_ROWS

    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any):
        self._say(f"trial {trial.trial_id} started: {trial}")

    def on_trial_result(
        self, iteration: int, trials: list[Trial], trial: Trial, result: dict, **info: Any
    ):
        if self._rows_since_header >= HEADER_EVERY_ROWS:
            titles = [column.title for column in COLUMNS]
            self._say(format_row(["trial", *titles], self._widths(), self._trial_width(trial)))
            self._rows_since_header = 0
        cells = [trial.trial_id, *row_cells(result)]
        self._say(format_row(cells, self._widths(), self._trial_width(trial)))
        self._rows_since_header += 1

    def on_checkpoint(
        self, iteration: int, trials: list[Trial], trial: Trial, checkpoint: Any, **info: Any
    ):
        if self.show_checkpoints:
            self._say(f"trial {trial.trial_id} checkpoint: {checkpoint.path}")

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any):
        iterations = (trial.last_result or {}).get("training_iteration", 0)
        self._say(f"trial {trial.trial_id} finished after {iterations} iteration(s)")

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any):
        self._say(f"trial {trial.trial_id} failed; traceback in {trial.path}/error.txt")

    @staticmethod
    def _widths() -> list[int]:
        return [max(column.width, len(column.title)) for column in COLUMNS]

    @staticmethod
    def _trial_width(trial: Trial) -> int:
        return max(len("trial"), len(trial.trial_id))

    @staticmethod
    def _say(text: str) -> None:
        print(text, file=sys.stdout, flush=True)


def _is_number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return not isinstance(value, str)
