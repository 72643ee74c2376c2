"""Names of what LaMo reports in its results; the application reads results by these names.

The algorithm owns them (the learner logs the per-module ones under
``learners/<module id>/``; `LaMo.evaluate` and `rllib_lamo.evaluation` write the evaluation
section). Plain strings, so that reading them imports no Ray.
"""

from __future__ import annotations

# Re-exported from the modules that define them (both import nothing heavy): this iteration's
# wall-time split and throughput (top level of a result), and the paper's reported number
# (``evaluation/paper_score/<field>``).
from rllib_lamo.iteration_times import DATA_S as DATA_S
from rllib_lamo.iteration_times import EVALUATION_S as EVALUATION_S
from rllib_lamo.iteration_times import ITERATION_S as ITERATION_S
from rllib_lamo.iteration_times import LEARNER_S as LEARNER_S
from rllib_lamo.iteration_times import STEPS_PER_S as STEPS_PER_S
from rllib_lamo.iteration_times import WINDOWS_PER_S as WINDOWS_PER_S
from rllib_lamo.scores import PAPER_SCORE as PAPER_SCORE
from rllib_lamo.scores import PAPER_SCORE_KEY as PAPER_SCORE_KEY
from rllib_lamo.scores import PAPER_SCORE_LAST_N as PAPER_SCORE_LAST_N
from rllib_lamo.scores import PAPER_SCORE_METRIC as PAPER_SCORE_METRIC
from rllib_lamo.scores import PAPER_SCORE_NUM_EVALUATIONS as PAPER_SCORE_NUM_EVALUATIONS
from rllib_lamo.scores import PAPER_SCORE_PER_TARGET as PAPER_SCORE_PER_TARGET
from rllib_lamo.scores import PAPER_SCORE_STD as PAPER_SCORE_STD
from rllib_lamo.scores import PAPER_SCORE_TARGET as PAPER_SCORE_TARGET

# RLlib's result sections and default module ID (ray.rllib.utils.metrics, ray.rllib.core).
LEARNER_RESULTS = "learners"
EVALUATION_RESULTS = "evaluation"
ENV_RUNNER_RESULTS = "env_runners"
DEFAULT_MODULE_ID = "default_policy"
ALL_MODULES = "__all_modules__"

# Per-module learner metrics (`total_loss` is RLlib's `Learner.TOTAL_LOSS_KEY`).
ACTION_LOSS_KEY = "action_loss"
LANGUAGE_LOSS_KEY = "language_loss"
TOTAL_LOSS_KEY = "total_loss"
LR_LM_KEY = "lr_lm"
LR_HEADS_KEY = "lr_heads"
WARMUP_FACTOR_KEY = "warmup_factor"
GRADIENT_STEPS_KEY = "gradient_steps"
GRADIENTS_GLOBAL_NORM_KEY = "gradients_global_norm"
# The held-out check (`validation_fraction` > 0): a top-level section of every result,
# ``validation/action_loss``, measured after the iteration's update.
VALIDATION_RESULTS = "validation"
VALIDATION_ACTION_LOSS = ACTION_LOSS_KEY
VALIDATION_ACTION_LOSS_METRIC = f"{VALIDATION_RESULTS}/{VALIDATION_ACTION_LOSS}"
# The learner's throughput: `rllib_lamo.torch.performance`'s keys (it imports torch), spelled
# here too so that reading results needs no torch; tests/test_metrics.py keeps them equal.
GRADIENT_STEPS_PER_S_KEY = "gradient_steps_per_s"
TOKENS_PER_S_KEY = "tokens_per_s"
ACHIEVED_TFLOPS_KEY = "achieved_tflops"
MFU_KEY = "mfu"
# RLlib's own, for algorithms that are not LaMo.
DEFAULT_OPTIMIZER_LR_KEY = "default_optimizer_learning_rate"
DATASET_ITERS_TRAINED_KEY = "dataset_num_iters_trained_lifetime"

# Tune's top-level timing of every trainable.
TIME_THIS_ITER_S = "time_this_iter_s"
TIME_TOTAL_S = "time_total_s"
TRAINING_ITERATION = "training_iteration"

# The evaluation section: one ``target_<R>`` entry per target return, the best target of
# this evaluation and the best evaluation so far.
TARGET_PREFIX = "target_"
BEST = "best"
BEST_SO_FAR = "best_so_far"
TARGET_RETURN = "target_return"
RETURN = "return"
NORMALISED_SCORE = "normalised_score"
RETURN_MEAN = "return_mean"
NORMALISED_SCORE_MEAN = "normalised_score_mean"
EPISODE_RETURN_MEAN = "episode_return_mean"  # RLlib's own evaluation figure


def learner_metric(name: str, module_id: str = DEFAULT_MODULE_ID) -> str:
    """The flattened result key of a learner metric: ``learners/default_policy/<name>``."""
    return f"{LEARNER_RESULTS}/{module_id}/{name}"


def evaluation_metric(*parts: str) -> str:
    """The flattened result key of an evaluation figure: ``evaluation/best/return``."""
    return "/".join([EVALUATION_RESULTS, *parts])


# RLlib's evaluation return, which every algorithm reports.
RLLIB_EVALUATION_RETURN = evaluation_metric(ENV_RUNNER_RESULTS, EPISODE_RETURN_MEAN)
