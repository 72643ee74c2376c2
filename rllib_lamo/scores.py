"""Normalised scores: 100 * (return - random) / (expert - random), as D4RL defines them.

One table serves the dataset tools, the evaluation metrics and the report, so a score means the
same thing everywhere it is printed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ReferenceScores:
    """Random and expert returns that anchor the 0 and 100 of a normalised score."""

    random: float
    expert: float
    source: str

    def normalise(self, returns: float | np.ndarray) -> float | np.ndarray:
        return (
            100.0
            * (np.asarray(returns, dtype=np.float64) - self.random)
            / (self.expert - self.random)
        )


# D4RL's own constants (d4rl/infos.py), used by the LaMo paper for every MuJoCo table.
D4RL_REFERENCE_SCORES: dict[str, ReferenceScores] = {
    "hopper": ReferenceScores(-20.272305, 3234.3, "D4RL"),
    "walker2d": ReferenceScores(1.629008, 4592.3, "D4RL"),
    "halfcheetah": ReferenceScores(-280.178953, 12135.0, "D4RL"),
    "reacher2d": ReferenceScores(0.0, 100.0, "LaMo Table 5"),
}

_ENV_TASK = {
    "hopper": "hopper",
    "walker2d": "walker2d",
    "halfcheetah": "halfcheetah",
    "reacher": "reacher2d",
}


def task_of_env(env_id: str) -> str | None:
    """Map a gymnasium/D4RL/Minari env id (``Hopper-v5``, ``hopper-medium-v2``) to its task."""
    name = env_id.split("/")[-1].lower().replace("_", "").replace("-", "")
    for prefix, task in _ENV_TASK.items():
        if name.startswith(prefix):
            return task
    return None


def reference_scores(env_id: str) -> ReferenceScores | None:
    """The D4RL reference scores for an env id, or None where D4RL defines none."""
    task = task_of_env(env_id)
    return D4RL_REFERENCE_SCORES.get(task) if task else None
