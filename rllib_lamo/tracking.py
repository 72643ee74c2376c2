"""Experiment tracking in MLflow for `rllib train file`: one MLflow run per Tune trial.

Where runs go (first that is set): ``--mlflow-uri``, the experiment's ``mlflow: {tracking_uri}``,
``$MLFLOW_TRACKING_URI``, else a SQLite store next to the results,
``sqlite:///<storage path>/mlflow.db`` (``./mlflow.db`` when the storage path is a cloud URI),
whose artifacts go to ``<storage path>/mlartifacts``. Browse it with
``mlflow ui --backend-store-uri sqlite:///<storage path>/mlflow.db``.

What a run holds (`LaMoMLflowCallback`):

- names: experiment = the YAML's ``mlflow.experiment_name`` or the experiment name; run =
  ``mlflow.run_name`` or ``<experiment name>-<trial id>``;
- params: the trial's flattened config (nested keys joined by ``/``) plus ``dataset_id``,
  ``dataset_hash`` (SHA-256 of metadata.json and the shards) and ``method`` (see
  `rllib_lamo.report.method_of`);
- tags: ``git_commit`` and ``git_dirty`` (of the rllib_lamo source tree, empty when it is
  not a git checkout), ``version.<package>``, ``algorithm``, ``trial_id``, ``trial_path``,
  ``experiment_file`` and the YAML's ``mlflow.tags``;
- metrics, step = training iteration: `TRAINING_METRICS` every iteration and, on evaluation
  iterations only, ``eval/target_<R>/{return_mean,normalised_score_mean,...}``,
  ``eval/best/...``, ``eval/best_so_far/...`` and ``eval/episode_return_mean`` (RLlib's own,
  for BC & co.); RLlib repeats the last evaluation's numbers in later results, and those
  repeats are not logged;
- artifacts: ``config/<experiment file>``, ``config/trial_config.json``,
  ``checkpoints/checkpoint_<n>/`` (LaMo checkpoints hold only the trainable weights),
  ``plots/learning_curve.png`` (redrawn after every evaluation and at the end),
  and, for LaMo trials, ``videos/<checkpoint>_target_<R>.gif`` (one episode per target,
  rendered offscreen, from every ``video_every``-th checkpoint and the last; a ``videos`` tag
  and a printed note say why when MuJoCo cannot render) and the final policy as the MLflow
  model ``policy`` (a `LaMoPolicyModel` pyfunc holding the last checkpoint), registered under
  ``--register-model NAME`` on request. Load it back with ``rllib evaluate
  runs:/<run id>/policy`` or ``models:/<name>/<version>``, or `mlflow.pyfunc.load_model`.

Built on Ray Tune's `MLflowLoggerCallback` (experiment set-up, ending runs); what it lacks and
this adds: batched logging (it sends one request per value, hundreds per iteration), stable
metric names, the artifacts, the model, and continuing the same run on ``--resume``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import numbers
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow.pyfunc
import numpy as np
from ray.air.integrations.mlflow import MLflowLoggerCallback

from rllib_lamo.experiment import ExperimentError
from rllib_lamo.progress import first_present, flatten

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from ray.tune.experiment import Trial

    from rllib_lamo.experiment import ExperimentSpec

DEFAULT_DB_FILE = "mlflow.db"
DEFAULT_ARTIFACT_FOLDER = "mlartifacts"
MODEL_NAME = "policy"
CHECKPOINT_ARTIFACT = "checkpoint"
LEARNING_CURVE_ARTIFACT = "plots/learning_curve.png"
EVAL_PREFIX = "eval"
# Stable metric name -> the result keys it is read from (first present wins).
TRAINING_METRICS: dict[str, tuple[str, ...]] = {
    "action_loss": ("learners/default_policy/action_loss",),
    "language_loss": ("learners/default_policy/language_loss",),
    "total_loss": ("learners/default_policy/total_loss",),
    "lr_heads": ("learners/default_policy/lr_heads",),
    "lr_lm": ("learners/default_policy/lr_lm",),
    "gradient_steps": ("learners/default_policy/gradient_steps",),
    "windows_per_s": ("windows_per_s",),
    "time_this_iter_s": ("time_this_iter_s",),
    "time_total_s": ("time_total_s",),
}
# Evaluation sections copied under `eval/`: per-target ones are found by their prefix.
EVAL_SECTIONS = ("best", "best_so_far")
TARGET_SECTION_PREFIX = "target_"
VERSIONED_PACKAGES = ("rllib-lamo", "ray", "torch", "transformers", "peft", "gymnasium", "mujoco")
# MLflow's limits per `log_batch` call and per param value.
MAX_PARAMS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000
MAX_PARAM_LENGTH = 6000
VIDEO_SIZE = 240
# Offscreen rendering costs ~0.1 s a frame on a CPU: a long episode keeps every n-th frame.
MAX_VIDEO_FRAMES = 150
VIDEO_FPS = 30


@dataclass(frozen=True)
class MLflowSettings:
    """The optional per-experiment ``mlflow:`` block of an experiment file.

    video_every: render evaluation videos from every N-th checkpoint (0: never; the last
    checkpoint always gets them unless 0). video_max_steps caps each video's episode.
    """

    tracking_uri: str | None = None
    experiment_name: str | None = None
    run_name: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    video_every: int = 5
    video_max_steps: int = 1000


def mlflow_settings(value: Any, where: str) -> MLflowSettings:
    """Checks an experiment's ``mlflow:`` block; mistakes name the file and the key."""
    if not isinstance(value, Mapping):
        raise ExperimentError(f"{where}: `mlflow` must be a mapping, e.g. {{tracking_uri: ...}}")
    known = [f.name for f in fields(MLflowSettings)]
    unknown = [key for key in value if key not in known]
    if unknown:
        raise ExperimentError(
            f"{where}: unknown mlflow key {unknown[0]!r}; valid: {', '.join(known)}"
        )
    tags = value.get("tags") or {}
    if not isinstance(tags, Mapping):
        raise ExperimentError(f"{where}: `mlflow.tags` must be a mapping of names to values")
    for key in ("video_every", "video_max_steps"):
        number = value.get(key, 0)
        if not isinstance(number, int) or isinstance(number, bool) or number < 0:
            raise ExperimentError(f"{where}: `mlflow.{key}` must be an integer >= 0")
    return MLflowSettings(**{**value, "tags": {str(k): str(v) for k, v in tags.items()}})


