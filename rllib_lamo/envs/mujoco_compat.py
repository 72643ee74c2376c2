"""A narrow compatibility patch: gymnasium-robotics 1.4.2's Franka Kitchen on MuJoCo 4.

``FrankaRobot._get_obs`` reads the robot's joints through ``mujoco_utils.get_joint_qpos``, which
asserts ``model.jnt_type[j] in (mjtJoint.mjJNT_HINGE, mjtJoint.mjJNT_SLIDE)``. MuJoCo 4's enums
compare unequal to numpy integers from the left (``mjJNT_HINGE == np.int32(3)`` is False, while
``np.int32(3) == mjJNT_HINGE`` is True), and ``in`` compares from the tuple's side, so the
assertion fails for every joint and ``FrankaKitchen-v1`` cannot even be built. MuJoCo 3 is not
affected.

The patch replaces only the ``robot_get_obs`` that the kitchen's robot module imported, with one
that reads the same values (each robot joint's qpos and qvel entry; they are all hinges or
slides, which it checks with integer comparisons). Other gymnasium-robotics envs and the library
itself are left as they are, and nothing is patched where the enum comparison works. Remove this
module once gymnasium-robotics compares joint types as integers.
"""

from __future__ import annotations

from typing import Any

import mujoco
import numpy as np

_ONE_DOF_JOINTS = (int(mujoco.mjtJoint.mjJNT_HINGE), int(mujoco.mjtJoint.mjJNT_SLIDE))


def enum_comparison_is_broken() -> bool:
    """True where ``np.int32(hinge) in (mjJNT_HINGE,)`` is False (MuJoCo 4)."""
    hinge = mujoco.mjtJoint.mjJNT_HINGE
    return np.int32(int(hinge)) not in (hinge,)


def robot_get_obs(model: Any, data: Any, joint_names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The robot's joint positions and velocities: ``mujoco_utils.robot_get_obs``'s values."""
    ids = [
        mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, name)
        for name in joint_names
        if name.startswith("robot")
    ]
    if not ids:
        return np.zeros(0), np.zeros(0)
    types = [int(model.jnt_type[joint]) for joint in ids]
    if any(joint_type not in _ONE_DOF_JOINTS for joint_type in types):
        raise ValueError(f"robot joints must be hinges or slides, got joint types {types}")
    return data.qpos[model.jnt_qposadr[ids]].copy(), data.qvel[model.jnt_dofadr[ids]].copy()


def patch_franka_kitchen() -> bool:
    """Apply the patch where MuJoCo needs it (idempotent); True when it is in place."""
    if not enum_comparison_is_broken():
        return False
    from gymnasium_robotics.envs.franka_kitchen import franka_env

    franka_env.robot_get_obs = robot_get_obs
    return True
