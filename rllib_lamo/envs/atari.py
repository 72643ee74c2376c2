"""Atari games under the Decision Transformer's protocol (LaMo's Table 2: Breakout, Qbert, Pong).

ale-py's ROMs with gymnasium's standard wrappers, set as DT's Atari code sets its ALE:

- 84x84 grayscale frames (area resize), 4 emulator frames per agent step with the last two
  max-pooled, and the last 4 frames stacked channels-first: observations ``uint8[4, 84, 84]``;
- no sticky actions (``repeat_action_probability=0``: DT's env sets 0; the DQN Replay data it
  trains on were recorded with dopamine's 0.25, so evaluation is slightly easier than the
  recording's env);
- the full game is one episode (no end at a life loss, as DT's evaluation env), at most 108,000
  emulator frames (27,000 agent steps), started after 1 to 30 random no-ops;
- the game's minimal action set (Pong 6, Breakout 4, Qbert 6), raw (unclipped) game scores as
  rewards, as DT conditions on raw returns.

The ids are ``<Game>DT-v0`` (``PongDT-v0``, ``BreakoutDT-v0``, ``QbertDT-v0``), registered on
``import rllib_lamo``; ale-py loads only on `gym.make`.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym

# Game name (ale-py's ROM id) per task.
ATARI_GAMES: dict[str, str] = {"pong": "Pong", "breakout": "Breakout", "qbert": "Qbert"}
FRAME_SIZE = 84
FRAME_SKIP = 4
FRAME_STACK = 4
NOOP_MAX = 30
MAX_EPISODE_FRAMES = 108_000
REPEAT_ACTION_PROBABILITY = 0.0


def atari_env_id(task: str) -> str:
    """``pong`` -> ``PongDT-v0``: our registered id of an Atari task."""
    return f"{ATARI_GAMES[task]}DT-v0"


def make_atari_env(
    game: str,
    render_mode: str | None = None,
    max_num_frames_per_episode: int = MAX_EPISODE_FRAMES,
    width: int | None = None,
    height: int | None = None,
    **ale_kwargs: Any,
) -> gym.Env:
    """One Atari game with DT's preprocessing (see the module docstring).

    ``max_num_frames_per_episode`` (via ``env_config``) caps episodes below DT's 108,000
    frames, e.g. on a CPU budget, where a policy that never serves would play 27,000 steps.
    ``width``/``height`` (asked for by video recording) are accepted and ignored: renders are
    the console's 210x160 RGB screen.
    """
    del width, height
    import ale_py
    from gymnasium.wrappers import AtariPreprocessing, FrameStackObservation

    gym.register_envs(ale_py)
    env = gym.make(
        f"ALE/{game}-v5",
        frameskip=1,  # AtariPreprocessing skips (and max-pools) frames itself
        repeat_action_probability=REPEAT_ACTION_PROBABILITY,
        full_action_space=False,
        max_num_frames_per_episode=max_num_frames_per_episode,
        render_mode=render_mode,
        **ale_kwargs,
    )
    env = AtariPreprocessing(
        env,
        noop_max=NOOP_MAX,
        frame_skip=FRAME_SKIP,
        screen_size=FRAME_SIZE,
        terminal_on_life_loss=False,
        grayscale_obs=True,
        scale_obs=False,
    )
    # Padding "reset": the first stacks repeat the first frame, as the data's windows do.
    return FrameStackObservation(env, FRAME_STACK)
