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
}
# Settings read by the libraries at start-up (a user's own values win).
_QUIET_ENVIRONMENT = {
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    # Tune warns when a callback takes > 0.5 s: MLflow's end-of-trial logging does.
    "TUNE_WARN_THRESHOLD_S": "30",
    "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
}


def quiet_console(verbose: bool) -> None:
    """Turns the noise off in this process (no-op with `verbose`)."""
    if verbose:
        return
    for name, value in _QUIET_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    for name, level in _ROUTINE_LOGGERS.items():
        logging.getLogger(name).setLevel(level)
    for category in (DeprecationWarning, FutureWarning, PendingDeprecationWarning):
        warnings.filterwarnings("ignore", category=category)
    # MLflow asks for type hints on `predict`; LaMo's input (a dict of arrays) has none it
    # can describe (see `policy_model.LaMoPolicyModel`).
    warnings.filterwarnings("ignore", message=r".*Add type hints to the `predict` method")


def ray_init_options(verbose: bool) -> dict[str, Any]:
    """`ray.init` options: actors' output on the console only with `verbose`."""
    if verbose:
        return {}
    return {
        "log_to_driver": False,
        "logging_level": logging.WARNING,
        "runtime_env": {"env_vars": {"RAY_DATA_DISABLE_PROGRESS_BARS": "1"}},
    }
