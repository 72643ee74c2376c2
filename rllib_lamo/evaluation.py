"""Evaluation of a LaMo policy at several target returns, on env runners in parallel.

Decision Transformers are conditioned on the return they should achieve, and LaMo reports
the best of a few targets. `evaluate_target_returns` is the `custom_evaluation_function`
that runs `evaluation_duration` episodes per target spread over the evaluation env runners;
`evaluate_checkpoint` does the same for a saved run without its dataset or learner.

Episodes are counted per vector-env slot and fixed in advance (the first n episodes of each
slot), so that short episodes, which finish first, are not over-represented when an env
runner steps several envs at once.
"""

from __future__ import annotations

import pathlib
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from ray.rllib.env.env_runner_group import EnvRunnerGroup
from ray.rllib.utils.metrics import ENV_RUNNER_RESULTS, EVALUATION_RESULTS
from ray.rllib.utils.metrics.metrics_logger import MetricsLogger

from rllib_lamo.checkpoints import config_from_checkpoint, module_location
from rllib_lamo.connectors.decision_context import (
    decision_context_of,
    episode_env_index,
    episode_return_so_far,
)
from rllib_lamo.scores import reference_scores
from rllib_lamo.storage import absolute_location

if TYPE_CHECKING:
    from ray.rllib.algorithms.algorithm import Algorithm
    from ray.rllib.env.env_runner import EnvRunner

# Env steps per sub-env between checks whether every slot has finished its episodes: small
# enough to waste few steps after the last episode ends, large enough to amortise `sample()`.
STEPS_PER_ENV_PER_SAMPLE = 10

BEST_KEY = "best"


@dataclass
class TargetRollouts:
    """Finished episodes of one target return (from one or several env runners)."""

    target_return: float
    returns: list[float] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)


@dataclass
class RunnerRollouts:
    """What one env runner sends back from one evaluation call."""

    targets: list[TargetRollouts]
    env_steps: int
    metrics: dict[str, Any]


def target_key(target_return: float) -> str:
    """Metric key of a target return: ``target_3600`` (``target_0.5`` for fractional ones)."""
    value = float(target_return)
    return f"target_{int(value)}" if value.is_integer() else f"target_{value}"


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
) -> tuple[dict[str, Any], int, list[dict[str, Any]]]:
    """Runs `num_episodes` episodes per target on the group and summarises them.

    Uses the healthy remote env runners in parallel, or the local one if there are none.
    Returns the metrics (see `summarise`), the env steps taken and the env runners' own
    metrics (for `MetricsLogger.aggregate`).
    """
    started = time.perf_counter()
    rollouts = {float(t): TargetRollouts(float(t)) for t in target_returns}
    runner_metrics: list[dict[str, Any]] = []
    env_steps = 0
    while shortfall := {
        target: num_episodes - len(done.returns)
        for target, done in rollouts.items()
        if len(done.returns) < num_episodes
    }:
        for result in _dispatch(env_runner_group, shortfall):
            env_steps += result.env_steps
            runner_metrics.append(result.metrics)
            for part in result.targets:
                rollouts[part.target_return].returns.extend(part.returns)
                rollouts[part.target_return].lengths.extend(part.lengths)
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


def _dispatch(
    env_runner_group: EnvRunnerGroup, episodes_per_target: dict[float, int]
) -> list[RunnerRollouts]:
    """One parallel round: each runner gets its share of every target's episodes."""
    if env_runner_group.num_remote_env_runners() == 0:
        plan = list(episodes_per_target.items())
        return [rollout_targets(env_runner_group.local_env_runner, plans={0: plan})]

    runner_ids = env_runner_group.healthy_env_runner_ids()
    if not runner_ids:
        raise RuntimeError("No healthy evaluation env runner left to run episodes on.")
    plans: dict[int, list[tuple[float, int]]] = defaultdict(list)
    for offset, (target, count) in enumerate(episodes_per_target.items()):
        # Rotate who gets the remainder, so one runner does not get every extra episode.
        for rank, runner_id in enumerate(runner_ids):
            share = count // len(runner_ids) + (
                (rank - offset) % len(runner_ids) < count % len(runner_ids)
            )
            if share:
                plans[runner_id].append((target, share))
    return env_runner_group.foreach_env_runner(
        rollout_targets,
        kwargs={"plans": dict(plans)},
        local_env_runner=False,
        remote_worker_ids=list(plans),
    )


def rollout_targets(
    env_runner: EnvRunner, *, plans: dict[int, list[tuple[float, int]]]
) -> RunnerRollouts:
    """Runs on an env runner: its planned (target return, episodes) pairs, one after another."""
    plan = plans[env_runner.worker_index]
    decision_context = decision_context_of(env_runner)
    targets, env_steps = [], 0
    for target_return, num_episodes in plan:
        decision_context.target_return = target_return
        rollouts, steps = _rollout_episodes(env_runner, target_return, num_episodes)
        targets.append(rollouts)
        env_steps += steps
    return RunnerRollouts(targets=targets, env_steps=env_steps, metrics=env_runner.get_metrics())


def _rollout_episodes(
    env_runner: EnvRunner, target_return: float, num_episodes: int
) -> tuple[TargetRollouts, int]:
    """The first episodes of each vector-env slot after a reset, `num_episodes` in total."""
    num_envs = env_runner.num_envs
    quotas = [
        num_episodes // num_envs + (slot < num_episodes % num_envs) for slot in range(num_envs)
    ]
    finished: list[list[tuple[float, int]]] = [[] for _ in range(num_envs)]
    env_steps = 0
    force_reset = True
    while any(len(done) < quota for done, quota in zip(finished, quotas, strict=True)):
        chunks = env_runner.sample(
            num_timesteps=num_envs * STEPS_PER_ENV_PER_SAMPLE,
            explore=False,
            force_reset=force_reset,
        )
        force_reset = False
        env_steps += sum(len(chunk) for chunk in chunks)
        for chunk in chunks:
            if chunk.is_done:
                finished[episode_env_index(chunk)].append((episode_return_so_far(chunk), chunk.t))
    kept = [
        episode for done, quota in zip(finished, quotas, strict=True) for episode in done[:quota]
    ]
    return (
        TargetRollouts(
            target_return,
            returns=[episode_return for episode_return, _ in kept],
            lengths=[length for _, length in kept],
        ),
        env_steps,
    )


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
        )
    finally:
        group.stop()
    return metrics
