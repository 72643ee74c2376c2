"""Experiment tracking in MLflow for `rllib train file`: one MLflow run per Tune trial.

Where runs go: `rllib_lamo.experiments.store`. Browse a local store with
``mlflow ui --backend-store-uri sqlite:///<storage path>/mlflow.db``.

What a run holds (`LaMoMLflowCallback`):

- names: experiment = the YAML's ``mlflow.experiment_name`` or the experiment name; run =
  ``mlflow.run_name`` or ``<experiment name>-<trial id>``;
- params: the trial's flattened config (nested keys joined by ``/``) plus ``dataset_id``,
  ``dataset_hash`` (the dataset's content hash: SHA-256 of its shards, from metadata.json) and
  ``method`` (see `rllib_lamo.experiments.runs.method_of`);
- tags: ``git_commit`` and ``git_dirty`` (of the rllib_lamo source tree, empty when it is
  not a git checkout), ``version.<package>``, ``algorithm``, ``trial_id``, ``trial_path``,
  ``experiment_file`` and the YAML's ``mlflow.tags``;
- metrics, step = training iteration: `TRAINING_METRICS` every iteration (losses, learning
  rates, ``gradient_steps``; ``time/{iteration,data,learner,evaluation,total}_s``, this
  iteration's own wall-time split; ``throughput/{steps,windows}_per_s`` per second of
  training, ``throughput/{gradient_steps_per_s,tokens_per_s,achieved_tflops}`` of the
  learner's step and ``throughput/mfu`` where the device's peak is known) and, on evaluation
  iterations only, ``eval/target_<R>/{return_mean,normalised_score_mean,...}``,
  ``eval/best/...`` (final: this evaluation's best target), ``eval/best_so_far/...``, the
  paper's reported number ``eval/paper_score`` (each target's mean over the last N
  evaluations, then the best target) with ``eval/paper_score_std_over_episodes``,
  ``eval/paper_score_target_return``, ``eval/paper_score_num_evaluations`` and per target
  ``eval/target_<R>/paper_score[_std_over_episodes,_num_evaluations]``, and
  ``eval/episode_return_mean`` (RLlib's own, for BC & co.); RLlib repeats the last
  evaluation's numbers in later results, and those repeats are not logged;
- artifacts: ``config/<experiment file>``, ``config/trial_config.json``,
  ``checkpoints/checkpoint_<n>/`` (LaMo checkpoints hold only the trainable weights),
  ``plots/learning_curve.png`` (redrawn after every evaluation and at the end),
  and, for LaMo trials, ``videos/<checkpoint>_target_<R>.gif`` (one episode per target,
  rendered offscreen, from every ``video_every``-th checkpoint and the last; a ``videos`` tag
  and a printed note say why when MuJoCo cannot render) and the final policy as the MLflow
  model ``policy`` (`rllib_lamo.experiments.policy_model`), registered under
  ``--register-model NAME`` on request. Load it back with ``rllib evaluate
  runs:/<run id>/policy`` or ``models:/<name>/<version>``, or `mlflow.pyfunc.load_model`.

Built on Ray Tune's `MLflowLoggerCallback` (experiment set-up, ending runs); what it lacks and
this adds: batched logging (it sends one request per value, hundreds per iteration), stable
metric names, the artifacts, the model, and continuing the same run on ``--resume``.
"""

from __future__ import annotations

import functools
import json
import numbers
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from ray.air.integrations.mlflow import MLflowLoggerCallback

from rllib_lamo import metrics as m
from rllib_lamo.data.format import DatasetError, content_hash, read_metadata
from rllib_lamo.experiments.experiment_file import LAMO, ExperimentSpec, MLflowSettings
from rllib_lamo.experiments.plots import learning_curve_figure
from rllib_lamo.experiments.policy_model import log_policy_model
from rllib_lamo.experiments.progress import first_present, flatten
from rllib_lamo.experiments.runs import EVAL_PREFIX, method_of, metric_histories
from rllib_lamo.experiments.store import local_artifact_root, resolve_tracking_uri
from rllib_lamo.experiments.videos import record_policy_videos
from rllib_lamo.versions import installed_versions

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from ray.tune.experiment import Trial

