"""Evaluation of a LaMo policy at several target returns, on env runners in parallel.

Decision Transformers are conditioned on the return they should achieve, and LaMo reports
the best of a few targets. `evaluate_target_returns` is the `custom_evaluation_function`
that runs `evaluation_duration` episodes per target spread over the evaluation env runners;
`evaluate_checkpoint` does the same for a saved run without its dataset or learner.

Every (target return, episode index) pair is one task with its own env seed, derived from
the config's `seed` and the episode index alone. Each runner gets a share of the tasks and
runs them side by side on its `num_envs_per_env_runner` sub-envs, all targets mixed, with
one model call per env step for all of them; an env whose episode ends starts the runner's
next task. So the scores for a seed do not depend on how many runners or envs there are, and
a runner that fails loses only its own tasks, which are run again.
"""

from __future__ import annotations

import pathlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import numpy as np
import torch
from ray.rllib.algorithms.algorithm_config import AlgorithmConfig
from ray.rllib.core.columns import Columns
from ray.rllib.env.env_runner_group import EnvRunnerGroup
from ray.rllib.utils.metrics import ENV_RUNNER_RESULTS, EVALUATION_RESULTS
from ray.rllib.utils.metrics.metrics_logger import MetricsLogger
from ray.rllib.utils.spaces.space_utils import clip_action, unsquash_action

from rllib_lamo.checkpoints import config_from_checkpoint, module_location
from rllib_lamo.connectors.decision_context import ContextBuffer
from rllib_lamo.scores import reference_scores
from rllib_lamo.storage import absolute_location

if TYPE_CHECKING:
    from ray.rllib.algorithms.algorithm import Algorithm
    from ray.rllib.env.env_runner import EnvRunner

BEST_KEY = "best"
# Salt of the evaluation episodes' action streams (kept apart from their env seeds).
ACTION_STREAM = 0x5A4D


@dataclass(frozen=True)
class EpisodeTask:
    """One evaluation episode: its target return, its index within that target and env seed."""

    target_return: float
    index: int
    seed: int | None


@dataclass
class EpisodeResult:
    """A finished episode of a task."""

    task: EpisodeTask
    episode_return: float
    length: int
    duration_s: float


@dataclass
class TargetRollouts:
    """Finished episodes of one target return (from one or several env runners)."""

    target_return: float
    returns: list[float] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)


@dataclass
class RunnerRollouts:
    """What one env runner sends back from one evaluation call."""

    episodes: list[EpisodeResult]
    env_steps: int
    metrics: dict[str, Any]


def target_key(target_return: float) -> str:
    """Metric key of a target return: ``target_3600`` (``target_0.5`` for fractional ones)."""
    value = float(target_return)
    return f"target_{int(value)}" if value.is_integer() else f"target_{value}"


def episode_seed(seed: int | None, index: int) -> int | None:
    """The env seed of the `index`-th episode of every target (None: unseeded episodes).

    Independent streams per episode (`SeedSequence`), the same for every target so that
    targets are compared on the same initial states.
    """
    if seed is None:
        return None
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def evaluate_target_returns(
    algorithm: Algorithm, eval_env_runner_group: EnvRunnerGroup | None
) -> tuple[dict[str, Any], int, int]:
    """`config.evaluation(custom_evaluation_function=...)` for LaMo.

    `Algorithm.evaluate` has already synced the learner's weights to the evaluation env
    runners. RLlib (new API stack) discards this function's returned metrics and reports
    what sits under ``evaluation`` in `algorithm.metrics`, so they go there too.
    """
    if eval_env_runner_group is None:
        raise ValueError(
            "LaMo evaluates on an evaluation env runner group: set "
            "`config.evaluation(evaluation_interval=..., evaluation_num_env_runners=...)`."
        )
    config = algorithm.evaluation_config
    if config.evaluation_duration_unit != "episodes" or config.evaluation_duration == "auto":
        raise ValueError(
            "LaMo evaluation counts episodes: set `evaluation_duration` to a number of episodes "
            "and `evaluation_duration_unit='episodes'`."
        )
    metrics, env_steps, runner_metrics = run_target_returns(
        eval_env_runner_group,
        target_returns=config.target_returns,
        num_episodes=config.evaluation_duration,
        env_id=config.env if isinstance(config.env, str) else None,
        seed=config.seed,
    )
    algorithm.metrics.aggregate(runner_metrics, key=(EVALUATION_RESULTS, ENV_RUNNER_RESULTS))
    # Merged in (not logged directly) like the env runners' metrics: `Algorithm.evaluate` can
    # read them as the latest merge, and they stay in later results until the next evaluation.
    latest = MetricsLogger()
    latest.log_dict(metrics, reduce="mean", window=1)
    algorithm.metrics.aggregate([latest.reduce()], key=EVALUATION_RESULTS)
    return metrics, env_steps, env_steps


