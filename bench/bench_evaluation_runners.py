"""Evaluation rounds: RLlib's one-env sampling loop vs LaMo's batched evaluation, paired.

    python bench/bench_evaluation_runners.py [--episodes 10] [--targets 3600 1800]
        [--runners 2] [--envs-per-runner 10] [--repeats 2]
        [--episode-steps 200] [--language-model lamo-tiny-en] [--lm-num-layers N]
        [--context-len 20]

Three ways to run the same evaluation round (every target x `--episodes` episodes of
Hopper-v5, the same LaMo weights, the same per-episode seeds) on `--runners` remote
evaluation env runners:

- ``rllib-sample``: how evaluation ran before batching: one env per runner, one episode at a
  time through `EnvRunner.sample()` and the `DecisionContext` connector, which rebuilds the
  K-step context from the episode at every step (each episode reset with its task's seed);
- ``sequential``: LaMo's evaluation with ``num_envs_per_env_runner=1``;
- ``batched``: LaMo's evaluation with ``num_envs_per_env_runner=--envs-per-runner``.

Rounds are interleaved (A, B, C, A, B, C, ...) and the script prints the median of the paired
time ratios, env steps/s, whether the scores are identical, the machine's load, and the
paper protocol's round time extrapolated from the measured steps/s (4 targets x 20 episodes
x 1000 steps on 2 runners).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import gymnasium as gym
import numpy as np
import ray
import torch
from ray.rllib.env.env_runner_group import EnvRunnerGroup

from rllib_lamo.connectors.decision_context import decision_context_of
from rllib_lamo.evaluation import EpisodeTask, episode_seed, run_target_returns, target_key
from rllib_lamo.lamo import LaMoConfig

ENV_ID = "Hopper-v5"
SEED = 0
PAPER_ROUND_STEPS = 4 * 20 * 1000  # targets x episodes x steps (the paper's protocol)
PAPER_RUNNERS = 2


def lamo_config(args: argparse.Namespace) -> LaMoConfig:
    # A random policy falls within ~15 steps; a trained one runs up to 1000. Episodes of a
    # fixed length (no early termination) time the round as a trained policy would.
    env_config = {"terminate_when_unhealthy": False, "max_episode_steps": args.episode_steps}
    return (
        LaMoConfig()
        .environment(ENV_ID, env_config=env_config if args.episode_steps else {})
        .training(
            language_model=args.language_model,
            lm_num_layers=args.lm_num_layers,
            context_len=args.context_len,
            target_returns=args.targets,
        )
        .debugging(seed=SEED)
    )


def policy_state(args: argparse.Namespace) -> dict:
    """One random LaMo policy for every setup, so that they all run the same network."""
    spec = lamo_config(args).get_rl_module_spec(env=gym.make(ENV_ID), inference_only=True)
    torch.manual_seed(0)
    return spec.build().get_state()


def evaluation_group(args: argparse.Namespace, num_envs: int, state: dict) -> EnvRunnerGroup:
    """Evaluation env runners as LaMo builds them, all holding the policy `state`."""
    config = (
        lamo_config(args)
        .env_runners(num_envs_per_env_runner=num_envs)
        .evaluation(evaluation_num_env_runners=args.runners)
    )
    group = EnvRunnerGroup(config=config.get_evaluation_config_object(), local_env_runner=False)
    group.foreach_env_runner(lambda runner: runner.module.set_state(state), local_env_runner=False)
    return group


def rllib_sample_round(group: EnvRunnerGroup, args: argparse.Namespace) -> tuple[dict, int]:
    """The round through `EnvRunner.sample()`: one env, one episode at a time per runner."""
    tasks = [
        EpisodeTask(float(target), index, episode_seed(SEED, index))
        for index in range(args.episodes)
        for target in args.targets
    ]
    runner_ids = group.healthy_env_runner_ids()
    shares = {rid: tasks[rank :: len(runner_ids)] for rank, rid in enumerate(runner_ids)}

    def run_share(runner) -> list[tuple[EpisodeTask, float, int]]:
        results = []
        for task in shares[runner.worker_index]:
            decision_context_of(runner).target_return = task.target_return
            runner._seed, runner._needs_initial_reset = task.seed, True  # this task's seed
            (episode,) = runner.sample(num_episodes=1, explore=False, force_reset=True)
            results.append((task, episode.get_return(), len(episode)))
        return results

    finished = [
        result
        for share in group.foreach_env_runner(run_share, local_env_runner=False)
        for result in share
    ]
    returns = {}
    for task, episode_return, _ in sorted(finished, key=lambda r: (r[0].index, r[0].target_return)):
        returns.setdefault(target_key(task.target_return), []).append(episode_return)
    return returns, sum(length for _, _, length in finished)


def lamo_round(group: EnvRunnerGroup, args: argparse.Namespace) -> tuple[dict, int]:
    """The round through LaMo's evaluation (`run_target_returns`)."""
    metrics, env_steps, _ = run_target_returns(
        group, target_returns=args.targets, num_episodes=args.episodes, env_id=ENV_ID, seed=SEED
    )
    return {target_key(t): metrics[target_key(t)]["return_mean"] for t in args.targets}, env_steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=10, help="per target return")
    parser.add_argument("--targets", type=float, nargs="+", default=[3600.0, 1800.0])
    parser.add_argument("--runners", type=int, default=2)
    parser.add_argument("--envs-per-runner", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--episode-steps",
        type=int,
        default=200,
        help="every episode runs this many steps (0: until the policy falls, ~15 steps)",
    )
    parser.add_argument("--language-model", default="lamo-tiny-en", help="the default's LM")
    parser.add_argument("--lm-num-layers", type=int, default=None)
    parser.add_argument("--context-len", type=int, default=20)
    args = parser.parse_args()

    ray.init(
        num_cpus=2 * args.runners + 1,  # two groups of runners are alive at once
        object_store_memory=300 * 1024**2,
        include_dashboard=False,
        log_to_driver=False,
    )
    try:
        state = policy_state(args)
        one_env = evaluation_group(args, 1, state)
        many_envs = evaluation_group(args, args.envs_per_runner, state)
        setups: dict[str, tuple[Callable, EnvRunnerGroup]] = {
            "rllib-sample": (rllib_sample_round, one_env),
            "sequential": (lamo_round, one_env),
            "batched": (lamo_round, many_envs),
        }
        print(
            f"{len(args.targets)} targets x {args.episodes} episodes of {ENV_ID}, "
            f"{args.language_model} ({args.lm_num_layers or 'all'} layers), K={args.context_len}, "
            f"{args.runners} runners, batched: {args.envs_per_runner} envs per runner; episodes "
            f"of {args.episode_steps or 'policy-decided'} steps; "
            f"{os.cpu_count()} cores, load before: {os.getloadavg()[0]:.2f}"
        )
        # Warm-up: first calls of the module and connectors, one short round each.
        warm_up = argparse.Namespace(**{**vars(args), "episodes": 1})
        for run, group in setups.values():
            run(group, warm_up)
        seconds: dict[str, list[float]] = {name: [] for name in setups}
        steps: dict[str, int] = {}
        scores: dict[str, dict] = {}
        for repeat in range(args.repeats):
            for name, (run, group) in setups.items():
                started = time.perf_counter()
                scores[name], steps[name] = run(group, args)
                seconds[name].append(time.perf_counter() - started)
                print(
                    f"  repeat {repeat} {name:>12}: {seconds[name][-1]:7.1f} s, "
                    f"{steps[name]} env steps, load {os.getloadavg()[0]:.2f}"
                )
        for group in (one_env, many_envs):
            group.stop()
    finally:
        ray.shutdown()

    print(f"{'setup':>12} {'median s':>9} {'steps/s':>8} {'ratio vs batched (paired median)':>34}")
    for name in setups:
        ratio = statistics.median(
            a / b for a, b in zip(seconds[name], seconds["batched"], strict=True)
        )
        median_s = statistics.median(seconds[name])
        print(f"{name:>12} {median_s:>9.1f} {steps[name] / median_s:>8.0f} {ratio:>33.2f}x")
    for name in setups:
        steps_per_s = steps[name] / statistics.median(seconds[name])
        print(
            f"paper protocol round ({PAPER_ROUND_STEPS} steps, {PAPER_RUNNERS} runners), "
            f"{name}: {PAPER_ROUND_STEPS / steps_per_s * args.runners / PAPER_RUNNERS / 60:.1f} min"
        )
    print(f"mean returns: {scores}")
    print(
        "scores identical: sequential == batched "
        f"{scores['sequential'] == scores['batched']}; rllib-sample == batched "
        f"(per-target means) {_means(scores['rllib-sample']) == scores['batched']}"
    )
    print(f"load after: {os.getloadavg()[0]:.2f}")


def _means(returns: dict[str, list[float]]) -> dict[str, float]:
    """Per-target mean returns, computed as `summarise` does."""
    return {
        key: float(np.asarray(values, dtype=np.float64).mean()) for key, values in returns.items()
    }


if __name__ == "__main__":
    main()
