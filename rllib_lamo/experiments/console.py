"""A quiet console for the `rllib` command: our table and messages, real warnings, no noise.

A normal run used to print some 17 kinds of lines nobody needs (Ray's start and auth notices,
Tune's box and TensorBoard hint, deprecation and future warnings of the libraries, per-actor
start-up chatter, MLflow's table creation and download bars). Without `-v`:
- the Ray actors' output stays in the session's log files (`ray.init(log_to_driver=False)`,
  see `ray_init_options`); a failed trial's root cause is still printed from its error;
- in this process, the libraries' loggers show warnings and errors only, and deprecation
  and future warnings of other packages are not shown.
With `-v` everything is printed as the libraries emit it.
"""

from __future__ import annotations

import logging
import os
import warnings
from typing import Any

# Loggers that announce routine events at INFO (and Ray's auth notice at WARNING).
_ROUTINE_LOGGERS = {
    "ray": logging.WARNING,
    "ray.tune": logging.WARNING,
    "ray._private.authentication": logging.ERROR,
    "mlflow": logging.WARNING,
    # MLflow says at WARNING level that pyfunc models are pickles (README: trusted sources).
    "mlflow.pyfunc": logging.ERROR,
    "alembic": logging.WARNING,
    "transformers": logging.ERROR,
}
# Notices of no use to a user of the command, by logger: the start of their message.
_NOISE_MESSAGES = {
    "ray.rllib.algorithms.algorithm_config": ("You are running",),  # "... on the new API stack!"
    "ray._common.deprecation": ("DeprecationWarning:",),  # RLlib's own internals
}
# Settings read by the libraries at start-up (a user's own values win).
_QUIET_ENVIRONMENT = {
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    # MLflow sets its loggers' level from this when it is imported (INFO by default).
    "MLFLOW_LOGGING_LEVEL": "WARNING",
    # Tune warns when a callback takes > 0.5 s: MLflow's end-of-trial logging does.
    "TUNE_WARN_THRESHOLD_S": "30",
    "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
    # Tune's legacy console output, silent at verbose=0 (the new one always prints a box,
    # the results folder and a TensorBoard hint; our progress table says what matters).
    "RAY_AIR_NEW_OUTPUT": "0",
}


def quiet_console(verbose: bool) -> None:
    """Turns the noise off in this process (no-op with `verbose`)."""
    if verbose:
        return
    for name, value in _QUIET_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    for name, level in _ROUTINE_LOGGERS.items():
        logging.getLogger(name).setLevel(level)
    for name, prefixes in _NOISE_MESSAGES.items():
        logging.getLogger(name).addFilter(_DropMessages(prefixes))
    for category in (DeprecationWarning, FutureWarning, PendingDeprecationWarning):
        warnings.filterwarnings("ignore", category=category)


def ray_init_options(verbose: bool) -> dict[str, Any]:
    """`ray.init` options: actors' output on the console only with `verbose`."""
    if verbose:
        return {}
    return {
        "log_to_driver": False,
        "logging_level": logging.WARNING,
        "runtime_env": {"env_vars": {"RAY_DATA_DISABLE_PROGRESS_BARS": "1"}},
    }


class _DropMessages(logging.Filter):
    """Drops a logger's records whose message starts with one of `prefixes`."""

    def __init__(self, prefixes: tuple[str, ...]):
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefixes)
