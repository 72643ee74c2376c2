"""Decision-Transformer training windows from whole episodes, vectorised over a block of them.

Ray Data hands the pre-learner a block of episode rows (one Parquet row per episode). Here those
rows become flat per-step arrays, true returns-to-go are computed from each *whole* episode, and
K-step windows are cut at uniformly random steps (so episodes are drawn in proportion to their
length, as in DT and LaMo) and left-padded with an attention mask. No per-timestep Python loops.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

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


@dataclass
class EpisodeBlock:
    """Several episodes laid end to end: per-step arrays plus where each episode starts.

    The per-step index arrays are computed on first use and kept: a block that serves many
    batches (a whole dataset held in memory) pays for them once, not once per batch.
    """

    obs: np.ndarray  # [N, obs_dim] float32
    actions: np.ndarray  # [N, act_dim] float32 or [N] int64
    rewards: np.ndarray  # [N] float32
    starts: np.ndarray  # [E] int64, offset of each episode's first step
    lengths: np.ndarray  # [E] int64

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
    table: pa.Table, *, obs_dim: int, discrete_actions: bool
) -> EpisodeBlock:
    """Unpack episode rows (list columns `obs`, `actions`, `rewards`) into an `EpisodeBlock`."""
    lengths = pc.list_value_length(table.column("rewards").combine_chunks())
    lengths = lengths.to_numpy(zero_copy_only=False).astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    obs = _flat_values(table.column("obs"), 2).astype(np.float32, copy=False)
    rewards = _flat_values(table.column("rewards"), 1).astype(np.float32, copy=False)
    if discrete_actions:
        actions = _flat_values(table.column("actions"), 1).astype(np.int64, copy=False)
    else:
        actions = _flat_values(table.column("actions"), 2).astype(np.float32, copy=False)
        actions = actions.reshape(len(rewards), -1)
    return EpisodeBlock(
        obs=obs.reshape(len(rewards), obs_dim),
        actions=actions,
        rewards=rewards,
        starts=starts,
        lengths=lengths,
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
) -> dict[str, np.ndarray]:
    """Cut `num_windows` K-step windows starting at uniformly random steps of the block.

    A window starting at step t of an episode of length L covers steps t .. min(t+K, L)-1,
    right-aligned in the K slots, with the left slots padded and masked out.
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
    obs = block.obs[steps]
    actions = block.actions[steps]
    obs[~mask] = OBS_PAD
    actions[~mask] = DISCRETE_ACTION_PAD if actions.dtype == np.int64 else BOX_ACTION_PAD
    return {
        OBS: obs,
        ACTIONS: actions,
        RETURNS_TO_GO: np.where(mask, rtg, RTG_PAD).astype(np.float32),
        TIMESTEPS: np.where(mask, timesteps, 0).astype(np.int64),
        ATTENTION_MASK: mask.astype(np.float32),
    }
