"""Gymnasium envs this package adds, registered when `rllib_lamo` is imported.

``Reacher2d-v0``: LaMo's sparse-reward planar arm (:mod:`rllib_lamo.envs.reacher2d`).
``LaMoKitchen-v0``: Franka Kitchen with D4RL's four tasks and flat observation
(:mod:`rllib_lamo.envs.kitchen`).
``PongDT-v0``, ``BreakoutDT-v0``, ``QbertDT-v0``: Atari under the Decision Transformer's
protocol (:mod:`rllib_lamo.envs.atari`).
"""

from __future__ import annotations

REACHER2D_ID = "Reacher2d-v0"
# The paper code's evaluation length for Reacher2d; its scores are return / 100 in percent.
REACHER2D_EPISODE_STEPS = 100
KITCHEN_ID = "LaMoKitchen-v0"
# D4RL's kitchen time limit (and FrankaKitchen-v1's); an episode also ends when all tasks are done.
KITCHEN_EPISODE_STEPS = 280
# D4RL's kitchen target tasks, in the order the kitchen-complete demonstrations do them.
KITCHEN_TASKS = ("microwave", "kettle", "light switch", "slide cabinet")
# The flat observation: robot joint positions and velocities, object positions and velocities.
KITCHEN_OBS_DIM = 59


def register_envs() -> None:
    """Register our env ids with gymnasium; the env modules (and MuJoCo) load on `gym.make`."""
    from gymnasium.envs.registration import register, registry

    if REACHER2D_ID not in registry:
        register(
            id=REACHER2D_ID,
            entry_point="rllib_lamo.envs.reacher2d:Reacher2dEnv",
            max_episode_steps=REACHER2D_EPISODE_STEPS,
        )
    if KITCHEN_ID not in registry:
        register(
            id=KITCHEN_ID,
            entry_point="rllib_lamo.envs.kitchen:LaMoKitchenEnv",
            max_episode_steps=KITCHEN_EPISODE_STEPS,
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
