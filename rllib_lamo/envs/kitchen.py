"""Franka Kitchen as D4RL's kitchen sets and LaMo's Table 1 use it (``LaMoKitchen-v0``).

gymnasium-robotics' ``FrankaKitchen-v1`` (a 9-DoF Franka with joint-velocity actions in [-1, 1],
40 MuJoCo steps of 2 ms per env step) restricted to D4RL's four target tasks: microwave,
kettle, light switch, slide cabinet (``KITCHEN_TASKS``, D4RL's ``KitchenMicrowaveKettle
LightSliderV0``, the goal of kitchen-complete, -partial and -mixed). Everything else is
``FrankaKitchen-v1``'s own: the fixed start state, its observation noise (robot 0.01, objects
0.0005), a task counting as done within 0.3 of its goal (L2 over the task's joints), the reward
= the number of tasks completed in that step (each task pays once, so a return counts the tasks
done, 0-4), termination once all four are done, and episodes of at most 280 steps (D4RL's and
``FrankaKitchen-v1``'s time limit, set at registration). The normalised score is the share of
the four tasks completed, 100 * return / 4 (D4RL's kitchen reference scores 0 and 4;
:mod:`rllib_lamo.scores`).

The observation is the flat 59-float ``observation`` of ``FrankaKitchen-v1`` and of Minari's
``D4RL/kitchen/*-v2`` sets (``KITCHEN_OBS_DIM``): robot joint positions (9: 7 arm joints, 2
fingers) and velocities (9), then the kitchen objects' joint positions (21: burner knobs and
burners, light switch, slide and hinge cabinets, microwave, the kettle's free joint as xyz +
quaternion) and velocities (20). The goal dictionaries are not appended: the desired goal is
the same constant for every episode of every kitchen set (the four tasks' goal joint values)
and the achieved goal repeats object positions already in the vector. The LaMo paper's code
read D4RL's older ``kitchen-*-v0`` sets, whose 60 floats are robot positions (9), object
positions (21) and that constant 30-float goal, without velocities: our vector has the same
state information plus the velocities, and no constant part.

``FrankaKitchen-v1`` crashes on MuJoCo 4 (``mujoco_compat.patch_franka_kitchen``), which this
module patches, narrowly and only where needed, before building it.
"""

from __future__ import annotations

import contextlib
import io
import sys
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.spaces import Box

from rllib_lamo.envs import KITCHEN_OBS_DIM, KITCHEN_TASKS
from rllib_lamo.envs.mujoco_compat import patch_franka_kitchen


def _import_kitchen_env() -> type:
    """gymnasium-robotics' KitchenEnv, without the AdroitHand notice its first import prints.

    The notice (about AdroitHand reward versions) concerns envs this package never makes; any
    other text the import writes to stderr is passed on.
    """
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        from gymnasium_robotics.envs.franka_kitchen import KitchenEnv
    other = [line for line in stderr.getvalue().splitlines() if "AdroitHand" not in line]
    if other:
        print("\n".join(other), file=sys.stderr)
    return KitchenEnv


class LaMoKitchenEnv(gym.Env):
    """``FrankaKitchen-v1`` with D4RL's four tasks and its flat 59-float observation."""

    # FrankaKitchen-v1's, on the class: `gym.make` checks `render_mode` against it.
    metadata = {"render_modes": ["human", "rgb_array", "depth_array"], "render_fps": 12}

    def __init__(self, render_mode: str | None = None, **kwargs: Any):
        KitchenEnv = _import_kitchen_env()  # first, so that its import is the quiet one
        patch_franka_kitchen()
        self.kitchen = KitchenEnv(
            tasks_to_complete=list(KITCHEN_TASKS),
            terminate_on_tasks_completed=True,
            remove_task_when_completed=True,
            render_mode=render_mode,
            **kwargs,
        )
        self.render_mode = render_mode
        self.action_space = self.kitchen.action_space
        self.observation_space = Box(-np.inf, np.inf, (KITCHEN_OBS_DIM,), np.float64)

    @property
    def model(self) -> Any:
        return self.kitchen.model

    @property
    def data(self) -> Any:
        return self.kitchen.data

    @property
    def dt(self) -> float:
        return self.kitchen.robot_env.dt

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        obs, info = self.kitchen.reset(seed=seed)
        return obs["observation"], info

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.kitchen.step(action)
        info = {**info, "episode_task_completions": list(info["episode_task_completions"])}
        return obs["observation"], float(reward), bool(terminated), bool(truncated), info

    def render(self) -> Any:
        return self.kitchen.render()

    def close(self) -> None:
        self.kitchen.close()
