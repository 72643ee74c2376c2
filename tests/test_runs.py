"""MLflow runs as we log them: the method rule that names a run's method."""

from __future__ import annotations

import pytest

from rllib_lamo.experiments.runs import method_of


@pytest.mark.parametrize(
    ("params", "algorithm", "expected"),
    [
        ({}, "LaMo", "LaMo"),
        ({"lm_pretrained": "False", "finetune": "full"}, "LaMo", "DT"),
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