def resolve_tracking_uri(flag: str | None, settings: MLflowSettings, storage_root: str) -> str:
    """The tracking URI a run logs to: flag, YAML, $MLFLOW_TRACKING_URI, else local SQLite."""
    chosen = flag or settings.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if chosen:
        return chosen
    folder = Path.cwd() if "://" in storage_root else Path(storage_root)
    return f"sqlite:///{(folder / DEFAULT_DB_FILE).resolve()}"


def local_artifact_root(tracking_uri: str) -> str | None:
    """Artifacts of a local SQLite store live next to its file (MLflow's default is ./mlruns)."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    database = Path(tracking_uri.removeprefix("sqlite:///"))
    return (database.parent / DEFAULT_ARTIFACT_FOLDER).resolve().as_uri()


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
    tags = {}
    for package in VERSIONED_PACKAGES:
        try:
            tags[f"version.{package}"] = importlib_metadata.version(package)
        except importlib_metadata.PackageNotFoundError:
            continue
    return tags


def dataset_params(input_path: Any) -> dict[str, str]:
    """``dataset_id`` and ``dataset_hash`` of a trajectory-shard folder (empty for others)."""
    if not isinstance(input_path, str):
        return {}
    from rllib_lamo.data.shards import DatasetError, list_shards, read_metadata, resolve_filesystem

    try:
        metadata = read_metadata(input_path)
        shards = list_shards(input_path)
    except DatasetError:
        return {}
    filesystem, root = resolve_filesystem(input_path)
    digest = hashlib.sha256()
    for file in [f"{root.rstrip('/')}/metadata.json", *shards]:
        digest.update(file.rsplit("/", 1)[-1].encode())
        with filesystem.open_input_stream(file) as stream:
            while chunk := stream.read(1 << 20):
                digest.update(chunk)
    return {"dataset_id": str(metadata.get("name")), "dataset_hash": digest.hexdigest()}


def run_params(config: Mapping[str, Any], algorithm: str) -> dict[str, str]:
    """The flattened config as MLflow params, with the dataset's identity and the method."""
    from rllib_lamo.report import method_of

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
        # RLlib's own evaluation figure, the one other algorithms (BC, IQL, ...) have.
        episode_return = first_present(flat, ["evaluation/env_runners/episode_return_mean"])
        if episode_return is not None:
            metrics[f"{EVAL_PREFIX}/episode_return_mean"] = float(episode_return)
        for key, value in flat.items():
            section = key.split("/")[1] if key.startswith("evaluation/") else ""
            is_number = isinstance(value, numbers.Real) and not isinstance(value, bool)
            if is_number and (
                section in EVAL_SECTIONS or section.startswith(TARGET_SECTION_PREFIX)
            ):
                metrics[f"{EVAL_PREFIX}/{key.removeprefix('evaluation/')}"] = float(value)
    return {name: value for name, value in metrics.items() if np.isfinite(value)}


