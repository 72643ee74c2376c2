"""Scripted Franka Kitchen demonstrations: ``lamo-data generate kitchen --kind KIND``.

D4RL's kitchen sets are human teleoperation (Minari ``D4RL/kitchen/*-v2``, convertible with
``lamo-data from-minari``); where they cannot be downloaded, these scripted demonstrations give
a CPU user data of the same layout on ``LaMoKitchen-v0``. A script drives the end effector
through waypoints next to each object's handle and then along the object's joint: an
operational-space controller maps the wanted end-effector velocity (position and orientation
error, proportional plus a leaky integral) through MuJoCo's site Jacobian (``mj_jacSite``,
damped least squares over the 7 arm joints, a null-space pull towards mid-range, joints at a
limit taken out) to the env's joint-velocity action. Per task:

* microwave: the hand faces the door, grips its handle bar and pulls it along the door's arc
  (a little ahead of the hinge angle, read each step) until the door is open;
* kettle: pushed across the stove with the open gripper's two fingers (+y, towards its goal);
* light switch: the lever pushed sideways (-x) by the closed fingers;
* slide cabinet: its handle pushed along the slide (+x).

Episodes differ: every waypoint gets a per-episode Gaussian offset, the hand's top speed a
per-episode scale, and every action Gaussian noise (``ScriptNoise``); the env adds its own
observation noise. Kinds, after D4RL's meaning (``datasets/README.md`` has measured counts):

* ``complete``: every episode does all four tasks in D4RL's order (microwave, kettle, light
  switch, slide cabinet);
* ``partial``: a third of the episodes do all four; the others a random strict subset (1-3
  tasks, same order), with a reach to a random free point of the workspace (behaviour that
  completes no task) in place of each task left out;
* ``mixed``: no episode sets out to do all four: each does a random subset of 2 or 3 tasks,
  with the same free reaches in place of the others.

An episode ends when the env terminates (all four done), at the 280-step limit, or when its
script has run out (recorded as not terminated, like the end of a D4RL demonstration). A task
whose phase runs out of steps is left undone and the script moves on, so some episodes solve
fewer tasks than they set out to: the counts are measured, not assumed.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import mujoco
import numpy as np

from rllib_lamo.envs import KITCHEN_EPISODE_STEPS, KITCHEN_ID, KITCHEN_TASKS

KITCHEN_KINDS = ("complete", "partial", "mixed")
# Share of `partial` episodes that set out to do all four tasks.
PARTIAL_FULL_SHARE = 1.0 / 3.0

# A step's target: end-effector position (3), orientation (3x3, columns = the site's axes in the
# world) and gripper command (+1 opens, -1 closes).
Target = tuple[np.ndarray, np.ndarray, float]


def _rot_z(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


# The hand pointing forward (+y) with the fingers spread along x, as at the env's start.
HAND_FORWARD = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
# The microwave is turned 0.3 rad about z; its door's outward normal.
MICROWAVE_YAW = 0.3
DOOR_NORMAL = _rot_z(MICROWAVE_YAW) @ np.array([0.0, -1.0, 0.0])
# For the microwave the hand faces the door, fingers spread across its handle bar.
HAND_AT_DOOR = _rot_z(MICROWAVE_YAW) @ HAND_FORWARD
OPEN, CLOSE = 1.0, -1.0
CONTROL_DT = 0.08  # s per env step (FrankaKitchen-v1: 40 MuJoCo steps of 2 ms)
KETTLE_BODY_BELOW_HANDLE = 0.178  # m, from the kettle's handle site to where it is pushed
# Heights (m, relative to the lever) of the light-switch pushes: the first, then retries.
LIGHT_SWITCH_HEIGHTS = (0.0, -0.015, 0.015)
# A free reach (a "task left out") goes to a point in this box (world frame, metres).
FREE_REACH_LOW = np.array([-0.55, 0.15, 1.95])
FREE_REACH_HIGH = np.array([-0.15, 0.35, 2.25])


@dataclass(frozen=True)
class ScriptNoise:
    """How much episodes differ: waypoint offsets (m), speed scale range, action noise (std)."""

    waypoint_std: float = 0.006
    speed_range: tuple[float, float] = (0.8, 1.1)
    action_std: float = 0.05


@dataclass(frozen=True)
class ControllerGains:
    """Operational-space gains; chosen here by trial on the env (the servos lag their target)."""

    position: float = 15.0  # 1/s
    position_integral: float = 4.0  # 1/s^2
    integral_leak: float = 0.9  # per step
    orientation: float = 10.0  # 1/s
    max_speed: float = 0.5  # m/s
    max_angular_speed: float = 1.5  # rad/s
    damping: float = 1e-3  # damped least squares
    # The arm's position servos reach ~0.6 of a commanded joint velocity: commands are scaled.
    command_gain: float = 1.6
    posture: float = 0.5  # rad/s per range width, towards mid-range, in J's null space
    limit_margin: float = 0.05  # rad


class KitchenScene:
    """Names resolved once per env: the hand's site, the objects' sites and joints."""

    def __init__(self, model: Any, data: Any):
        self.model, self.data = model, data

        def site(name: str) -> int:
            return mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_SITE, name)

        self.hand = site("end_effector")
        self.sites = {
            "microwave": site("microhandle_site"),
            "kettle": site("kettle_site"),
            "light switch": site("light_site"),
            "slide cabinet": site("slide_site"),
        }
        joint = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, "microwave")
        self.microwave_qpos = int(model.jnt_qposadr[joint])
        self.microwave_hinge = data.xanchor[joint].copy()
        self.arm_ranges = model.jnt_range[:7].copy()  # the 7 arm joints' limits (rad)
        self.integral = np.zeros(3)  # the controller's leaky integral of the position error

    def hand_position(self) -> np.ndarray:
        return self.data.site_xpos[self.hand].copy()

    def site_position(self, task: str) -> np.ndarray:
        return self.data.site_xpos[self.sites[task]].copy()


class KitchenScript:
    """One episode's plan: a generator of per-step targets, task after task."""

    def __init__(
        self,
        scene: KitchenScene,
        tasks: tuple[str, ...],
        rng: np.random.Generator,
        noise: ScriptNoise,
        max_speed: float,
    ):
        self.scene, self.tasks, self.rng, self.noise = scene, tasks, rng, noise
        self.speed_scale = float(rng.uniform(*noise.speed_range))
        self.max_speed = max_speed * self.speed_scale
        self.completed: set[str] = set()
        self._steps = self._plan()

    def next_target(self, completed: list[str]) -> Target | None:
        """The target for this step, or None when the plan is over."""
        self.completed.update(completed)
        return next(self._steps, None)

    # -- plan --------------------------------------------------------------------------------
    def _plan(self) -> Iterator[Target]:
        skills: dict[str, Callable[[], Iterator[Target]]] = {
            "microwave": self._microwave,
            "kettle": self._kettle,
            "light switch": self._light_switch,
            "slide cabinet": self._slide_cabinet,
        }
        for task in KITCHEN_TASKS:
            yield from skills[task]() if task in self.tasks else self._free_reach()

    def _jitter(self) -> np.ndarray:
        return self.rng.normal(0.0, self.noise.waypoint_std, 3)

    def _reach(
        self,
        position: np.ndarray,
        rotation: np.ndarray,
        grip: float,
        *,
        tolerance: float,
        max_steps: int,
        until: Callable[[], bool] | None = None,
    ) -> Iterator[Target]:
        """Targets ``position`` until the hand is within ``tolerance`` (or ``until`` holds)."""
        for _ in range(int(max_steps / self.speed_scale)):
            if np.linalg.norm(self.scene.hand_position() - position) < tolerance:
                return
            if until is not None and until():
                return
            yield position, rotation, grip

    def _done(self, task: str) -> Callable[[], bool]:
        return lambda: task in self.completed

    def _microwave(self) -> Iterator[Target]:
        handle = self.scene.site_position("microwave") + self._jitter()
        yield from self._reach(
            handle + 0.12 * DOOR_NORMAL, HAND_AT_DOOR, OPEN, tolerance=0.02, max_steps=40
        )
        # The open fingers clear the bar by 2 cm a side: come in slowly and precisely.
        yield from self._reach(handle, HAND_AT_DOOR, OPEN, tolerance=0.008, max_steps=25)
        for _ in range(4):
            yield handle, HAND_AT_DOOR, CLOSE
        # Pull along the door's arc, a little ahead of its hinge angle, read each step.
        hinge, done = self.scene.microwave_hinge, self._done("microwave")
        for _ in range(int(35 / self.speed_scale)):
            if done():
                break
            angle = self.scene.data.qpos[self.scene.microwave_qpos] - 0.15
            yield hinge + _rot_z(angle) @ (handle - hinge), HAND_AT_DOOR, CLOSE
        for _ in range(2):
            yield self.scene.hand_position(), HAND_AT_DOOR, OPEN
        yield from self._reach(
            self.scene.hand_position() + np.array([0.0, -0.08, 0.06]),
            HAND_FORWARD,
            OPEN,
            tolerance=0.03,
            max_steps=10,
        )

    def _kettle(self) -> Iterator[Target]:
        # Push the kettle's body (18 cm below its handle's site) from behind, towards the
        # top-left burner (+y); 10 cm past its centre is enough to come within 0.3 of the goal.
        handle = self.scene.site_position("kettle") + self._jitter()
        body = handle - np.array([0.0, 0.0, KETTLE_BODY_BELOW_HANDLE])
        yield from self._reach(
            body + np.array([0.0, -0.21, 0.0]), HAND_FORWARD, OPEN, tolerance=0.02, max_steps=50
        )
        yield from self._reach(
            body + np.array([0.0, 0.10, 0.0]),
            HAND_FORWARD,
            OPEN,
            tolerance=0.02,
            max_steps=40,
            until=self._done("kettle"),
        )
        yield from self._reach(
            handle + np.array([0.0, -0.05, 0.12]), HAND_FORWARD, CLOSE, tolerance=0.03, max_steps=15
        )

    def _light_switch(self) -> Iterator[Target]:
        # The lever is 4 cm tall: a push that passes over or under it is retried lower, then
        # higher, as long as the lever has not been switched.
        lever = self.scene.site_position("light switch") + self._jitter()
        done = self._done("light switch")
        for height in LIGHT_SWITCH_HEIGHTS:
            if done():
                return
            yield from self._reach(
                lever + np.array([0.07, -0.06, height]),
                HAND_FORWARD,
                CLOSE,
                tolerance=0.03,
                max_steps=35,
            )
            yield from self._reach(
                lever + np.array([0.07, -0.02, height]),
                HAND_FORWARD,
                CLOSE,
                tolerance=0.015,
                max_steps=15,
            )
            yield from self._reach(
                lever + np.array([-0.14, -0.02, height]),
                HAND_FORWARD,
                CLOSE,
                tolerance=0.02,
                max_steps=30,
                until=done,
            )

    def _slide_cabinet(self) -> Iterator[Target]:
        handle = self.scene.site_position("slide cabinet") + self._jitter()
        yield from self._reach(
            handle + np.array([-0.07, -0.12, -0.12]),
            HAND_FORWARD,
            CLOSE,
            tolerance=0.03,
            max_steps=35,
        )
        yield from self._reach(
            handle + np.array([-0.07, -0.045, -0.12]),
            HAND_FORWARD,
            CLOSE,
            tolerance=0.02,
            max_steps=20,
        )
        yield from self._reach(
            handle + np.array([0.2, -0.045, -0.12]),
            HAND_FORWARD,
            CLOSE,
            tolerance=0.02,
            max_steps=35,
            until=self._done("slide cabinet"),
        )

    def _free_reach(self) -> Iterator[Target]:
        point = self.rng.uniform(FREE_REACH_LOW, FREE_REACH_HIGH)
        yield from self._reach(point, HAND_FORWARD, OPEN, tolerance=0.03, max_steps=30)


