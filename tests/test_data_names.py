"""The one grammar of generated dataset names, shared by generation, hints and experiments."""

from __future__ import annotations

import pytest

from rllib_lamo.data.generate import TASKS
from rllib_lamo.data.names import (
    TASK_ENVS,
    GeneratedDatasetName,
    dataset_name,
    kinds_of,
    parse_dataset_name,
)


@pytest.mark.parametrize(
    ("folder", "expected"),
    [
        ("hopper-medium-v5", GeneratedDatasetName("hopper", "medium")),
        ("hopper-medium-replay-v5", GeneratedDatasetName("hopper", "medium-replay")),
        ("walker2d-expert-v5-200k", GeneratedDatasetName("walker2d", "expert", 200_000)),
        (
            "halfcheetah-medium-expert-v5-2m",
            GeneratedDatasetName("halfcheetah", "medium-expert", 2_000_000),
        ),
        (
            "reacher2d-medium-replay-v0-100k",
            GeneratedDatasetName("reacher2d", "medium-replay", 100_000),
        ),
        ("hopper-medium-v4", None),
        ("reacher2d-medium-v5", None),
        ("ant-medium-v5", None),
        ("hopper-random-v5", None),
        ("hopper-medium-v5-10g", None),
        ("kitchen-partial-v0", GeneratedDatasetName("kitchen", "partial")),
        ("kitchen-mixed-v0-50k", GeneratedDatasetName("kitchen", "mixed", 50_000)),
        ("kitchen-medium-v0", None),  # the kitchen's kinds are D4RL's: complete, partial, mixed
        ("hopper-partial-v5", None),
    ],
)
def test_parse(folder: str, expected: GeneratedDatasetName | None) -> None:
    assert parse_dataset_name(folder) == expected


def test_every_generatable_default_name_parses_back() -> None:
    # Every task trains a behaviour policy (TASKS) but the kitchen, which is scripted.
    assert set(TASKS) | {"kitchen"} == set(TASK_ENVS)
    for task in TASKS:
        assert TASKS[task].env_id == TASK_ENVS[task]
    for task in TASK_ENVS:
        for kind in kinds_of(task):
            assert parse_dataset_name(dataset_name(task, kind)) == GeneratedDatasetName(task, kind)


def test_command() -> None:
    name = GeneratedDatasetName("hopper", "medium", 50_000)
    assert name.command("d/x") == "lamo-data generate hopper --kind medium --steps 50000 --out d/x"
