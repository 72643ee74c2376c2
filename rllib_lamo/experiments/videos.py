"""Offscreen videos of a LaMo checkpoint: one episode per target return, as GIFs."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rllib_lamo.checkpoints import restore_policy
from rllib_lamo.connectors.decision_context import DecisionContext
from rllib_lamo.evaluation import target_key

VIDEO_SIZE = 240
# Offscreen rendering costs ~0.1 s a frame on a CPU: a long episode keeps every n-th frame.
MAX_VIDEO_FRAMES = 150
VIDEO_FPS = 30


@dataclass
class EpisodeRollout:
    """One episode of a restored policy: its return, length and (if rendered) frames."""

    episode_return: float
    length: int
    frames: list[np.ndarray]


def rollout_episode(
    module: Any,
    config: Any,
    env: Any,
    target_return: float,
    *,
    max_steps: int,
    seed: int | None = None,
    render_every: int = 1,
) -> EpisodeRollout:
    """Steps `env` with the policy outside any env runner, rendering if the env renders.

    Contexts come from the env-to-module pipeline the config builds for its env runners,
    so the same `DecisionContext` builds them as in evaluation.
    """
    from ray.rllib.core.columns import Columns
    from ray.rllib.env.single_agent_episode import SingleAgentEpisode

    pipeline = config.build_env_to_module_connector(env=env)
    contexts = [piece for piece in pipeline.connectors if isinstance(piece, DecisionContext)]
    if len(contexts) != 1:
        raise ValueError("expected one DecisionContext in the config's env-to-module pipeline")
    contexts[0].target_return = float(target_return)
    rendering = env.render_mode == "rgb_array"
    observation, info = env.reset(seed=seed)
    episode = SingleAgentEpisode(
        observation_space=env.observation_space, action_space=env.action_space
    )
    episode.add_env_reset(observation, info)
    frames = [env.render()] if rendering else []
    episode_return = 0.0
    for step in range(1, max_steps + 1):
        batch = pipeline(
            rl_module=module, batch={}, episodes=[episode], explore=False, shared_data={}
        )
        action = module.forward_inference(batch)[Columns.ACTIONS][0].numpy()
        if hasattr(env.action_space, "low"):
            action = np.clip(action, env.action_space.low, env.action_space.high)
        observation, reward, terminated, truncated, info = env.step(action)
        episode.add_env_step(
            observation, action, reward, info, terminated=terminated, truncated=truncated
        )
        episode_return += float(reward)
        if rendering and step % render_every == 0:
            frames.append(env.render())
        if terminated or truncated:
            break
    return EpisodeRollout(episode_return, len(episode), frames)


def record_policy_videos(
    checkpoint_dir: str | Path,
    out_dir: Path,
    *,
    max_steps: int = 1000,
) -> list[Path]:
    """Renders one episode per target return offscreen and writes ``target_<R>.gif`` files.

    GIF, because writing MP4 needs ffmpeg, which no installed package ships here. MuJoCo
    renders through ``MUJOCO_GL`` (default here: egl; osmesa also works where installed).
    """
    import gymnasium as gym
    import imageio.v2 as imageio

    module, config = restore_policy(checkpoint_dir)
    _check_renderer(config.env)
    paths = []
    for target_return in config.target_returns:
        env = gym.make(config.env, render_mode="rgb_array", width=VIDEO_SIZE, height=VIDEO_SIZE)
        try:
            rollout = rollout_episode(
                module,
                config,
                env,
                target_return,
                max_steps=max_steps,
                seed=config.seed,
                render_every=max(1, -(-max_steps // MAX_VIDEO_FRAMES)),
            )
        finally:
            env.close()
        path = out_dir / f"{target_key(target_return)}.gif"
        imageio.mimsave(path, rollout.frames, duration=1000 / VIDEO_FPS, loop=0)
        paths.append(path)
    return paths


class RendererUnavailable(RuntimeError):
    """MuJoCo cannot render offscreen on this host (no EGL/OSMesa, or a bad MUJOCO_GL)."""


def _check_renderer(env_id: str) -> None:
    """Renders one frame, so that a missing OpenGL backend is named as such."""
    import gymnasium as gym

    # Headless hosts need an offscreen backend; MuJoCo's default (glfw) needs a display.
    os.environ.setdefault("MUJOCO_GL", "egl")
    env = gym.make(env_id, render_mode="rgb_array", width=VIDEO_SIZE, height=VIDEO_SIZE)
    try:
        env.reset(seed=0)
        env.render()
    except Exception as error:
        raise RendererUnavailable(
            f"MuJoCo could not render offscreen with MUJOCO_GL={os.environ['MUJOCO_GL']} "
            f"({type(error).__name__}: {error}); try MUJOCO_GL=egl or MUJOCO_GL=osmesa"
        ) from error
    finally:
        env.close()