def hand_actions(
    scenes: list[KitchenScene],
    targets: list[Target],
    max_speeds: np.ndarray,
    gains: ControllerGains,
) -> np.ndarray:
    """Joint-velocity actions [N, 9] moving each env's hand towards its target, batched.

    Per env: twist = clipped (P + leaky I) position error and clipped P orientation error;
    joint velocities = J# twist + (I - J# J) posture, with J# = J^T (J J^T + damping I)^-1 over
    the arm's 7 joints and a posture term pulling joints towards the middle of their ranges;
    a joint within ``limit_margin`` of a limit and driven into it is taken out of J and the
    system solved again. All envs are solved at once; the result is scaled by the servo gain
    and shrunk as a whole into [-1, 1].
    """
    count = len(scenes)
    jacobians = np.zeros((count, 6, 7))
    twists = np.zeros((count, 6))
    joints = np.zeros((count, 7))
    ranges = np.zeros((count, 7, 2))
    grips = np.zeros(count)
    for i, (scene, (position, rotation, grip)) in enumerate(zip(scenes, targets, strict=True)):
        model, data = scene.model, scene.data
        error = position - data.site_xpos[scene.hand]
        scene.integral = gains.integral_leak * scene.integral + error * CONTROL_DT
        current = data.site_xmat[scene.hand].reshape(3, 3)
        twists[i, :3] = gains.position * error + gains.position_integral * scene.integral
        twists[i, 3:] = gains.orientation * 0.5 * np.cross(current.T, rotation.T).sum(axis=0)
        translation, rotation_jac = np.zeros((3, model.nv)), np.zeros((3, model.nv))
        mujoco.mj_jacSite(model, data, translation, rotation_jac, scene.hand)
        jacobians[i, :3], jacobians[i, 3:] = translation[:, :7], rotation_jac[:, :7]
        joints[i] = data.qpos[:7]
        ranges[i] = scene.arm_ranges
        grips[i] = grip
    speed = np.linalg.norm(twists[:, :3], axis=1, keepdims=True)
    twists[:, :3] *= np.minimum(1.0, max_speeds[:, None] / np.maximum(speed, 1e-9))
    spin = np.linalg.norm(twists[:, 3:], axis=1, keepdims=True)
    twists[:, 3:] *= np.minimum(1.0, gains.max_angular_speed / np.maximum(spin, 1e-9))
    low, high = ranges[..., 0], ranges[..., 1]
    posture = gains.posture * ((low + high) / 2 - joints) / (high - low)
    free = np.ones((count, 7))
    for _ in range(2):
        masked = jacobians * free[:, None, :]
        gram = masked @ masked.transpose(0, 2, 1) + gains.damping * np.eye(6)
        pseudo_inverse = masked.transpose(0, 2, 1) @ np.linalg.inv(gram)  # [N, 7, 6]
        null_space = np.eye(7) - pseudo_inverse @ masked
        velocities = np.einsum("nij,nj->ni", pseudo_inverse, twists) + np.einsum(
            "nij,nj->ni", null_space, posture * free
        )
        blocked = ((joints > high - gains.limit_margin) & (velocities > 0)) | (
            (joints < low + gains.limit_margin) & (velocities < 0)
        )
        if not blocked.any():
            break
        free = free * ~blocked
    velocities = velocities * free * gains.command_gain
    velocities /= np.maximum(1.0, np.abs(velocities).max(axis=1, keepdims=True))
    return np.concatenate([velocities, np.repeat(grips[:, None], 2, axis=1)], axis=1)


