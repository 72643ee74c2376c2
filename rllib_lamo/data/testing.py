"""Small synthetic datasets in the shard format, for tests here and in the algorithm's tests.

Real files through the real writer: only the numbers are random.
"""

from __future__ import annotations

import os
from typing import Any

import gymnasium as gym
import numpy as np

from rllib_lamo.data.format import Episode
from rllib_lamo.data.writer import write_dataset


def toy_episodes(
    num_episodes: int,
    *,
    obs_dim: int = 3,
    act_dim: int = 2,
    discrete_actions: int | None = None,
    min_length: int = 2,
    max_length: int = 30,
    seed: int = 0,
    id_prefix: str = "toy",
) -> list[Episode]:
    """Random episodes; Box actions in [-1, 1], or Discrete(discrete_actions) when given."""
    rng = np.random.default_rng(seed)
    episodes = []
    for index in range(num_episodes):
        length = int(rng.integers(min_length, max_length + 1))
        if discrete_actions:
            actions = rng.integers(0, discrete_actions, size=length).astype(np.int64)
        else:
            actions = rng.uniform(-1, 1, size=(length, act_dim)).astype(np.float32)
        episodes.append(
            Episode(
                obs=rng.normal(size=(length, obs_dim)).astype(np.float32),
                actions=actions,
                rewards=rng.normal(size=length).astype(np.float32),
                terminated=bool(rng.random() < 0.5),
                eps_id=f"{id_prefix}-{index:05d}",
            )
        )
    return episodes


def toy_spaces(
    obs_dim: int = 3, act_dim: int = 2, discrete_actions: int | None = None
) -> tuple[gym.Space, gym.Space]:
    observation_space = gym.spaces.Box(-np.inf, np.inf, (obs_dim,), np.float32)
    if discrete_actions:
        return observation_space, gym.spaces.Discrete(discrete_actions)
    return observation_space, gym.spaces.Box(-1.0, 1.0, (act_dim,), np.float32)


def write_toy_dataset(
    out_dir: str | os.PathLike,
    num_episodes: int = 20,
    *,
    obs_dim: int = 3,
    act_dim: int = 2,
    discrete_actions: int | None = None,
    seed: int = 0,
    max_steps_per_shard: int = 200,
    env_id: str | None = None,
    **episode_options: Any,
) -> dict[str, Any]:
    """Write a random dataset folder (several shards by default); returns its metadata."""
    observation_space, action_space = toy_spaces(obs_dim, act_dim, discrete_actions)
    episodes = toy_episodes(
        num_episodes,
        obs_dim=obs_dim,
        act_dim=act_dim,
        discrete_actions=discrete_actions,
        seed=seed,
        **episode_options,
    )
    return write_dataset(
        out_dir,
        episodes,
        observation_space=observation_space,
        action_space=action_space,
        env_id=env_id,
        seed=seed,
        source={"generator": "rllib_lamo.data.testing.write_toy_dataset"},
        max_steps_per_shard=max_steps_per_shard,
    )
