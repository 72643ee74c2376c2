"""Streams LaMo training windows from episode shards with Ray Data.

`read_parquet` (episode rows) -> keep a seeded subset of whole episodes (`data_ratio`) ->
`map_batches(LaMoPreLearner)` (windows) -> batches of `train_batch_size_per_learner` windows.
Windows are re-sampled every epoch; an epoch's stream is a function of (seed, epoch) alone,
and the position in it is checkpointed, so a restored run continues with the very batches an
uninterrupted run would have seen.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray
from ray.rllib.offline.offline_data import OfflineData
from ray.rllib.policy.sample_batch import MultiAgentBatch, SampleBatch
from ray.rllib.utils import unflatten_dict

from rllib_lamo.data.shards import (
    read_metadata,
    space_from_dict,
    space_to_dict,
    validate_episode_batch,
)
from rllib_lamo.data.subsets import subset_episode_ids
from rllib_lamo.offline_prelearner import LaMoPreLearner
from rllib_lamo.windows import episode_block_from_arrow, returns_to_go

logger = logging.getLogger(__name__)


@dataclass
class DatasetSummary:
    """What training needs to know about the (possibly subsampled) episodes it reads."""

    num_episodes: int
    num_steps: int
    obs_mean: list[float]
    obs_std: list[float]
    return_mean: float
    return_max: float


def _episode_lengths(batch: pa.Table) -> pa.Table:
    lengths = pc.list_value_length(batch.column("rewards").combine_chunks())
    return pa.table({"eps_id": batch.column("eps_id"), "length": lengths.cast(pa.int64())})


class LaMoOfflineData(OfflineData):
    """RLlib `OfflineData` for episode shards: subset, statistics, per-epoch windows."""

    def __init__(self, config: Any):
        super().__init__(config)
        self.dataset_path = config.input_ if isinstance(config.input_, str) else config.input_[0]
        self.metadata = read_metadata(self.dataset_path)
        self.observation_space, self.action_space = dataset_spaces(config, self.metadata)
        self.obs_dim = int(np.prod(self.observation_space.shape))
        self.discrete_actions = isinstance(self.action_space, gym.spaces.Discrete)
        self.seed = int(config.seed) if config.seed is not None else 0

        self.episodes = self.data
        if config.data_ratio < 1.0:
            kept = self._subset_ids(config.data_ratio, config.data_subset_seed)
            self.episodes = self.episodes.map_batches(
                _KeepEpisodes, fn_constructor_kwargs={"eps_ids": kept}, batch_format="pyarrow"
            )
        self.summary = self._summarise()
        logger.info("LaMo dataset %s: %s", self.dataset_path, self.summary)

        self.epoch = 0
        self.batches_served = 0
        self._epoch_batches = None

    def _subset_ids(self, ratio: float, subset_seed: int) -> pa.Array:
        index = self.data.select_columns(["eps_id", "rewards"]).map_batches(
            _episode_lengths, batch_format="pyarrow"
        )
        rows = index.to_arrow_refs()
        table = pa.concat_tables(ray.get(rows))
        kept = subset_episode_ids(
            table.column("eps_id").to_pylist(),
            table.column("length").to_numpy(),
            ratio,
            subset_seed,
        )
        logger.info(
            "data_ratio=%s keeps %d of %d episodes (subset seed %d)",
            ratio,
            len(kept),
            table.num_rows,
            subset_seed,
        )
        return pa.array(kept, type=pa.string())

    def _summarise(self) -> DatasetSummary:
        """One streaming pass: validates every block and sums what the statistics need."""
        obs_dim, discrete = self.obs_dim, self.discrete_actions
        action_space = self.action_space
        source = self.dataset_path

        def partial_sums(batch: pa.Table) -> dict[str, np.ndarray]:
            validate_episode_batch(batch, source=source, obs_dim=obs_dim, action_space=action_space)
            block = episode_block_from_arrow(batch, obs_dim=obs_dim, discrete_actions=discrete)
            episode_returns = returns_to_go(block.rewards, block.lengths)[block.starts]
            obs = block.obs.astype(np.float64)
            return {
                "episodes": np.array([len(block.lengths)]),
                "steps": np.array([block.num_steps]),
                "obs_sum": obs.sum(0)[None],
                "obs_sq_sum": np.square(obs).sum(0)[None],
                "return_sum": np.array([episode_returns.sum()]),
                "return_max": np.array([episode_returns.max()]),
            }

        parts = self.episodes.map_batches(partial_sums, batch_format="pyarrow").take_all()
        if not parts:
            raise ValueError(f"{source}: no episodes to train on (empty dataset or subset).")
        steps = sum(int(p["steps"]) for p in parts)
        episodes = sum(int(p["episodes"]) for p in parts)
        obs_mean = sum(p["obs_sum"] for p in parts) / steps
        obs_var = sum(p["obs_sq_sum"] for p in parts) / steps - np.square(obs_mean)
        return DatasetSummary(
            num_episodes=episodes,
            num_steps=steps,
            obs_mean=obs_mean.tolist(),
            obs_std=(np.sqrt(np.maximum(obs_var, 0.0)) + 1e-6).tolist(),
            return_mean=sum(float(p["return_sum"]) for p in parts) / episodes,
            return_max=max(float(p["return_max"]) for p in parts),
        )

    def _windows_for_epoch(self, batch_size: int) -> Any:
        config = self.config
        # Sample about one window per K steps, but never fewer than one batch per epoch.
        windows_per_epoch = max(math.ceil(self.summary.num_steps / config.context_len), batch_size)
        mapped = self.episodes.map_batches(
            LaMoPreLearner,
            fn_constructor_kwargs={
                "obs_dim": self.obs_dim,
                "discrete_actions": self.discrete_actions,
                "context_len": config.context_len,
                "rtg_scale": config.rtg_scale,
                "max_ep_len": config.max_ep_len,
                "seed": self.seed,
                "epoch": self.epoch,
                "windows_per_step": windows_per_epoch / self.summary.num_steps,
            },
            batch_format="pyarrow",
            **self.map_batches_kwargs,
        )
        mapped.context.execution_options.preserve_order = True
        return iter(
            mapped.iter_batches(
                batch_size=batch_size,
                batch_format="numpy",
                drop_last=True,
                local_shuffle_buffer_size=4 * batch_size,
                local_shuffle_seed=self.seed * 100_003 + self.epoch,
            )
        )

    def sample(self, num_samples: int, **_: Any) -> MultiAgentBatch:
        """The next batch of `num_samples` windows, starting a new epoch where one ends."""
        while True:
            if self._epoch_batches is None:
                self._epoch_batches = self._windows_for_epoch(num_samples)
                for _ in range(self.batches_served):
                    next(self._epoch_batches)
            try:
                batch = next(self._epoch_batches)
            except StopIteration:
                self.epoch += 1
                self.batches_served = 0
                self._epoch_batches = None
                continue
            self.batches_served += 1
            return _to_multi_agent_batch(batch)

    def get_state(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "batches_served": self.batches_served, "seed": self.seed}

    def set_state(self, state: dict[str, Any]) -> None:
        self.epoch = state["epoch"]
        self.batches_served = state["batches_served"]
        self.seed = state["seed"]
        self._epoch_batches = None

    def summary_dict(self) -> dict[str, Any]:
        return asdict(self.summary)


class _KeepEpisodes:
    """Keeps the rows whose `eps_id` is in a fixed set (the `data_ratio` subset)."""

    def __init__(self, eps_ids: pa.Array):
        self.eps_ids = eps_ids

    def __call__(self, batch: pa.Table) -> pa.Table:
        return batch.filter(pc.is_in(batch.column("eps_id"), value_set=self.eps_ids))


def _to_multi_agent_batch(batch: dict[str, np.ndarray]) -> MultiAgentBatch:
    per_module = unflatten_dict(batch)
    size = len(next(iter(batch.values())))
    return MultiAgentBatch(
        {module_id: SampleBatch(columns) for module_id, columns in per_module.items()},
        env_steps=size,
    )


def dataset_spaces(config: Any, metadata: dict) -> tuple[gym.Space, gym.Space]:
    """The spaces to train with: the config's where set, else the dataset's metadata."""
    observation_space = config.observation_space or space_from_dict(metadata["observation_space"])
    action_space = config.action_space or space_from_dict(metadata["action_space"])
    return observation_space, action_space