# -------------------------------------------------------------------------------- episodes
def plan_tasks(kind: str, rng: np.random.Generator) -> tuple[str, ...]:
    """The target tasks one episode of ``kind`` sets out to do, in D4RL's order."""
    check_kind(kind)
    if kind == "complete" or (kind == "partial" and rng.random() < PARTIAL_FULL_SHARE):
        return KITCHEN_TASKS
    size = int(rng.integers(1, 4)) if kind == "partial" else int(rng.integers(2, 4))
    chosen = set(rng.choice(len(KITCHEN_TASKS), size=size, replace=False).tolist())
    return tuple(task for index, task in enumerate(KITCHEN_TASKS) if index in chosen)


def check_kind(kind: str) -> None:
    if kind not in KITCHEN_KINDS:
        raise ValueError(f"unknown kind {kind!r} for task kitchen; choose from {KITCHEN_KINDS}")


@dataclass
class ScriptedEpisode:
    """One recorded demonstration: T observations, actions, rewards, and what it set out to do."""

    obs: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    terminated: bool
    planned: tuple[str, ...]
    completed: tuple[str, ...]
    index: int


class _EpisodeRun:
    """One env and the episode it is running: its script, noise generator and recorded rows."""

    def __init__(self) -> None:
        self.env = gym.make(KITCHEN_ID)

    def start(self, index: int, seed: int, kind: str, noise: ScriptNoise, max_speed: float):
        self.index = index
        # Plan and noise depend on the episode only, not on which env runs it.
        self.rng = np.random.default_rng([seed, index])
        self.obs, _ = self.env.reset(seed=seed + index)
        base = self.env.unwrapped
        self.scene = KitchenScene(base.model, base.data)
        self.script = KitchenScript(
            self.scene, plan_tasks(kind, self.rng), self.rng, noise, max_speed
        )
        self.completed: tuple[str, ...] = ()
        self.terminated = False
        self.rows: list[tuple[np.ndarray, np.ndarray, float]] = []

    def record(self, action: np.ndarray) -> bool:
        """Step the env; True when the episode ended there."""
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.rows.append((self.obs, action, reward))
        self.obs = obs
        self.completed = tuple(info["episode_task_completions"])
        self.terminated = terminated
        return terminated or truncated

    def episode(self) -> ScriptedEpisode:
        obs, actions, rewards = (np.array(column) for column in zip(*self.rows, strict=True))
        return ScriptedEpisode(
            obs, actions, rewards, self.terminated, self.script.tasks, self.completed, self.index
        )


