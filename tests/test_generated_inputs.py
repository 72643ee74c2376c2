"""Experiment files that name a dataset we can generate get it made, others fail clearly."""

from __future__ import annotations

import pytest

from rllib_lamo.experiment import ExperimentError, generatable_dataset, load_experiments


@pytest.mark.parametrize(
    ("folder", "expected"),
    [
        ("hopper-medium-v5", ("hopper", "medium", None)),
        ("hopper-medium-v5-1m", ("hopper", "medium", 1_000_000)),
        ("walker2d-medium-replay-v5-200k", ("walker2d", "medium-replay", 200_000)),
        ("halfcheetah-medium-expert-v5", ("halfcheetah", "medium-expert", None)),
        ("hopper-medium-v2", None),
        ("ant-medium-v5", None),
        ("my-data", None),
    ],
)
def test_generatable_dataset_names(folder, expected):
    assert generatable_dataset(folder) == expected


def test_a_missing_dataset_that_cannot_be_generated_is_an_error(tmp_path):
    experiment = tmp_path / "x.yaml"
    experiment.write_text(
        "x:\n  run: LaMo\n  env: Hopper-v5\n  config:\n    input_: no/such/dataset\n"
    )
    with pytest.raises(ExperimentError, match="input_ path not found: no/such/dataset"):
        load_experiments(experiment)
