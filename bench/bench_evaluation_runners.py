"""Evaluation throughput: the same episodes on 1 vs N evaluation env runners, in one run.

    python bench/bench_evaluation_runners.py [--episodes 32] [--runners 1 4]
        [--envs-per-runner 1] [--language-model tiny-gpt2] [--lm-num-layers N]

Each setup is what `LaMo` builds for `evaluation_num_env_runners` x `num_envs_per_env_runner`:
remote env runners on real Hopper-v5 with LaMo's decision-context connector and the LaMo module
(one set of random weights, loaded into every runner). Each setup runs `--episodes` episodes
per target return through `run_target_returns` (LaMo's evaluation) after a warm-up round, and
the script prints episodes/s, env steps/s and the speed-up over the first setup. Episode lengths
depend on the env seeds, which differ per runner, so env steps/s is the fairer figure. No
absolute claims: the machine's load is printed with the results.
"""

from __future__ import annotations

import argparse
import itertools
import os
import time

import gymnasium as gym
import ray
import torch
from ray.rllib.env.env_runner_group import EnvRunnerGroup

from rllib_lamo.evaluation import run_target_returns
from rllib_lamo.lamo import LaMoConfig

ENV_ID = "Hopper-v5"


def evaluation_group(
    args: argparse.Namespace, num_runners: int, num_envs: int, state: dict
) -> EnvRunnerGroup:
    """Evaluation env runners as LaMo builds them, all holding the policy `state`."""
    config = (
        LaMoConfig()
        .environment(ENV_ID)
        .training(
            language_model=args.language_model,
            lm_num_layers=args.lm_num_layers,
            context_len=args.context_len,
            target_returns=args.targets,
        )
        .env_runners(num_envs_per_env_runner=num_envs)
        .evaluation(evaluation_num_env_runners=num_runners)
        .debugging(seed=0)
    )
    group = EnvRunnerGroup(config=config.get_evaluation_config_object(), local_env_runner=False)
    group.foreach_env_runner(lambda runner: runner.module.set_state(state), local_env_runner=False)
    return group


def policy_state(args: argparse.Namespace) -> dict:
    """One random LaMo policy for every setup, so that they all run the same network."""
    config = (
        LaMoConfig()
        .environment(ENV_ID)
        .training(
            language_model=args.language_model,
            lm_num_layers=args.lm_num_layers,
            context_len=args.context_len,
        )
        .debugging(seed=0)
    )
    spec = config.get_rl_module_spec(env=gym.make(ENV_ID), inference_only=True)
    torch.manual_seed(0)  # the same random policy (and episode lengths) in every run
    return spec.build().get_state()


def measure(
    args: argparse.Namespace, num_runners: int, num_envs: int, state: dict
) -> tuple[float, int, float]:
    """(seconds, env steps, mean episode length) of `--episodes` episodes per target."""
    group = evaluation_group(args, num_runners, num_envs, state)
    try:
        # Warm-up: the first episodes pay for connector and module first calls.
        run_target_returns(
            group,
            target_returns=args.targets[:1],
            num_episodes=num_runners * num_envs,
            env_id=ENV_ID,
        )
        started = time.perf_counter()
        metrics, env_steps, _ = run_target_returns(
            group, target_returns=args.targets, num_episodes=args.episodes, env_id=ENV_ID
        )
        elapsed = time.perf_counter() - started
    finally:
        group.stop()
    lengths = [metrics[key]["episode_len_mean"] for key in metrics if key.startswith("target_")]
    return elapsed, env_steps, sum(lengths) / len(lengths)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=32, help="per target return")
    parser.add_argument("--runners", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--envs-per-runner", type=int, nargs="+", default=[1])
    parser.add_argument("--targets", type=float, nargs="+", default=[3600.0, 1800.0])
    parser.add_argument("--language-model", default="tiny-gpt2")
    parser.add_argument("--lm-num-layers", type=int, default=None)
    parser.add_argument("--context-len", type=int, default=20)
    args = parser.parse_args()

    # One logical CPU per runner whatever the core count: the point is how far runners scale
    # on this machine, and an oversubscribed one shows it in the ratio.
    ray.init(
        num_cpus=max(args.runners) + 1,
        object_store_memory=300 * 1024**2,
        include_dashboard=False,
        log_to_driver=False,
    )
    try:
        state = policy_state(args)
        print(
            f"{args.episodes} episodes x {len(args.targets)} targets, {args.language_model}"
            f" (layers: {args.lm_num_layers or 'all'}), K={args.context_len}, "
            f"{os.cpu_count()} cores, load before: {os.getloadavg()[0]:.2f}"
        )
        print(
            f"{'runners':>7} {'envs':>4} {'seconds':>8} {'episodes/s':>10} "
            f"{'steps/s':>8} {'ep. len':>7} {'speed-up (eps, steps)':>22}"
        )
        baseline: tuple[float, float] | None = None
        for num_runners, num_envs in itertools.product(args.runners, args.envs_per_runner):
            elapsed, env_steps, episode_len = measure(args, num_runners, num_envs, state)
            episodes_per_s = args.episodes * len(args.targets) / elapsed
            steps_per_s = env_steps / elapsed
            baseline = baseline or (episodes_per_s, steps_per_s)
            print(
                f"{num_runners:>7} {num_envs:>4} {elapsed:>8.2f} {episodes_per_s:>10.2f} "
                f"{steps_per_s:>8.0f} {episode_len:>7.1f} "
                f"{episodes_per_s / baseline[0]:>13.2f}x {steps_per_s / baseline[1]:>6.2f}x"
            )
        print(f"load after: {os.getloadavg()[0]:.2f}")
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
