"""Gymnasium envs this package adds, registered when `rllib_lamo` is imported.

``Reacher2d-v0``: LaMo's sparse-reward planar arm (:mod:`rllib_lamo.envs.reacher2d`).
``PongDT-v0``, ``BreakoutDT-v0``, ``QbertDT-v0``: Atari under the Decision Transformer's
protocol (:mod:`rllib_lamo.envs.atari`).
"""

from __future__ import annotations

REACHER2D_ID = "Reacher2d-v0"
# The paper code's evaluation length for Reacher2d; its scores are return / 100 in percent.
REACHER2D_EPISODE_STEPS = 100


def register_envs() -> None:
    """Register our env ids with gymnasium; the env modules (and MuJoCo) load on `gym.make`."""
    from gymnasium.envs.registration import register, registry

    if REACHER2D_ID not in registry:
        register(
            id=REACHER2D_ID,
            entry_point="rllib_lamo.envs.reacher2d:Reacher2dEnv",
            max_episode_steps=REACHER2D_EPISODE_STEPS,
        )
    from rllib_lamo.envs.atari import ATARI_GAMES, atari_env_id

    for task, game in ATARI_GAMES.items():
        if atari_env_id(task) not in registry:
            # No time limit here: the ALE ends an episode after 108,000 frames itself.
            register(
                id=atari_env_id(task),
                entry_point="rllib_lamo.envs.atari:make_atari_env",
                kwargs={"game": game},
            )
