"""Decision-Transformer training windows from whole episodes, vectorised over a block of them.

Ray Data hands the pre-learner a block of episode rows (one Parquet row per episode). Here those
rows become flat per-step arrays, true returns-to-go are computed from each *whole* episode, and
K-step windows are cut at uniformly random steps (so episodes are drawn in proportion to their
length, as in DT and LaMo) and left-padded with an attention mask. No per-timestep Python loops.

Image observations are held as one frame per step; a window's observation at step t is the
stack of frames t-C+1 .. t of its episode (the first frame repeated before the episode's start,
as gymnasium's `FrameStackObservation` does at reset). Windows either carry those stacks
(`OBS`) or only the frames' indices (`FRAME_INDEX`), for the learner to gather from its own
copy of the frames: then no image passes through the process that samples the windows.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rllib_lamo.data.format import FrameLayout

# Padding values of the Decision Transformer / LaMo reference code.
OBS_PAD = 0.0
BOX_ACTION_PAD = -10.0
DISCRETE_ACTION_PAD = 0
RTG_PAD = 0.0

# Column names of a training window (each [num_windows, K, ...]).
OBS = "obs"
ACTIONS = "actions"
RETURNS_TO_GO = "returns_to_go"
TIMESTEPS = "timesteps"
ATTENTION_MASK = "attention_mask"
# Image windows without pixels: [num_windows, K, C] int64 indices into `EpisodeBlock.obs`.
FRAME_INDEX = "frame_index"


@dataclass
class EpisodeBlock:
    """Several episodes laid end to end: per-step arrays plus where each episode starts.

    The per-step index arrays are computed on first use and kept: a block that serves many
    batches (a whole dataset held in memory) pays for them once, not once per batch.
    """

    obs: np.ndarray  # [N, obs_dim] float32, or [N, H, W] uint8 frames
    actions: np.ndarray  # [N, act_dim] float32 or [N] int64
    rewards: np.ndarray  # [N] float32
    starts: np.ndarray  # [E] int64, offset of each episode's first step
    lengths: np.ndarray  # [E] int64
    frame_stack: int = 0  # frames per observation (0: `obs` holds vector observations)

    @property
    def num_steps(self) -> int:
        return int(self.rewards.shape[0])

    @cached_property
    def episode_of_step(self) -> np.ndarray:
        return np.repeat(np.arange(len(self.lengths)), self.lengths)

    @cached_property
    def step_returns_to_go(self) -> np.ndarray:
        """[N] float64: the return from each step to the end of its episode."""
        return returns_to_go(self.rewards, self.lengths)


def _flat_values(column: pa.ChunkedArray | pa.Array, depth: int) -> np.ndarray:
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    for _ in range(depth):
        array = array.flatten()
    return array.to_numpy(zero_copy_only=False)


def episode_block_from_arrow(
    table: pa.Table,
    *,
    obs_dim: int,
    discrete_actions: bool,
    frames: FrameLayout | None = None,
) -> EpisodeBlock:
    """Unpack episode rows (list columns `obs`, `actions`, `rewards`) into an `EpisodeBlock`.

    ``frames``: the rows hold one uint8 frame per step (``obs_dim`` pixels), kept as uint8.
    """
    lengths = pc.list_value_length(table.column("rewards").combine_chunks())
    lengths = lengths.to_numpy(zero_copy_only=False).astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    obs = _flat_values(table.column("obs"), 2)
    obs = obs.astype(np.uint8 if frames else np.float32, copy=False)
    rewards = _flat_values(table.column("rewards"), 1).astype(np.float32, copy=False)
    if discrete_actions:
        actions = _flat_values(table.column("actions"), 1).astype(np.int64, copy=False)
    else:
        actions = _flat_values(table.column("actions"), 2).astype(np.float32, copy=False)
        actions = actions.reshape(len(rewards), -1)
    return EpisodeBlock(
        obs=obs.reshape(len(rewards), *(frames.frame_shape if frames else (obs_dim,))),
        actions=actions,
        rewards=rewards,
        starts=starts,
        lengths=lengths,
        frame_stack=frames.stack if frames else 0,
    )


def returns_to_go(rewards: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Undiscounted reward sums from each step to its episode's end, for episodes end to end."""
    cumulative = np.cumsum(rewards, dtype=np.float64)
    ends = np.cumsum(lengths) - 1
    episode_totals = np.repeat(cumulative[ends], lengths)
    return episode_totals - cumulative + rewards


def sample_windows(
    block: EpisodeBlock,
    *,
    num_windows: int,
    context_len: int,
    rtg_scale: float,
    max_ep_len: int,
    rng: np.random.Generator,
    gather_frames: bool = True,
) -> dict[str, np.ndarray]:
    """Cut `num_windows` K-step windows starting at uniformly random steps of the block.

    A window starting at step t of an episode of length L covers steps t .. min(t+K, L)-1,
    right-aligned in the K slots, with the left slots padded and masked out. For a block of
    frames, ``gather_frames=False`` returns `FRAME_INDEX` instead of the stacked `OBS`.
    """
    K = context_len
    window_starts = rng.integers(0, block.num_steps, size=num_windows)
    episode = block.episode_of_step[window_starts]
    episode_end = block.starts[episode] + block.lengths[episode]
    real_len = np.minimum(K, episode_end - window_starts)
    # Slot k of a window holds step (start + k - (K - real_len)); slots before the start are pad.
    steps = window_starts[:, None] + np.arange(K)[None, :] - (K - real_len)[:, None]
    mask = steps >= window_starts[:, None]
    steps = np.where(mask, steps, window_starts[:, None])

    rtg = block.step_returns_to_go[steps] / rtg_scale
    timesteps = np.minimum(steps - block.starts[episode][:, None], max_ep_len - 1)
    actions = block.actions[steps]
    actions[~mask] = DISCRETE_ACTION_PAD if actions.dtype == np.int64 else BOX_ACTION_PAD
    if block.frame_stack:
        index = stacked_frame_index(steps, block.starts[episode], block.frame_stack)
        observations = (
            {OBS: gather_stacked_frames(block.obs, index, mask)}
            if gather_frames
            else {FRAME_INDEX: index}
        )
    else:
        obs = block.obs[steps]
        obs[~mask] = OBS_PAD
        observations = {OBS: obs}
    return {
        **observations,
        ACTIONS: actions,
        RETURNS_TO_GO: np.where(mask, rtg, RTG_PAD).astype(np.float32),
        TIMESTEPS: np.where(mask, timesteps, 0).astype(np.int64),
        ATTENTION_MASK: mask.astype(np.float32),
    }


def stacked_frame_index(
    steps: np.ndarray, episode_starts: np.ndarray, frame_stack: int
) -> np.ndarray:
    """[W, K, C] frame indices of the observations at `steps` [W, K]: frames t-C+1 .. t, the
    episode's first frame repeated before its start (`episode_starts` [W], per window)."""
    offsets = np.arange(1 - frame_stack, 1)
    index = steps[:, :, None] + offsets[None, None, :]
    return np.maximum(index, episode_starts[:, None, None])


def gather_stacked_frames(frames: np.ndarray, index: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """[W, K, C, H, W] uint8 stacks of `frames` [N, H, W] at `index`; padded slots are 0."""
    stacks = frames[index]
    stacks[~(mask > 0)] = 0
    return stacks