def run_target_returns(
    env_runner_group: EnvRunnerGroup,
    *,
    target_returns: Sequence[float],
    num_episodes: int,
    env_id: str | None,
    seed: int | None,
) -> tuple[dict[str, Any], int, list[dict[str, Any]]]:
    """Runs `num_episodes` episodes per target on the group and summarises them.

    Uses the healthy remote env runners in parallel, or the local one if there are none;
    tasks of a runner that fails are dispatched again, with the same seeds. Returns the
    metrics (see `summarise`), the env steps taken and the env runners' own metrics (for
    `MetricsLogger.aggregate`).
    """
    started = time.perf_counter()
    # Episode-major order: a runner's share mixes all targets, so they finish together.
    ordered = [
        EpisodeTask(float(target), index, episode_seed(seed, index))
        for index in range(num_episodes)
        for target in target_returns
    ]
    finished: dict[EpisodeTask, EpisodeResult] = {}
    runner_metrics: list[dict[str, Any]] = []
    env_steps = 0
    while tasks := [task for task in ordered if task not in finished]:
        for result in _dispatch(env_runner_group, tasks):
            env_steps += result.env_steps
            runner_metrics.append(result.metrics)
            finished.update((episode.task, episode) for episode in result.episodes)
    rollouts = {float(t): TargetRollouts(float(t)) for t in target_returns}
    for task in ordered:
        rollouts[task.target_return].returns.append(finished[task].episode_return)
        rollouts[task.target_return].lengths.append(finished[task].length)
    metrics = summarise(list(rollouts.values()), env_id=env_id)
    elapsed = time.perf_counter() - started
    metrics.update(
        evaluation_time_s=elapsed, num_env_steps=env_steps, env_steps_per_s=env_steps / elapsed
    )
    return metrics, env_steps, runner_metrics


def summarise(rollouts: Sequence[TargetRollouts], *, env_id: str | None) -> dict[str, Any]:
    """Per-target return statistics and the best target (the figure LaMo reports).

    Normalised scores (D4RL's 0-100 scale) appear only where the env has reference scores.
    """
    reference = reference_scores(env_id) if env_id else None
    metrics: dict[str, Any] = {}
    for rollout in rollouts:
        returns = np.asarray(rollout.returns, dtype=np.float64)
        target_metrics = {
            "target_return": rollout.target_return,
            "return_mean": float(returns.mean()),
            "return_std": float(returns.std()),
            "episode_len_mean": float(np.mean(rollout.lengths)),
            "num_episodes": len(returns),
        }
        if reference is not None:
            scores = reference.normalise(returns)
            target_metrics["normalised_score_mean"] = float(scores.mean())
            target_metrics["normalised_score_std"] = float(scores.std())
        metrics[target_key(rollout.target_return)] = target_metrics

    best = max(metrics.values(), key=lambda m: m["return_mean"])
    metrics[BEST_KEY] = {"target_return": best["target_return"], "return": best["return_mean"]}
    if reference is not None:
        metrics[BEST_KEY]["normalised_score"] = best["normalised_score_mean"]
    return metrics


