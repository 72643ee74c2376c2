"""A compact per-iteration progress table for `rllib train`, as a Tune callback.

RLlib results are nested dicts of hundreds of entries; Tune's own tables show a few generic
ones. This prints one row per training iteration with what a Decision-Transformer run is
judged by, each read from the first of a few candidate keys so that any RLlib algorithm gets a
useful table and columns show "-" until their metric appears:

- training: gradient steps, action loss, the held-out action loss (``validation_fraction``),
  language loss, learning rate;
- this iteration's own learner and evaluation seconds, and gradient steps per second of
  training (`rllib_lamo.iteration_times`; RLlib's timers are smoothed; the data time is in
  the results and MLflow, no longer worth a column since windows are cut in memory);
- after evaluations: ``final``, this evaluation's best target; ``best``, the best evaluation
  so far; ``paper n/N``, the paper's reported number (each target's mean over the last N
  evaluations, then the best target) with the n evaluations it averages so far. Normalised
  scores where the env has D4RL reference scores, returns otherwise.

It is a `ray.tune.Callback` rather than a legacy `ProgressReporter`, which Tune's default
output engine ignores. It is pickled with the run's config and prints again on `--resume`.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ray.tune import Callback
from ray.tune.experiment import Trial

from rllib_lamo import metrics as m
from rllib_lamo.experiments.results import first_present, flatten, format_number

HEADER_EVERY_ROWS = 25


@dataclass(frozen=True)
class Column:
    """One table column: a title and the flattened result keys to try, in order.

    With `count_keys` (n, N) the cell appends ``n/N`` (e.g. evaluations averaged of N).
    """

    title: str
    keys: tuple[str, ...]
    width: int
    count_keys: tuple[str, str] | None = None

    def cell(self, flat_result: Mapping[str, Any]) -> str:
        value = first_present(flat_result, self.keys)
        if value is None or self.count_keys is None:
            return format_number(value)
        n, total = (format_number(flat_result.get(key)) for key in self.count_keys)
        return f"{format_number(value)} {n}/{total}"


def _evaluation_score(section: str, *fallbacks: str) -> tuple[str, ...]:
    """A section's normalised score, else its return (envs without D4RL reference scores)."""
    return (
        m.evaluation_metric(section, m.NORMALISED_SCORE),
        m.evaluation_metric(section, m.RETURN),
        *fallbacks,
    )


def _paper_score(field: str) -> str:
    return m.evaluation_metric(m.PAPER_SCORE_KEY, field)


COLUMNS: tuple[Column, ...] = (
    Column("iter", (m.TRAINING_ITERATION,), 4),
    Column(
        "steps",
        (
            m.learner_metric(m.GRADIENT_STEPS_KEY),
            m.learner_metric(m.DATASET_ITERS_TRAINED_KEY, m.ALL_MODULES),
        ),
        6,
    ),
    Column("act loss", (m.learner_metric(m.ACTION_LOSS_KEY),), 8),
    Column("val loss", (m.VALIDATION_ACTION_LOSS_METRIC,), 8),
    Column("lang loss", (m.learner_metric(m.LANGUAGE_LOSS_KEY),), 9),
    Column(
        "lr",
        (m.learner_metric(m.LR_HEADS_KEY), m.learner_metric(m.DEFAULT_OPTIMIZER_LR_KEY)),
        7,
    ),
    Column("learn s", (m.LEARNER_S,), 7),
    Column("eval s", (m.EVALUATION_S,), 6),
    Column("steps/s", (m.STEPS_PER_S,), 7),
    Column("final", _evaluation_score(m.BEST, m.RLLIB_EVALUATION_RETURN), 6),
    Column("best", _evaluation_score(m.BEST_SO_FAR), 6),
    Column(
        "paper n/N",
        (_paper_score(m.PAPER_SCORE),),
        11,
        count_keys=(
            _paper_score(m.PAPER_SCORE_NUM_EVALUATIONS),
            _paper_score(m.PAPER_SCORE_LAST_N),
        ),
    ),
)


def row_cells(result: Mapping[str, Any]) -> list[str]:
    """One table row's cells (without the trial column) for a Tune result."""
    flat = flatten(result)
    return [column.cell(flat) for column in COLUMNS]


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
