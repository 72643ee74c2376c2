"""The per-iteration progress table of `rllib train`."""

from __future__ import annotations

from rllib_lamo.experiments.progress import COLUMNS, row_cells
from rllib_lamo.experiments.results import MISSING


def test_progress_row_shows_dashes_until_metrics_appear() -> None:
    titles = [column.title for column in COLUMNS]
    early = dict(zip(titles, row_cells({"training_iteration": 1}), strict=True))
    assert early["iter"] == "1"
    assert {early[title] for title in titles if title != "iter"} == {MISSING}

    result = {
        "training_iteration": 40,
        "time_this_iter_s": 12.3456,
        "learners": {
            "default_policy": {
                "gradient_steps": 4000,
                "action_loss": 0.0123456,
                "language_loss": 3.5,
                "total_loss": 0.362345,
                "lr_heads": 1e-4,
            }
        },
        "evaluation": {
            "best": {"target_return": 3600.0, "normalised_score": 71.25, "return": 2300.5}
        },
    }
    cells = dict(zip(titles, row_cells(result), strict=True))
    assert cells["grad steps"] == "4000" and cells["action loss"] == "0.01235"
    assert cells["lang loss"] == "3.5" and cells["lr"] == "0.0001"
    assert cells["eval return"] == "2300.5" and cells["score"] == "71.25"
    assert cells["target"] == "3600" and cells["s/iter"] == "12.35"