def _dispatch(env_runner_group: EnvRunnerGroup, tasks: list[EpisodeTask]) -> list[RunnerRollouts]:
    """One parallel round: the tasks dealt round-robin over the healthy runners."""
    if env_runner_group.num_remote_env_runners() == 0:
        return [rollout_tasks(env_runner_group.local_env_runner, shares={0: tasks})]

    runner_ids = env_runner_group.healthy_env_runner_ids()
    if not runner_ids:
        raise RuntimeError("No healthy evaluation env runner left to run episodes on.")
    shares = {
        runner_id: tasks[rank :: len(runner_ids)]
        for rank, runner_id in enumerate(runner_ids)
        if tasks[rank :: len(runner_ids)]
    }
    return env_runner_group.foreach_env_runner(
        rollout_tasks,
        kwargs={"shares": shares},
        local_env_runner=False,
        remote_worker_ids=list(shares),
    )


def rollout_tasks(env_runner: EnvRunner, *, shares: dict[int, list[EpisodeTask]]) -> RunnerRollouts:
    """Runs on an env runner: its share of the tasks, side by side on its sub-envs."""
    tasks = shares[env_runner.worker_index]
    episodes, env_steps = run_episodes(
        env_runner.module, _sub_envs(env_runner), tasks, env_runner.config
    )
    # The env runner's own episode and step metrics (`evaluation/env_runners/...`), as its
    # `sample()` would log them.
    for episode in episodes:
        env_runner._log_episode_metrics(episode.length, episode.episode_return, episode.duration_s)
    env_runner._increase_sampled_metrics(env_steps, len(episodes))
    return RunnerRollouts(episodes=episodes, env_steps=env_steps, metrics=env_runner.get_metrics())


def run_episodes(
    module: Any, envs: Sequence[gym.Env], tasks: Sequence[EpisodeTask], config: AlgorithmConfig
) -> tuple[list[EpisodeResult], int]:
    """Runs `tasks` in order on up to `len(envs)` envs at once, one `forward_inference` per step.

    A free env resets (with its task's seed) into the next task; a done env takes the next
    one or drops out of the batch. `config` gives the context (`context_len`, `rtg_scale`,
    `max_ep_len`) and how actions reach the env (`normalize_actions`, `clip_actions`), as
    in RLlib's module-to-env pipeline; contexts keep the module's raw actions.
    Returns the finished episodes (in order of finishing) and the env steps taken.
    """
    envs = list(envs)[: len(tasks)]
    if not envs:
        return [], 0
    action_space = envs[0].action_space
    buffer = ContextBuffer(
        len(envs),
        envs[0].observation_space,
        action_space,
        context_len=config.context_len,
        rtg_scale=config.rtg_scale,
        max_ep_len=config.max_ep_len,
    )
    device = _module_device(module)
    queue = iter(tasks)
    running: dict[int, tuple[EpisodeTask, float]] = {}  # row -> (task, start time)
    sample = isinstance(action_space, gym.spaces.Discrete) and config.sample_discrete_actions
    action_rngs: dict[int, np.random.Generator] = {}  # row -> its episode's action stream

    def start_next(row: int) -> None:
        task = next(queue, None)
        if task is None:
            return
        observation, _ = envs[row].reset(seed=task.seed)
        buffer.start(row, observation, task.target_return)
        running[row] = (task, time.perf_counter())
        if sample:
            action_rngs[row] = np.random.default_rng([ACTION_STREAM, task.index, task.seed or 0])

    for row in range(len(envs)):
        start_next(row)
    finished: list[EpisodeResult] = []
    env_steps = 0
    while running:
        rows = np.fromiter(running, dtype=np.int64, count=len(running))
        inputs = {
            column: torch.from_numpy(values).to(device)
            for column, values in buffer.batch(rows).items()
        }
        with torch.no_grad():
            outputs = module.forward_inference(inputs)
        if sample:
            uniforms = np.array([action_rngs[row].random() for row in rows])
            actions = sample_categorical(outputs[Columns.ACTION_DIST_INPUTS].cpu(), uniforms)
        else:
            actions = outputs[Columns.ACTIONS].cpu().numpy()
        steps = [
            envs[row].step(action)
            for row, action in zip(rows, _to_env(actions, action_space, config), strict=True)
        ]
        observations, rewards, terminated, truncated, _ = (
            np.asarray(x) for x in zip(*steps, strict=True)
        )
        buffer.step(rows, actions, rewards.astype(np.float64), observations)
        env_steps += len(rows)
        for row in rows[terminated | truncated]:
            task, started = running.pop(row)
            finished.append(
                EpisodeResult(
                    task,
                    float(buffer.returns[row]),
                    int(buffer.lengths[row]),
                    time.perf_counter() - started,
                )
            )
            start_next(row)
    return finished, env_steps