def evaluated_this_iteration(result: Mapping[str, Any], config: Mapping[str, Any]) -> bool:
    """RLlib evaluates after iterations that are multiples of `evaluation_interval`."""
    interval = config.get("evaluation_interval")
    iteration = result.get("training_iteration", 0)
    return bool(interval) and iteration % interval == 0 and "evaluation" in result


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
        step = int(result.get("training_iteration", iteration))
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
                    self._log_policy(run_id, local_dir)
        super().log_trial_end(trial, failed)

    def _log_learning_curve(self, run_id: str) -> None:
        from rllib_lamo.report import learning_curve_figure, metric_histories

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

    def _log_policy(self, run_id: str, checkpoint_dir: str) -> None:
        """The last checkpoint as the `policy` pyfunc model; registered if asked."""
        import mlflow

        with mlflow.start_run(run_id=run_id, nested=mlflow.active_run() is not None):
            info = mlflow.pyfunc.log_model(
                name=MODEL_NAME,
                python_model=LaMoPolicyModel(),
                artifacts={CHECKPOINT_ARTIFACT: checkpoint_dir},
                pip_requirements=[f"{p}=={v}" for p, v in _installed(("rllib-lamo", "ray"))],
            )
        if self.register_model:
            version = mlflow.register_model(info.model_uri, self.register_model)
            print(
                f"rllib: registered {info.model_uri} as model {version.name!r} "
                f"version {version.version}",
                flush=True,
            )


def _is_lamo(trial: Trial) -> bool:
    """Videos and the `policy` model need a LaMo policy; other algorithms get checkpoints."""
    from rllib_lamo.experiment import LAMO

    return trial.trainable_name == LAMO


def _installed(packages: tuple[str, ...]) -> Iterator[tuple[str, str]]:
    for package in packages:
        try:
            yield package, importlib_metadata.version(package)
        except importlib_metadata.PackageNotFoundError:
            continue