LEARNING_CURVE_ARTIFACT = "plots/learning_curve.png"
# Stable metric name -> the result keys it is read from (first present wins), every iteration.
TRAINING_METRICS: dict[str, tuple[str, ...]] = {
    name: (m.learner_metric(name),)
    for name in (
        m.ACTION_LOSS_KEY,
        m.LANGUAGE_LOSS_KEY,
        m.TOTAL_LOSS_KEY,
        m.LR_HEADS_KEY,
        m.LR_LM_KEY,
        m.GRADIENT_STEPS_KEY,
    )
} | {
    # The held-out action loss (`validation_fraction` > 0).
    m.VALIDATION_ACTION_LOSS_METRIC: (m.VALIDATION_ACTION_LOSS_METRIC,),
    # This iteration's own wall time (`rllib_lamo.iteration_times`); Tune's for other algorithms.
    "time/iteration_s": (m.ITERATION_S, m.TIME_THIS_ITER_S),
    "time/data_s": (m.DATA_S,),
    "time/learner_s": (m.LEARNER_S,),
    "time/evaluation_s": (m.EVALUATION_S,),
    "time/total_s": (m.TIME_TOTAL_S,),
    # Per second of training (data + learner), and the learner's own step time.
    "throughput/steps_per_s": (m.STEPS_PER_S,),
    "throughput/windows_per_s": (m.WINDOWS_PER_S,),
    "throughput/gradient_steps_per_s": (m.learner_metric(m.GRADIENT_STEPS_PER_S_KEY),),
    "throughput/tokens_per_s": (m.learner_metric(m.TOKENS_PER_S_KEY),),
    "throughput/achieved_tflops": (m.learner_metric(m.ACHIEVED_TFLOPS_KEY),),
    "throughput/mfu": (m.learner_metric(m.MFU_KEY),),
}
# The paper's reported number (`evaluation/paper_score/<field>`) -> ``eval/paper_score<suffix>``;
# per target as ``eval/target_<R>/paper_score<suffix>``.
PAPER_SCORE_METRICS = {
    m.PAPER_SCORE: "",
    m.PAPER_SCORE_STD: f"_{m.PAPER_SCORE_STD}",
    m.PAPER_SCORE_TARGET: f"_{m.PAPER_SCORE_TARGET}",
    m.PAPER_SCORE_NUM_EVALUATIONS: f"_{m.PAPER_SCORE_NUM_EVALUATIONS}",
}
# Evaluation sections copied under `eval/`: per-target ones are found by their prefix.
EVAL_SECTIONS = (m.BEST, m.BEST_SO_FAR)
VERSIONED_PACKAGES = ("rllib-lamo", "ray", "torch", "transformers", "peft", "gymnasium", "mujoco")
# MLflow's limits per `log_batch` call and per param value.
MAX_PARAMS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000
MAX_PARAM_LENGTH = 6000


def git_tags(folder: Path) -> dict[str, str]:
    """The commit the code ran from and whether the tree had changes (empty outside git)."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=folder, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"git_commit": commit, "mlflow.source.git.commit": commit, "git_dirty": str(dirty)}


def version_tags() -> dict[str, str]:
    return {f"version.{name}": v for name, v in installed_versions(VERSIONED_PACKAGES).items()}


def dataset_params(input_path: Any) -> dict[str, str]:
    """``dataset_id`` and ``dataset_hash`` of a trajectory-shard folder (empty for others)."""
    if not isinstance(input_path, str):
        return {}
    try:
        metadata = read_metadata(input_path)
        digest = content_hash(input_path, metadata)
    except DatasetError:
        return {}
    return {"dataset_id": str(metadata.get("name")), "dataset_hash": digest}


def run_params(config: Mapping[str, Any], algorithm: str) -> dict[str, str]:
    """The flattened config as MLflow params, with the dataset's identity and the method."""
    params = {key: str(value)[:MAX_PARAM_LENGTH] for key, value in flatten(config).items()}
    # RLlib's `AlgorithmConfig.to_dict` spells `input_` as `input`.
    params.update(dataset_params(config.get("input", config.get("input_"))))
    params["method"] = method_of(params, algorithm)
    return params


def iteration_metrics(result: Mapping[str, Any], *, evaluated: bool) -> dict[str, float]:
    """A result's metrics under their stable names; evaluation ones only if it evaluated."""
    flat = flatten(result)
    metrics = {
        name: float(value)
        for name, keys in TRAINING_METRICS.items()
        if (value := first_present(flat, keys)) is not None
    }
    if evaluated:
        metrics.update(evaluation_metrics(result.get(m.EVALUATION_RESULTS) or {}))
    return {name: value for name, value in metrics.items() if np.isfinite(value)}


