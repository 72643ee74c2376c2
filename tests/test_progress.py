"""The per-iteration progress table of `rllib train`."""

from __future__ import annotations

from rllib_lamo.experiments.progress import COLUMNS, ProgressTable, format_row, row_cells
from rllib_lamo.experiments.results import MISSING

TRIAL_ID = "5f3e2_00000"  # Tune's trial ids: 5 hex digits, then the trial's index
LAMO_RESULT = {
    "training_iteration": 40,
    "time_this_iter_s": 12.3456,
    "time_iteration_s": 12.3,
    "time_data_s": 0.0213,
    "time_learner_s": 9.87,
    "time_evaluation_s": 2.25,
    "steps_per_s": 10.11,
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
        "target_3600": {"normalised_score_mean": 71.25, "return_mean": 2300.5},
        "best": {"target_return": 3600.0, "normalised_score": 71.25, "return": 2300.5},
        "best_so_far": {"target_return": 3600.0, "normalised_score": 80.5, "return": 2600.0},
        "paper_score": {
            "score": 65.125,
            "std_over_episodes": 12.5,
            "target_return": 3600.0,
            "metric": "normalised_score",
            "num_evaluations": 3,
            "last_n_evaluations": 8,
            "per_target": {"target_3600": {"score": 65.125}},
        },
    },
}


def _cells(result: dict) -> dict[str, str]:
    return dict(zip([column.title for column in COLUMNS], row_cells(result), strict=True))


def test_progress_row_shows_dashes_until_metrics_appear() -> None:
    early = _cells({"training_iteration": 1})
    assert early["iter"] == "1"
    assert {value for title, value in early.items() if title != "iter"} == {MISSING}


def test_progress_row_shows_losses_time_split_and_the_three_scores() -> None:
    cells = _cells(LAMO_RESULT)
    assert cells["steps"] == "4000" and cells["act loss"] == "0.01235"
    assert cells["lang loss"] == "3.5" and cells["lr"] == "0.0001"
    assert cells["learn s"] == "9.87"
    assert cells["eval s"] == "2.25" and cells["steps/s"] == "10.11"
    # final: this evaluation's best target; best: the best evaluation so far; paper: the
    # mean over the last N evaluations (3 of N = 8 so far), then the best target.
    assert cells["final"] == "71.25" and cells["best"] == "80.5"
    assert cells["paper n/N"] == "65.12 3/8"


def test_envs_without_reference_scores_show_returns() -> None:
    evaluation = {
        "best": {"target_return": 50.0, "return": -4.5},
        "best_so_far": {"target_return": 50.0, "return": -3.25},
        "paper_score": {"score": -6.0, "num_evaluations": 1, "last_n_evaluations": 8},
    }
    cells = _cells({"training_iteration": 2, "evaluation": evaluation})
    assert (cells["final"], cells["best"], cells["paper n/N"]) == ("-4.5", "-3.25", "-6 1/8")
    # Other RLlib algorithms (BC, IQL, ...) show RLlib's evaluation return as final.
    rllib_only = {"evaluation": {"env_runners": {"episode_return_mean": 812.5}}}
    assert _cells(rllib_only)["final"] == "812.5"


def test_rows_fit_in_120_columns() -> None:
    widths = ProgressTable._widths()
    header = format_row(["trial", *(column.title for column in COLUMNS)], widths, len(TRIAL_ID))
    row = format_row([TRIAL_ID, *row_cells(LAMO_RESULT)], widths, len(TRIAL_ID))
    assert len(header) == len(row) <= 120, (header, row)
