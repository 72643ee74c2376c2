"""Names of the datasets `lamo-data generate` makes: one grammar for generating them, for the
hint when one is missing and for experiment files that name one that does not exist yet.

``<task>-<kind>-v<V>`` (the generator's default size) or ``<task>-<kind>-v<V>-<N>k|m`` (N
thousand or million steps), e.g. ``hopper-medium-v5``, ``walker2d-medium-replay-v5-200k``,
``reacher2d-medium-v0``: D4RL's names with the gymnasium env's version.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# The tasks we generate data for and their gymnasium envs (Reacher2d-v0 and LaMoKitchen-v0
# are ours: rllib_lamo.envs).
TASK_ENVS: dict[str, str] = {
    "hopper": "Hopper-v5",
    "walker2d": "Walker2d-v5",
    "halfcheetah": "HalfCheetah-v5",
    "reacher2d": "Reacher2d-v0",
    "kitchen": "LaMoKitchen-v0",
}
KINDS = ("medium", "medium-replay", "expert", "medium-expert")
# Tasks whose kinds are not KINDS: the kitchen's scripted sets are named as D4RL's.
TASK_KINDS: dict[str, tuple[str, ...]] = {"kitchen": ("complete", "partial", "mixed")}
DEFAULT_NUM_STEPS = 1_000_000
# Tasks whose default size is not DEFAULT_NUM_STEPS: the scripted kitchen records ~140 steps/s
# per core, so 50k steps (~400 episodes; D4RL's kitchen-partial has 137k) take a few minutes.
# Atari's scripted paddle policies hold ~7 KB of frames per step in memory while recording.
TASK_NUM_STEPS: dict[str, int] = {"kitchen": 50_000, "pong": 50_000, "breakout": 50_000}
ALL_KINDS = tuple(dict.fromkeys([*KINDS, *(k for kinds in TASK_KINDS.values() for k in kinds)]))
_STEP_UNITS = {"k": 1_000, "m": 1_000_000}
_KIND_PATTERN = "|".join(sorted(ALL_KINDS, key=len, reverse=True))
_NAME = re.compile(
    rf"^(?P<task>{'|'.join(TASK_ENVS)})-(?P<kind>{_KIND_PATTERN})"
    r"-v(?P<version>\d+)(?:-(?P<count>\d+)(?P<unit>[km]))?$"
)


@dataclass(frozen=True)
class GeneratedDatasetName:
    """A dataset `lamo-data generate` can make; ``num_steps`` None is the default size."""

    task: str
    kind: str
    num_steps: int | None = None

    def command(self, out: str) -> str:
        """The `lamo-data` command that makes this dataset at ``out``."""
        steps = f" --steps {self.num_steps}" if self.num_steps else ""
        return f"lamo-data generate {self.task} --kind {self.kind}{steps} --out {out}"


def kinds_of(task: str) -> tuple[str, ...]:
    """The kinds `lamo-data generate TASK` makes."""
    return TASK_KINDS.get(task, KINDS)


def default_num_steps(task: str) -> int:
    """Steps `lamo-data generate TASK` records without ``--steps`` (per policy, if several)."""
    return TASK_NUM_STEPS.get(task, DEFAULT_NUM_STEPS)


def dataset_name(task: str, kind: str) -> str:
    """``hopper-medium-v5``: the default folder name of a generated dataset."""
    return f"{task}-{kind}-v{TASK_ENVS[task].rsplit('-v', 1)[1]}"


def parse_dataset_name(folder_name: str) -> GeneratedDatasetName | None:
    """What `lamo-data generate` makes under this folder name, or None if it makes no such set."""
    match = _NAME.match(folder_name)
    if match is None or match["kind"] not in kinds_of(match["task"]):
        return None
    if dataset_name(match["task"], match["kind"]) != (
        f"{match['task']}-{match['kind']}-v{match['version']}"
    ):
        return None
    steps = int(match["count"]) * _STEP_UNITS[match["unit"]] if match["count"] else None
    return GeneratedDatasetName(match["task"], match["kind"], steps)