def evaluation_metrics(evaluation: Mapping[str, Any]) -> dict[str, float]:
    """An evaluation section under ``eval/``: per target, best, best so far, the paper's."""
    flat = flatten(evaluation)
    metrics = {}
    # RLlib's own evaluation figure, the one other algorithms (BC, IQL, ...) have.
    episode_return = first_present(flat, [f"{m.ENV_RUNNER_RESULTS}/{m.EPISODE_RETURN_MEAN}"])
    if episode_return is not None:
        metrics[f"{EVAL_PREFIX}/{m.EPISODE_RETURN_MEAN}"] = float(episode_return)
    for key, value in flat.items():
        section = key.split("/")[0]
        if _is_real(value) and (section in EVAL_SECTIONS or section.startswith(m.TARGET_PREFIX)):
            metrics[f"{EVAL_PREFIX}/{key}"] = float(value)
    paper = evaluation.get(m.PAPER_SCORE_KEY) or {}
    for target, figures in (paper.get(m.PAPER_SCORE_PER_TARGET) or {}).items():
        metrics.update(_paper_score_metrics(figures, f"{EVAL_PREFIX}/{target}/{m.PAPER_SCORE_KEY}"))
    metrics.update(_paper_score_metrics(paper, f"{EVAL_PREFIX}/{m.PAPER_SCORE_KEY}"))
    return metrics


def _paper_score_metrics(figures: Mapping[str, Any], name: str) -> dict[str, float]:
    return {
        f"{name}{suffix}": float(figures[field])
        for field, suffix in PAPER_SCORE_METRICS.items()
        if _is_real(figures.get(field))
    }


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def evaluated_this_iteration(result: Mapping[str, Any], config: Mapping[str, Any]) -> bool:
    """RLlib evaluates after iterations that are multiples of `evaluation_interval`."""
    interval = config.get("evaluation_interval")
    iteration = result.get(m.TRAINING_ITERATION, 0)
    return bool(interval) and iteration % interval == 0 and m.EVALUATION_RESULTS in result


def mlflow_callback(
    spec: ExperimentSpec, storage_root: str, tracking_uri: str | None, register_model: str | None
) -> LaMoMLflowCallback:
    """The callback for one experiment of `rllib train file` (see the module docstring)."""
    settings = spec.mlflow or MLflowSettings()
    return LaMoMLflowCallback(
        tracking_uri=resolve_tracking_uri(tracking_uri, settings, storage_root),
        experiment_name=settings.experiment_name or spec.name,
        run_name=settings.run_name,
        tags=settings.tags,
        experiment_file=str(Path(spec.source).resolve()),
        register_model=register_model,
        video_every=settings.video_every,
        video_max_steps=settings.video_max_steps,
    )


