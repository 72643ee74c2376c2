"""The Ray Data step that turns a block of episode rows into Decision-Transformer windows."""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np
import pyarrow as pa
from ray.rllib.core import DEFAULT_MODULE_ID
from ray.rllib.offline.offline_prelearner import OfflinePreLearner

from rllib_lamo.windows import episode_block_from_arrow, sample_windows


def block_rng(seed: int, epoch: int, first_episode_id: str) -> np.random.Generator:
    """A generator that depends only on the run's seed, the epoch and which episodes it sees.

    Blocks may reach the map actors in any order; keying the stream on their content keeps
    the windows of an epoch reproducible, and keying it on the epoch re-samples every epoch.
    """
    return np.random.default_rng([seed, epoch, zlib.crc32(first_episode_id.encode())])


class LaMoPreLearner(OfflinePreLearner):
    """Maps episode rows to K-step windows, `windows_per_step` of them per step of data.

    Unlike RLlib's `OfflinePreLearner` this needs no RLModule and no learner connector, so it
    does not call the parent constructor, which would build the whole LM in every Ray Data
    worker. Its output rows are `"default_policy/<column>"` arrays, the layout RLlib's
    learner iterators unflatten into a `MultiAgentBatch`.
    """

    def __init__(
        self,
        *,
        obs_dim: int,
        discrete_actions: bool,
        context_len: int,
        rtg_scale: float,
        max_ep_len: int,
        seed: int,
        epoch: int,
        windows_per_step: float,
        **_: Any,
    ):
        self.obs_dim = obs_dim
        self.discrete_actions = discrete_actions
        self.context_len = context_len
        self.rtg_scale = rtg_scale
        self.max_ep_len = max_ep_len
        self.seed = seed
        self.epoch = epoch
        self.windows_per_step = windows_per_step

    def __call__(self, batch: pa.Table) -> dict[str, np.ndarray]:
        block = episode_block_from_arrow(
            batch, obs_dim=self.obs_dim, discrete_actions=self.discrete_actions
        )
        num_windows = max(1, round(self.windows_per_step * block.num_steps))
        windows = sample_windows(
            block,
            num_windows=num_windows,
            context_len=self.context_len,
            rtg_scale=self.rtg_scale,
            max_ep_len=self.max_ep_len,
            rng=block_rng(self.seed, self.epoch, str(batch.column("eps_id")[0])),
        )
        return {f"{DEFAULT_MODULE_ID}/{name}": value for name, value in windows.items()}
