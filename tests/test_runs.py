"""MLflow runs as we log them: the method rule that names a run's method, and its constants."""

from __future__ import annotations

import pytest

from rllib_lamo.experiments import runs
from rllib_lamo.experiments.runs import method_of

DT = {"language_model": "dt", "finetune": "full", "embedding": "linear"}


@pytest.mark.parametrize(
    ("params", "algorithm", "expected"),
    [
        ({}, "LaMo", "LaMo"),
        (DT | {"language_loss_coeff": "0.0", "lm_pretrained": "True"}, "LaMo", "DT (paper: 3x128)"),
        (DT | {"embedding": "mlp"}, "LaMo", "DT (paper: 3x128) + MLP embeddings"),
        ({"lm_pretrained": "False", "finetune": "lora"}, "LaMo", "LaMo arch, random init"),
        (
            {"lm_pretrained": "False", "finetune": "full", "language_loss_coeff": "0.0"},
            "LaMo",
            "LaMo arch, random init (full fine-tuning, no language loss)",
        ),
        ({"language_model": "lamo-tiny-synthetic"}, "LaMo", "LaMo (synthetic pre-training)"),
        (
            {"language_model": "lamo-tiny-synthetic", "language_loss_coeff": "0"},
            None,
            "LaMo (synthetic pre-training, no language loss)",
        ),
        (
            {"language_model": "lamo-tiny-synthetic", "lm_pretrained": "False"},
            "LaMo",
            "LaMo arch, random init",
        ),
        ({"language_model": "lamo-tiny-en"}, "LaMo", "LaMo"),
        ({"finetune": "full"}, None, "LaMo (full fine-tuning)"),
        (
            {"finetune": "frozen", "embedding": "linear"},
            "LaMo",
            "LaMo (frozen LM, linear embeddings)",
        ),
        ({"language_loss_coeff": "0.0"}, "LaMo", "LaMo (no language loss)"),
        ({"language_loss_coeff": "0.1", "embedding": "mlp"}, "LaMo", "LaMo"),
        ({"lm_pretrained": "False"}, "BC", "BC"),
    ],
)
def test_method_rule(params: dict, algorithm: str | None, expected: str) -> None:
    assert method_of(params, algorithm) == expected


def test_names_match_the_algorithm() -> None:
    from rllib_lamo import language_models
    from rllib_lamo.lamo import LaMoConfig

    assert runs.DT_LANGUAGE_MODEL == language_models.DT_BASELINE
    assert runs.SYNTHETIC_LANGUAGE_MODEL == language_models.TINY_SYNTHETIC
    assert runs.DEFAULT_PAPER_LAST_N == LaMoConfig().paper_score_last_n_evals


def test_a_subset_folder_reports_the_share_of_its_source_dataset(tmp_path) -> None:
    from rllib_lamo.data.subsets import write_subset
    from rllib_lamo.data.testing import write_toy_dataset
    from rllib_lamo.experiments.runs import effective_data_ratio

    write_toy_dataset(tmp_path / "full", num_episodes=40)
    write_subset(tmp_path / "full", tmp_path / "tenth", ratio=0.1, seed=0)
    # The study trains on pre-sampled subsets (data_ratio 1): report 0.1, not 1.
    assert effective_data_ratio({"input": str(tmp_path / "tenth"), "data_ratio": "1.0"}) == 0.1
    assert effective_data_ratio({"input": str(tmp_path / "tenth"), "data_ratio": "0.5"}) == 0.05
    assert effective_data_ratio({"input": str(tmp_path / "full"), "data_ratio": "0.01"}) == 0.01
    assert effective_data_ratio({"input": "s3://bucket/data", "data_ratio": "0.1"}) == 0.1