def sample_categorical(logits: torch.Tensor, uniforms: np.ndarray) -> np.ndarray:
    """One draw per row from softmax(`logits`) by inverting its CDF at the row's uniform."""
    cdf = torch.softmax(logits.double(), dim=-1).cumsum(dim=-1).numpy()
    return np.minimum((cdf < uniforms[:, None]).sum(axis=1), logits.shape[-1] - 1)


def _to_env(actions: np.ndarray, action_space: gym.Space, config: AlgorithmConfig) -> np.ndarray:
    """The module's actions as the env gets them (as RLlib's `NormalizeAndClipActions`)."""
    if config.normalize_actions:
        return unsquash_action(actions, action_space)
    if config.clip_actions:
        return clip_action(actions, action_space)
    return actions


def _sub_envs(env_runner: EnvRunner) -> list[gym.Env]:
    """The single envs inside an env runner's (synchronous) vector env."""
    vector_env = env_runner.env.unwrapped
    if not hasattr(vector_env, "envs"):
        raise ValueError(
            "LaMo's evaluation steps the sub-envs of a synchronous vector env, but the env "
            f"runner has a {type(vector_env).__name__}: set "
            "`config.env_runners(gym_env_vectorize_mode='SYNC')`."
        )
    return list(vector_env.envs)


def _module_device(module: Any) -> torch.device:
    """Where the module's weights live (CPU for a module without any)."""
    weight = next(iter(module.parameters()), None)
    return weight.device if weight is not None else torch.device("cpu")


def evaluate_checkpoint(
    checkpoint_path: str | pathlib.Path,
    *,
    episodes: int,
    target_returns: Sequence[float] | None = None,
    num_env_runners: int = 2,
    seed: int | None = None,
) -> dict[str, Any]:
    """Evaluates a LaMo checkpoint at its (or the given) target returns; Ray must be running.

    Builds evaluation env runners from the checkpoint's config and loads the policy's state
    into them; neither the training data nor a learner is needed. The checkpoint must be
    readable from every env runner (a local path on one node, shared or cloud storage
    otherwise). `num_env_runners=0` evaluates in this process.
    """
    path = absolute_location(checkpoint_path)
    config = config_from_checkpoint(path)
    eval_config = config.get_evaluation_config_object()
    eval_config.env_runners(num_env_runners=num_env_runners)
    if seed is not None:
        eval_config.debugging(seed=seed)
    eval_config.freeze()

    module_path = module_location(path)
    group = EnvRunnerGroup(config=eval_config, local_env_runner=num_env_runners == 0)
    try:
        group.foreach_env_runner(
            lambda env_runner: env_runner.module.restore_from_path(module_path),
            local_env_runner=num_env_runners == 0,
        )
        metrics, _, _ = run_target_returns(
            group,
            target_returns=list(target_returns or config.target_returns),
            num_episodes=episodes,
            env_id=config.env if isinstance(config.env, str) else None,
            seed=eval_config.seed,
        )
    finally:
        group.stop()
    return metrics