class LaMoMLflowCallback(MLflowLoggerCallback):
    """Logs each Tune trial of an experiment as an MLflow run; see the module docstring."""

    def __init__(
        self,
        *,
        tracking_uri: str,
        experiment_name: str,
        run_name: str | None = None,
        tags: Mapping[str, str] | None = None,
        experiment_file: str | None = None,
        register_model: str | None = None,
        video_every: int = 5,
        video_max_steps: int = 1000,
    ):
        super().__init__(
            tracking_uri=tracking_uri, experiment_name=experiment_name, tags=dict(tags or {})
        )
        self.run_name = run_name
        self.experiment_file = experiment_file
        self.register_model = register_model
        self.video_every = video_every
        self.video_max_steps = video_max_steps
        self._checkpoints_logged: dict[str, int] = {}
        self._videos_logged: set[tuple[str, str]] = set()

    def setup(self, *args: Any, **kwargs: Any) -> None:
        import mlflow

        artifact_root = local_artifact_root(self.tracking_uri)
        if artifact_root:
            Path(self.tracking_uri.removeprefix("sqlite:///")).parent.mkdir(
                parents=True, exist_ok=True
            )
            mlflow.set_tracking_uri(self.tracking_uri)
            if mlflow.get_experiment_by_name(self.experiment_name) is None:
                experiment_path = f"{artifact_root}/{self.experiment_name}"
                mlflow.create_experiment(self.experiment_name, artifact_location=experiment_path)
        super().setup(*args, **kwargs)
        self._code_tags = git_tags(Path(__file__).parent) | version_tags()

    @functools.cached_property
    def client(self) -> MlflowClient:
        from mlflow import MlflowClient

        return MlflowClient(self.tracking_uri)

    def log_trial_start(self, trial: Trial) -> None:
        """Creates the trial's run, or finds it again when Tune resumes the trial."""
        if trial in self._trial_runs:
            return
        run_id = self._existing_run(trial)
        if run_id is None:
            run_id = self._create_run(trial)
        else:
            self.client.update_run(run_id, status="RUNNING")
        self._trial_runs[trial] = run_id

    def _existing_run(self, trial: Trial) -> str | None:
        runs = self.client.search_runs(
            [self.mlflow_util.experiment_id],
            filter_string=f"tags.trial_path = '{trial.path}'",
            max_results=1,
        )
        return runs[0].info.run_id if runs else None

    def _create_run(self, trial: Trial) -> str:
        from mlflow.entities import Param

        client = self.client
        tags = {
            **self._code_tags,
            "trial_id": trial.trial_id,
            "algorithm": trial.trainable_name,
            "trial_path": str(trial.path),
            **({"experiment_file": self.experiment_file} if self.experiment_file else {}),
            **self.tags,
        }
        run_name = self.run_name or f"{self.experiment_name}-{trial.trial_id}"
        if self.run_name and len(trial.trial_id.split("_")) > 1:
            run_name = f"{self.run_name}-{trial.trial_id.rsplit('_', 1)[-1]}"
        run = client.create_run(self.mlflow_util.experiment_id, run_name=run_name, tags=tags)
        run_id = run.info.run_id
        params = [
            Param(key, value)
            for key, value in run_params(trial.config, trial.trainable_name).items()
        ]
        for start in range(0, len(params), MAX_PARAMS_PER_BATCH):
            client.log_batch(run_id, params=params[start : start + MAX_PARAMS_PER_BATCH])
        client.log_dict(run_id, _json_safe(trial.config), "config/trial_config.json")
        if self.experiment_file and Path(self.experiment_file).is_file():
            client.log_artifact(run_id, self.experiment_file, "config")
        return run_id

    def log_trial_result(self, iteration: int, trial: Trial, result: dict) -> None:
        from mlflow.entities import Metric

        evaluated = evaluated_this_iteration(result, trial.config)
        metrics = iteration_metrics(result, evaluated=evaluated)
        step = int(result.get(m.TRAINING_ITERATION, iteration))
        now = int(time.time() * 1000)
        batch = [Metric(name, value, now, step) for name, value in metrics.items()]
        run_id = self._trial_runs[trial]
        for start in range(0, len(batch), MAX_METRICS_PER_BATCH):
            self.client.log_batch(run_id, metrics=batch[start : start + MAX_METRICS_PER_BATCH])
        if evaluated:
            self._log_learning_curve(run_id)

    def on_checkpoint(
        self, iteration: int, trials: list[Trial], trial: Trial, checkpoint: Any, **info: Any
    ) -> None:
        """Uploads the checkpoint; renders videos from every `video_every`-th one."""
        run_id = self._trial_runs.get(trial)
        if run_id is None:
            return
        name = Path(checkpoint.path).name
        with checkpoint.as_directory() as local_dir:
            self.client.log_artifacts(run_id, local_dir, f"checkpoints/{name}")
            count = self._checkpoints_logged.get(trial.trial_id, 0) + 1
            self._checkpoints_logged[trial.trial_id] = count
            if _is_lamo(trial) and self.video_every and count % self.video_every == 0:
                self.log_videos(run_id, local_dir, name)

    def log_trial_end(self, trial: Trial, failed: bool = False) -> None:
        run_id = self._trial_runs.get(trial)
        if run_id is not None:
            self._log_learning_curve(run_id)
            if not failed and trial.checkpoint is not None and _is_lamo(trial):
                with trial.checkpoint.as_directory() as local_dir:
                    if self.video_every:
                        self.log_videos(run_id, local_dir, Path(trial.checkpoint.path).name)
                    log_policy_model(run_id, local_dir, self.register_model)
            # A trial that failed before its first result has no MLflow run to end.
            super().log_trial_end(trial, failed)

    def _log_learning_curve(self, run_id: str) -> None:
        figure = learning_curve_figure(metric_histories(self.client, run_id))
        try:
            self.client.log_figure(run_id, figure, LEARNING_CURVE_ARTIFACT)
        finally:
            import matplotlib.pyplot as plt

            plt.close(figure)

    def log_videos(self, run_id: str, checkpoint_dir: str, checkpoint_name: str) -> None:
        """One GIF per target return, or a logged note (and a `videos` tag) why there is none.

        A video is a nice-to-have: no failure here may end the trial.
        """
        if (run_id, checkpoint_name) in self._videos_logged:
            return
        self._videos_logged.add((run_id, checkpoint_name))
        try:
            with tempfile.TemporaryDirectory() as folder:
                for video in record_policy_videos(
                    checkpoint_dir, Path(folder), max_steps=self.video_max_steps
                ):
                    renamed = video.with_name(f"{checkpoint_name}_{video.name}")
                    video.rename(renamed)
                    self.client.log_artifact(run_id, str(renamed), "videos")
        except Exception as error:
            note = f"evaluation videos skipped: {type(error).__name__}: {error}"
            print(f"rllib: {note}", file=sys.stderr, flush=True)
            self.client.set_tag(run_id, "videos", note[:MAX_PARAM_LENGTH])


def _is_lamo(trial: Trial) -> bool:
    """Videos and the `policy` model need a LaMo policy; other algorithms get checkpoints."""
    return trial.trainable_name == LAMO


def _json_safe(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))
