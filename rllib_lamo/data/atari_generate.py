"""Atari behaviour datasets made on a CPU: scripted, RAM-reading policies with epsilon noise.

No DQN can be trained on Atari here in reasonable time, so `lamo-data generate pong|breakout`
records a scripted policy that reads the ball's and the paddle's positions from the console's
RAM (addresses as annotated by AtariARI, Anand et al. 2019) and moves the paddle to the ball;
with probability epsilon it takes a uniformly random action instead. The kind sets epsilon:

- ``expert``: epsilon 0.05;
- ``medium``: epsilon 0.5 (most points are still won or lost by the script; see
  datasets/README.md for the measured returns);
- ``medium-expert``: both, each `num_steps` steps.

The policy acts on the RAM, but the dataset holds only what a LaMo policy sees: the env's
observations (DT's protocol, `rllib_lamo.envs.atari`), stored as one frame per step. Qbert has
no scripted policy: use `lamo-data from-dqn-replay` for it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from rllib_lamo.data.writer import EpisodeDatasetWriter
from rllib_lamo.envs.atari import atari_env_id

BEHAVIOUR_EPSILON = {"medium": 0.5, "expert": 0.05}
_ROLLOUT_SEED_OFFSET = {"medium": 1000, "expert": 2000}

# RAM addresses (AtariARI) and the paddle offsets chosen by short sweeps here (the paddle's
# reference point is not its centre; Pong's paddle has momentum, so plain tracking is only
# about even with the computer): see datasets/README.md for the measured returns.
PONG_BALL_Y, PONG_PLAYER_Y, PONG_OFFSET = 54, 51, 10
BREAKOUT_BALL_X, BREAKOUT_BALL_Y, BREAKOUT_PLAYER_X, BREAKOUT_OFFSET = 99, 101, 72, 12
# Minimal action sets: Pong NOOP, FIRE, RIGHT (up), LEFT (down), ...; Breakout NOOP, FIRE,
# RIGHT, LEFT. A dead zone of 2 pixels keeps the paddle still when aligned.
DEAD_ZONE = 2


def pong_action(ram: np.ndarray) -> int:
    """Moves the right paddle's reference point to the ball's height (NOOP without a ball)."""
    ball_y, paddle_y = int(ram[PONG_BALL_Y]), int(ram[PONG_PLAYER_Y])
    if ball_y == 0:
        return 0
    gap = ball_y - (paddle_y + PONG_OFFSET)
    return 3 if gap > DEAD_ZONE else (2 if gap < -DEAD_ZONE else 0)


def breakout_action(ram: np.ndarray) -> int:
    """Launches the ball (FIRE) when there is none, else moves the paddle under it."""
    ball_x, ball_y = int(ram[BREAKOUT_BALL_X]), int(ram[BREAKOUT_BALL_Y])
    if ball_y == 0:
        return 1
    gap = ball_x - (int(ram[BREAKOUT_PLAYER_X]) + BREAKOUT_OFFSET)
    return 2 if gap > DEAD_ZONE else (3 if gap < -DEAD_ZONE else 0)


SCRIPTED_POLICIES: dict[str, Callable[[np.ndarray], int]] = {
    "pong": pong_action,
    "breakout": breakout_action,
}


def record_scripted_episodes(
    writer: EpisodeDatasetWriter,
    task: str,
    *,
    epsilon: float,
    num_steps: int,
    seed: int,
    id_prefix: str,
) -> list[float]:
    """Plays whole episodes (env seeds seed, seed+1, ...) until `num_steps` steps are written.

    Returns the episodes' returns. Episodes are started while fewer than `num_steps` steps are
    written and always finished, so short episodes are not favoured.
    """
    policy = SCRIPTED_POLICIES[task]
    env = gym.make(atari_env_id(task))
    num_actions = int(env.action_space.n)
    rng = np.random.default_rng(seed)
    returns: list[float] = []
    start_steps = writer.num_steps
    try:
        while writer.num_steps - start_steps < num_steps:
            obs, _ = env.reset(seed=seed + len(returns))
            ale = env.unwrapped.ale
            frames, actions, rewards = [], [], []
            done = terminated = False
            while not done:
                explore = rng.random() < epsilon
                action = int(rng.integers(num_actions)) if explore else policy(ale.getRAM())
                frames.append(obs[-1])  # the newest frame of the stack: one per step
                next_obs, reward, terminated, truncated, _ = env.step(action)
                actions.append(action)
                rewards.append(reward)
                done = terminated or truncated
                obs = next_obs
            writer.add_episode(
                np.stack(frames),
                np.asarray(actions, dtype=np.int64),
                np.asarray(rewards, dtype=np.float32),
                bool(terminated),
                eps_id=f"{id_prefix}-{len(returns):06d}",
            )
            returns.append(float(np.sum(rewards, dtype=np.float64)))
    finally:
        env.close()
    return returns


def generate_atari(
    task: str,
    kind: str,
    out: str | os.PathLike | None = None,
    *,
    num_steps: int = 50_000,
    seed: int = 0,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write a scripted-policy dataset for `task` (pong, breakout) of `kind`."""
    if task not in SCRIPTED_POLICIES:
        raise ValueError(
            f"no scripted behaviour policy for {task!r} (only {sorted(SCRIPTED_POLICIES)}): "
            "convert DQN Replay data with `lamo-data from-dqn-replay` instead."
        )
    levels = {"medium": ["medium"], "expert": ["expert"], "medium-expert": ["medium", "expert"]}
    if kind not in levels:
        raise ValueError(
            f"--kind {kind!r}: Atari datasets come in {sorted(levels)} (a scripted policy has "
            "no training run to replay)."
        )
    out_path = Path(out) if out is not None else Path(f"{task}-{kind}-v0")
    env_id = atari_env_id(task)
    env = gym.make(env_id)
    spaces = env.observation_space, env.action_space
    env.close()
    started = time.perf_counter()
    policy = {
        "algorithm": "scripted (RAM: ball and paddle positions) with epsilon-random actions",
        "epsilon": {level: BEHAVIOUR_EPSILON[level] for level in levels[kind]},
    }
    source = {
        "generator": "rllib_lamo.data.atari_generate",
        "task": task,
        "kind": kind,
        "num_steps_per_policy": num_steps,
        "seed": seed,
        "command": f"lamo-data generate {task} --kind {kind} --steps {num_steps} --seed {seed}",
    }
    with EpisodeDatasetWriter(
        out_path,
        observation_space=spaces[0],
        action_space=spaces[1],
        env_id=env_id,
        name=out_path.name,
        source=source,
        policy=policy,
        seed=seed,
        overwrite=overwrite,
    ) as writer:
        for level in levels[kind]:
            returns = record_scripted_episodes(
                writer,
                task,
                epsilon=BEHAVIOUR_EPSILON[level],
                num_steps=num_steps,
                seed=seed + _ROLLOUT_SEED_OFFSET[level],
                id_prefix=f"{task}-{level}-s{seed}",
            )
            policy[f"{level}_return"] = {
                "mean": float(np.mean(returns)),
                "std": float(np.std(returns)),
                "episodes": len(returns),
            }
        meta = writer.close()
    norm = meta["normalised_return"]
    print(
        f"wrote {out_path}: {meta['num_episodes']} episodes, {meta['num_steps']} steps, return "
        f"{meta['return']['mean']:.1f} +- {meta['return']['std']:.1f} (normalised "
        f"{norm['mean']:.1f}) in {time.perf_counter() - started:.0f} s"
    )
    return meta
