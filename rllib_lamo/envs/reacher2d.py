"""Reacher2d: the sparse-reward planar arm of LaMo's Table 1 (and the Decision Transformer's).

Written here from the facts of the paper code's env (``reacher_2d``): a two-link arm (0.6 and
0.4 long) on hinges with damping 1, the elbow limited to [-2.0, 3.5] rad, torque motors with gear
1 and control range +-1, no gravity, RK4 at 0.01 s with 15 frames per step (dt = 0.15 s). At
reset both joint angles are uniform in +-2 rad, velocities are 0, and the target is uniform
(by area) in the annulus 0.5 <= |g| <= 1.0 around the shoulder. The reward is 1 while the L1
distance between fingertip and target is below 0.1, else 0; nothing terminates an episode.
What those facts leave open follows the paper code's model file (capsules of radius 0.05,
armature 0.05, the fingertip at the forearm's end cap, the joints' zeros 45 degrees apart);
nothing collides (``assets/reacher2d.xml``).

Episodes last 100 steps (``rllib_lamo.envs.REACHER2D_EPISODE_STEPS``, a time limit set at
registration), the length the paper code evaluates Reacher2d with: a return counts the steps
spent on the target, so return / 100 is the paper's normalised score (reference scores
0 / 100 in :mod:`rllib_lamo.scores`), and its target returns 76 and 40 are in those units.

The observation (12 floats) is ``sin(q)`` (2), ``cos(q)`` (2), ``dt * dq/dt`` (2), the fingertip's
xy (2), the target's xy (2) and fingertip minus target (2).

``reward_type="dense"`` adds the negative L1 distance to the sparse reward, a shaping that lets
an on-policy learner find the target; datasets record the sparse reward, which every step's
``info["sparse_reward"]`` carries in both modes (with ``info["distance"]``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mujoco
import numpy as np
from gymnasium import utils
from gymnasium.envs.mujoco.mujoco_env import MujocoEnv
from gymnasium.spaces import Box

XML_PATH = Path(__file__).resolve().parent / "assets" / "reacher2d.xml"
FRAME_SKIP = 15
SUCCESS_DISTANCE = 0.1  # L1, fingertip to target
RESET_ANGLE_RANGE = 2.0  # joint angles uniform in +-this, rad
TARGET_MIN_RADIUS = 0.5
TARGET_MAX_RADIUS = 1.0
REWARD_TYPES = ("sparse", "dense")
# Seen from above, the whole reach (|fingertip| <= 1.05) in view.
DEFAULT_CAMERA_CONFIG = {
    "distance": 3.2,
    "elevation": -90.0,
    "azimuth": 90.0,
    "lookat": np.array([0.0, 0.0, 0.0]),
}


class Reacher2dEnv(MujocoEnv, utils.EzPickle):
    """LaMo's Reacher2d (``Reacher2d-v0``): reach a random target and stay on it."""

    metadata = {
        "render_modes": ["human", "rgb_array", "depth_array", "rgbd_tuple"],
        "render_fps": int(np.round(1.0 / (0.01 * FRAME_SKIP))),
    }

    def __init__(self, reward_type: str = "sparse", **kwargs: Any):
        if reward_type not in REWARD_TYPES:
            raise ValueError(
                f"Reacher2d-v0: `reward_type` must be one of {REWARD_TYPES}, got {reward_type!r}."
            )
        utils.EzPickle.__init__(self, reward_type, **kwargs)
        self.reward_type = reward_type
        kwargs.setdefault("default_camera_config", DEFAULT_CAMERA_CONFIG)
        MujocoEnv.__init__(
            self,
            str(XML_PATH),
            FRAME_SKIP,
            observation_space=Box(low=-np.inf, high=np.inf, shape=(12,), dtype=np.float64),
            **kwargs,
        )
        self._fingertip = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_SITE, "fingertip")
        target_body = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_BODY, "target")
        self._target_mocap = int(self.model.body_mocapid[target_body])

    @property
    def fingertip(self) -> np.ndarray:
        return self.data.site_xpos[self._fingertip, :2].copy()

    @property
    def target(self) -> np.ndarray:
        return self.data.mocap_pos[self._target_mocap, :2].copy()

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        self.do_simulation(np.clip(action, -1.0, 1.0), self.frame_skip)
        distance = float(np.abs(self.fingertip - self.target).sum())
        sparse_reward = 1.0 if distance < SUCCESS_DISTANCE else 0.0
        reward = sparse_reward - distance if self.reward_type == "dense" else sparse_reward
        if self.render_mode == "human":
            self.render()
        info = {"sparse_reward": sparse_reward, "distance": distance}
        return self._get_obs(), reward, False, False, info

    def reset_model(self) -> np.ndarray:
        qpos = self.np_random.uniform(-RESET_ANGLE_RANGE, RESET_ANGLE_RANGE, size=self.model.nq)
        self.set_state(qpos, np.zeros(self.model.nv))
        # Uniform by area: radius = sqrt of a uniform between the squared radii.
        radius = np.sqrt(self.np_random.uniform(TARGET_MIN_RADIUS**2, TARGET_MAX_RADIUS**2))
        angle = self.np_random.uniform(-np.pi, np.pi)
        self.data.mocap_pos[self._target_mocap, :2] = radius * np.array(
            [np.cos(angle), np.sin(angle)]
        )
        mujoco.mj_forward(self.model, self.data)
        return self._get_obs()

    def _get_obs(self) -> np.ndarray:
        angles = self.data.qpos.ravel()
        fingertip, target = self.fingertip, self.target
        return np.concatenate(
            [
                np.sin(angles),
                np.cos(angles),
                self.dt * self.data.qvel.ravel(),
                fingertip,
                target,
                fingertip - target,
            ]
        )