def _json_safe(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


# ------------------------------------------------------------------- the policy as a model
def local_checkpoint(uri: str) -> str:
    """A local LaMo checkpoint folder for a ``runs:/`` or ``models:/`` URI.

    Accepts the `policy` model (its MLmodel file names the checkpoint's folder) or a logged
    ``checkpoints/checkpoint_<n>`` folder.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        folder = Path(mlflow.artifacts.download_artifacts(uri))
    except (MlflowException, OSError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise ExperimentError(f"cannot download {uri}: {first_line}") from error
    candidates = [folder]
    if (folder / "MLmodel").is_file():
        from mlflow.models import Model

        artifacts = Model.load(folder).flavors.get("python_function", {}).get("artifacts", {})
        if CHECKPOINT_ARTIFACT in artifacts:
            candidates.append(folder / artifacts[CHECKPOINT_ARTIFACT]["path"])
    for candidate in candidates:
        if (candidate / "learner_group").is_dir():
            return str(candidate)
    raise ExperimentError(f"{uri} holds no LaMo checkpoint (no learner_group/ in {folder})")


def restore_policy(checkpoint_dir: str | Path) -> tuple[Any, Any]:
    """The RLModule of a LaMo checkpoint and the algorithm config it was trained with."""
    from ray.rllib.core import (
        COMPONENT_LEARNER,
        COMPONENT_LEARNER_GROUP,
        COMPONENT_RL_MODULE,
        DEFAULT_MODULE_ID,
    )
    from ray.rllib.core.rl_module.rl_module import RLModule

    from rllib_lamo.evaluation import _config_from_checkpoint

    checkpoint_dir = Path(checkpoint_dir).resolve()
    config = _config_from_checkpoint(str(checkpoint_dir))
    module_dir = (
        checkpoint_dir
        / COMPONENT_LEARNER_GROUP
        / COMPONENT_LEARNER
        / COMPONENT_RL_MODULE
        / DEFAULT_MODULE_ID
    )
    module = RLModule.from_checkpoint(module_dir)
    module.eval()
    return module, config


class LaMoPolicyModel(mlflow.pyfunc.PythonModel):
    """`predict`: actions for a batch of K-step contexts, from a logged LaMo checkpoint.

    Input: a dict of arrays shaped as `DecisionContext` builds them: ``obs`` [B, K, obs],
    ``actions`` [B, K, act], ``returns_to_go`` [B, K] (scaled), ``timesteps`` [B, K] and
    ``attention_mask`` [B, K]. Output: actions [B, act] (or [B] for discrete actions).
    """

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        self.module, self.config = restore_policy(context.artifacts[CHECKPOINT_ARTIFACT])

    def predict(
        self,
        context: mlflow.pyfunc.PythonModelContext,
        model_input,  # a dict of arrays: MLflow's type-hint schemas cannot describe it
        params: dict[str, Any] | None = None,
    ) -> np.ndarray:
        import torch
        from ray.rllib.core.columns import Columns

        batch = {key: torch.as_tensor(np.asarray(v)) for key, v in model_input.items()}
        return self.module.forward_inference(batch)[Columns.ACTIONS].numpy()


# --------------------------------------------------------------------------------- videos
@dataclass
class EpisodeRollout:
    """One episode of a restored policy: its return, length and (if rendered) frames."""

    episode_return: float
    length: int
    frames: list[np.ndarray]


def rollout_episode(
    module: Any,
    config: Any,
    env: Any,
    target_return: float,
    *,
    max_steps: int,
    seed: int | None = None,
    render_every: int = 1,
) -> EpisodeRollout:
    """Steps `env` with the policy outside any env runner, rendering if the env renders.

    Contexts come from the env-to-module pipeline the config builds for its env runners,
    so the same `DecisionContext` builds them as in evaluation.
    """
    from ray.rllib.core.columns import Columns
    from ray.rllib.env.single_agent_episode import SingleAgentEpisode

    from rllib_lamo.connectors.decision_context import DecisionContext

    pipeline = config.build_env_to_module_connector(env=env)
    contexts = [piece for piece in pipeline.connectors if isinstance(piece, DecisionContext)]
    if len(contexts) != 1:
        raise ValueError("expected one DecisionContext in the config's env-to-module pipeline")
    contexts[0].target_return = float(target_return)
    rendering = env.render_mode == "rgb_array"
    observation, info = env.reset(seed=seed)
    episode = SingleAgentEpisode(
        observation_space=env.observation_space, action_space=env.action_space
    )
    episode.add_env_reset(observation, info)
    frames = [env.render()] if rendering else []
    episode_return = 0.0
    for step in range(1, max_steps + 1):
        batch = pipeline(
            rl_module=module, batch={}, episodes=[episode], explore=False, shared_data={}
        )
        action = module.forward_inference(batch)[Columns.ACTIONS][0].numpy()
        if hasattr(env.action_space, "low"):
            action = np.clip(action, env.action_space.low, env.action_space.high)
        observation, reward, terminated, truncated, info = env.step(action)
        episode.add_env_step(
            observation, action, reward, info, terminated=terminated, truncated=truncated
        )
        episode_return += float(reward)
        if rendering and step % render_every == 0:
            frames.append(env.render())
        if terminated or truncated:
            break
    return EpisodeRollout(episode_return, len(episode), frames)


def record_policy_videos(
    checkpoint_dir: str | Path,
    out_dir: Path,
    *,
    max_steps: int = 1000,
) -> list[Path]:
    """Renders one episode per target return offscreen and writes ``target_<R>.gif`` files.

    GIF, because writing MP4 needs ffmpeg, which no installed package ships here. MuJoCo
    renders through ``MUJOCO_GL`` (default here: egl; osmesa also works where installed).
    """
    import gymnasium as gym
    import imageio.v2 as imageio

    from rllib_lamo.evaluation import target_key

    module, config = restore_policy(checkpoint_dir)
    _check_renderer(config.env)
    paths = []
    for target_return in config.target_returns:
        env = gym.make(config.env, render_mode="rgb_array", width=VIDEO_SIZE, height=VIDEO_SIZE)
        try:
            rollout = rollout_episode(
                module,
                config,
                env,
                target_return,
                max_steps=max_steps,
                seed=config.seed,
                render_every=max(1, -(-max_steps // MAX_VIDEO_FRAMES)),
            )
        finally:
            env.close()
        path = out_dir / f"{target_key(target_return)}.gif"
        imageio.mimsave(path, rollout.frames, duration=1000 / VIDEO_FPS, loop=0)
        paths.append(path)
    return paths


class RendererUnavailable(RuntimeError):
    """MuJoCo cannot render offscreen on this host (no EGL/OSMesa, or a bad MUJOCO_GL)."""


def _check_renderer(env_id: str) -> None:
    """Renders one frame, so that a missing OpenGL backend is named as such."""
    import gymnasium as gym

    # Headless hosts need an offscreen backend; MuJoCo's default (glfw) needs a display.
    os.environ.setdefault("MUJOCO_GL", "egl")
    env = gym.make(env_id, render_mode="rgb_array", width=VIDEO_SIZE, height=VIDEO_SIZE)
    try:
        env.reset(seed=0)
        env.render()
    except Exception as error:
        raise RendererUnavailable(
            f"MuJoCo could not render offscreen with MUJOCO_GL={os.environ['MUJOCO_GL']} "
            f"({type(error).__name__}: {error}); try MUJOCO_GL=egl or MUJOCO_GL=osmesa"
        ) from error
    finally:
        env.close()
