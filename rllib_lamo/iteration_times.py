"""Where an iteration's wall time went, as plain numbers under stable result keys.

RLlib's own timers (`timers/learner_update_timer`, `timers/offline_sampling_timer`) are
smoothed across iterations, so they show seconds where this iteration took milliseconds.
These are the current iteration's own measurements, top-level in every result dict.
"""

from __future__ import annotations

# Wall time of the whole iteration: training, evaluation and RLlib's bookkeeping.
ITERATION_S = "time_iteration_s"
# Waiting for the iteration's batches of training windows.
DATA_S = "time_data_s"
# The learner group's update on those batches (all gradient steps of the iteration).
LEARNER_S = "time_learner_s"
# Evaluation rounds run in this iteration (0.0 where none ran).
EVALUATION_S = "time_evaluation_s"
# Gradient steps and training windows per second of training time (data + learner).
STEPS_PER_S = "steps_per_s"
WINDOWS_PER_S = "windows_per_s"

ITERATION_TIME_KEYS = (ITERATION_S, DATA_S, LEARNER_S, EVALUATION_S, STEPS_PER_S, WINDOWS_PER_S)
