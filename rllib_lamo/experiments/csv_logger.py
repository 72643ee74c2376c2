"""`progress.csv` that stays aligned with its header when a run is resumed.

Tune's CSV logger takes its columns from the first result it sees. On `--resume` the file
already has a header (from the first run's first result), but the columns are taken afresh
from the resumed run's first result, whose keys differ (RLlib adds sections as they appear,
e.g. evaluation), so later rows no longer line up with the header. This logger reads the
header back and writes every row in its columns (keys absent from it are dropped, missing
ones left empty), as `result.json` keeps every key.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ray.tune.logger import CSVLoggerCallback
from ray.tune.result import EXPR_PROGRESS_FILE

if TYPE_CHECKING:
    from ray.tune.experiment import Trial


class ResumableCSVLogger(CSVLoggerCallback):
    """Tune's `CSVLoggerCallback`, continuing an existing file in its own columns."""

    def log_trial_result(self, iteration: int, trial: Trial, result: dict[str, Any]) -> None:
        if trial not in self._trial_files:
            self._setup_trial(trial)
        if self._trial_csv[trial] is None and self._trial_continue[trial]:
            header = _header(Path(trial.local_path, EXPR_PROGRESS_FILE))
            if header:
                self._trial_csv[trial] = csv.DictWriter(self._trial_files[trial], header)
        super().log_trial_result(iteration, trial, result)


def _header(path: Path) -> list[str]:
    """The column names of an existing CSV file (empty if it has none)."""
    with path.open(newline="") as file:
        return next(csv.reader(file), [])