def run_scripted_episodes(
    kind: str,
    *,
    num_steps: int,
    seed: int,
    on_episode: Callable[[ScriptedEpisode], None],
    num_envs: int = 8,
    noise: ScriptNoise = ScriptNoise(),
    gains: ControllerGains = ControllerGains(),
) -> None:
    """Record scripted episodes until the finished ones hold ``num_steps`` steps.

    ``num_envs`` envs advance together so that the controller's Jacobian solves are batched
    (MuJoCo steps one env at a time). Episode ``k`` resets with seed ``seed + k`` and draws its
    plan and noise from its own generator, so its content does not depend on ``num_envs``.
    As for the MuJoCo sets, new episodes start only while the finished ones are short of the
    budget, and running ones always finish (no bias towards short episodes).
    """
    check_kind(kind)
    # Fewer envs when the budget is a handful of episodes: each env runs at least one.
    num_envs = max(1, min(num_envs, -(-num_steps // KITCHEN_EPISODE_STEPS)))
    runs = [_EpisodeRun() for _ in range(num_envs)]
    counts = {"started": 0, "finished_steps": 0}

    def start_next(run: _EpisodeRun) -> bool:
        if counts["finished_steps"] >= num_steps:
            return False
        run.start(counts["started"], seed, kind, noise, gains.max_speed)
        counts["started"] += 1
        return True

    active = [run for run in runs if start_next(run)]
    try:
        while active:
            targets = [run.script.next_target(list(run.completed)) for run in active]
            moving = [
                (run, target)
                for run, target in zip(active, targets, strict=True)
                if target is not None
            ]
            ended = [run for run, target in zip(active, targets, strict=True) if target is None]
            if moving:
                actions = hand_actions(
                    [run.scene for run, _ in moving],
                    [target for _, target in moving],
                    np.array([run.script.max_speed for run, _ in moving]),
                    gains,
                )
                actions += np.stack([run.rng.normal(0.0, noise.action_std, 9) for run, _ in moving])
                actions = np.clip(actions, -1.0, 1.0).astype(np.float32)
                ended += [
                    run
                    for (run, _), action in zip(moving, actions, strict=True)
                    if run.record(action)
                ]
            for run in ended:
                if run.rows:
                    counts["finished_steps"] += len(run.rows)
                    on_episode(run.episode())
                if not start_next(run):
                    active.remove(run)
    finally:
        for run in runs:
            run.env.close()


def task_counts(episodes_completed: list[int]) -> dict[str, int]:
    """How many episodes completed 0, 1, ... 4 of the target tasks."""
    counts = np.bincount(episodes_completed, minlength=len(KITCHEN_TASKS) + 1)
    return {str(count): int(number) for count, number in enumerate(counts)}


def generate_kitchen(
    kind: str,
    out: str | os.PathLike,
    *,
    num_steps: int,
    seed: int = 0,
    overwrite: bool = False,
    on_steps: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Write a scripted kitchen dataset of ``kind`` with about ``num_steps`` steps.

    ``on_steps(n)`` is called with each recorded episode's length (a progress bar).
    """
    from rllib_lamo.data.writer import EpisodeDatasetWriter

    check_kind(kind)
    out_path = Path(out)
    if out_path.exists() and not overwrite:
        raise FileExistsError(f"{out_path} already exists (pass --overwrite to replace it)")
    env = gym.make(KITCHEN_ID)
    spaces = env.observation_space, env.action_space
    env.close()
    noise, gains = ScriptNoise(), ControllerGains()
    stats: dict[str, list[Any]] = {"completed": [], "all_planned": [], "planned_solved": []}
    per_task = dict.fromkeys(KITCHEN_TASKS, 0)
    started = time.perf_counter()
    writer = EpisodeDatasetWriter(
        out_path,
        observation_space=spaces[0],
        action_space=spaces[1],
        env_id=KITCHEN_ID,
        name=out_path.name,
        source={
            "generator": "rllib_lamo.data.kitchen_demos",
            "task": "kitchen",
            "kind": kind,
            "num_steps": num_steps,
            "seed": seed,
            "command": (
                f"lamo-data generate kitchen --kind {kind} --steps {num_steps} --seed {seed}"
            ),
        },
        policy={
            "algorithm": "scripted operational-space controller (rllib_lamo.data.kitchen_demos)",
            "noise": asdict(noise),
            "gains": asdict(gains),
            "partial_full_share": PARTIAL_FULL_SHARE if kind == "partial" else None,
        },
        seed=seed,
        overwrite=overwrite,
    )

    def on_episode(episode: ScriptedEpisode) -> None:
        writer.add_episode(
            episode.obs,
            episode.actions,
            episode.rewards,
            episode.terminated,
            eps_id=f"kitchen-{kind}-s{seed}-{episode.index:06d}",
        )
        stats["completed"].append(len(episode.completed))
        stats["all_planned"].append(len(episode.planned) == len(KITCHEN_TASKS))
        stats["planned_solved"].append(set(episode.planned) <= set(episode.completed))
        for task in episode.completed:
            per_task[task] += 1
        if on_steps is not None:
            on_steps(len(episode.rewards))

    with writer:
        run_scripted_episodes(
            kind, num_steps=num_steps, seed=seed, on_episode=on_episode, noise=noise, gains=gains
        )
        writer.extra_metadata = {
            "kitchen": {
                "episodes_by_tasks_completed": task_counts(stats["completed"]),
                "episodes_per_task_completed": per_task,
                "episodes_planning_all_four": int(np.sum(stats["all_planned"])),
                "episodes_solving_their_plan": int(np.sum(stats["planned_solved"])),
            }
        }
        meta = writer.close()
    print(
        f"wrote {out_path}: {meta['num_episodes']} episodes, {meta['num_steps']} steps, "
        f"tasks completed per episode (0-4): "
        f"{meta['kitchen']['episodes_by_tasks_completed']}, mean normalised score "
        f"{meta['normalised_return']['mean']:.1f} in {time.perf_counter() - started:.0f} s"
    )
    return meta
