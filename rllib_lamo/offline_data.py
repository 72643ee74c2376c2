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
import ray.data
from ray.rllib.offline.offline_data import OfflineData
from ray.rllib.policy.sample_batch import MultiAgentBatch, SampleBatch
from ray.rllib.utils import unflatten_dict

from rllib_lamo.data.shards import read_metadata, space_to_dict, validate_episode_batch
from rllib_lamo.data.subsets import episode_index, subset_episode_ids
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


class LaMoOfflineData(OfflineData):
    """RLlib `OfflineData` for episode shards: subset, statistics, per-epoch windows."""

    def __init__(self, config: Any):
        if isinstance(config.input_, str) and "://" in config.input_:
            # Ray 2.60's OfflineData wraps a str in pathlib.Path: "s3://b/k" -> "s3:/b/k".
            config = config.copy(copy_frozen=False)
            config.input_ = [config.input_]
        _quiet_ray_data_unless_debugging(config.log_level)
        super().__init__(config)
        self.dataset_path = dataset_folder(config.input_)
        self.metadata = read_metadata(self.dataset_path)
        # LaMoConfig.validate() filled these from metadata.json where the user set none.
        self.observation_space, self.action_space = config.observation_space, config.action_space
        if self.observation_space is None or self.action_space is None:
            raise ValueError("LaMoOfflineData needs a validated config: call config.validate().")
        self.obs_dim = int(np.prod(self.observation_space.shape))
        self.discrete_actions = isinstance(self.action_space, gym.spaces.Discrete)
        self.seed = int(config.seed) if config.seed is not None else 0
        if config.prelearner_class is None:
            self.prelearner_class = LaMoPreLearner
        elif not issubclass(config.prelearner_class, LaMoPreLearner):
            raise TypeError(
                f"LaMo needs episode windows: `prelearner_class` must subclass LaMoPreLearner, "
                f"got {config.prelearner_class.__name__}."
            )

        self.episodes = self.data
        if config.data_ratio < 1.0:
            kept = self._subset_ids(config.data_ratio, config.data_subset_seed)
            self.episodes = self.episodes.map_batches(
                _keep_episodes, fn_kwargs={"eps_ids": kept}, batch_format="pyarrow"
            )
        self.summary = self._summarise()
        logger.info("LaMo dataset %s: %s", self.dataset_path, self.summary)

        self.epoch = 0
        self.batches_served = 0
        self._epoch_batches = None

    def _subset_ids(self, ratio: float, subset_seed: int) -> pa.Array:
        eps_ids, lengths = episode_index(self.dataset_path)
        kept = subset_episode_ids(eps_ids, lengths, ratio, subset_seed)
        logger.info(
            "data_ratio=%s keeps %d of %d episodes (subset seed %d)",
            ratio,
            len(kept),
            len(eps_ids),
            subset_seed,
        )
        return pa.array(kept, type=pa.string())

    def _summarise(self) -> DatasetSummary:
        """One streaming pass: validates every block and sums what the statistics need."""
        obs_dim, discrete = self.obs_dim, self.discrete_actions
        action_space_dict = space_to_dict(self.action_space)
        source = self.dataset_path

        def episode_sums(batch: pa.Table) -> dict[str, np.ndarray]:
            shard = batch.column("path")[0].as_py() if "path" in batch.column_names else source
            validate_episode_batch(
                batch, source=shard, obs_dim=obs_dim, action_space_dict=action_space_dict
            )
            block = episode_block_from_arrow(batch, obs_dim=obs_dim, discrete_actions=discrete)
            obs = block.obs.astype(np.float64)
            return {
                "eps_id": batch.column("eps_id").to_numpy(zero_copy_only=False),
                "length": block.lengths,
                "obs_sum": np.add.reduceat(obs, block.starts, axis=0),
                "obs_sq_sum": np.add.reduceat(np.square(obs), block.starts, axis=0),
                "return": returns_to_go(block.rewards, block.lengths)[block.starts],
            }

        rows = self.episodes.map_batches(episode_sums, batch_format="pyarrow").to_pandas()
        if rows.empty:
            raise ValueError(f"{source}: no episodes to train on (empty dataset or subset).")
        # Blocks finish in any order; summing per episode in id order makes the result bit-exact.
        rows = rows.sort_values("eps_id")
        steps = int(rows["length"].sum())
        obs_mean = np.stack(rows["obs_sum"].to_numpy()).sum(0) / steps
        obs_var = np.stack(rows["obs_sq_sum"].to_numpy()).sum(0) / steps - np.square(obs_mean)
        returns = rows["return"].to_numpy()
        return DatasetSummary(
            num_episodes=len(rows),
            num_steps=steps,
            obs_mean=obs_mean.tolist(),
            obs_std=(np.sqrt(np.maximum(obs_var, 0.0)) + 1e-6).tolist(),
            return_mean=float(returns.mean()),
            return_max=float(returns.max()),
        )

    def _windows_for_epoch(self, batch_size: int) -> Any:
        config = self.config
        # Sample about one window per K steps, but never fewer than one batch per epoch.
        windows_per_epoch = max(math.ceil(self.summary.num_steps / config.context_len), batch_size)
        # A pre-built instance runs as plain Ray tasks: no actor pool to start every epoch.
        prelearner = self.prelearner_class(
            obs_dim=self.obs_dim,
            discrete_actions=self.discrete_actions,
            context_len=config.context_len,
            rtg_scale=config.rtg_scale,
            max_ep_len=config.max_ep_len,
            seed=self.seed,
            epoch=self.epoch,
            windows_per_step=windows_per_epoch / self.summary.num_steps,
        )
        shuffled = self.episodes.randomize_block_order(seed=self.seed * 100_003 + self.epoch)
        mapped = shuffled.map_batches(prelearner, batch_format="pyarrow", **self.map_batches_kwargs)
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

    @property
    def default_map_batches_kwargs(self) -> dict[str, Any]:
        # Windows are cut in stateless Ray tasks: two at a time keep a learner fed on any machine.
        return {"compute": ray.data.TaskPoolStrategy(size=max(2, self.config.num_learners))}

    def close(self) -> None:
        """Drops the epoch's Ray Data iterator while Ray is still up to release it."""
        self._epoch_batches = None

    def get_state(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "batches_served": self.batches_served, "seed": self.seed}

    def set_state(self, state: dict[str, Any]) -> None:
        self.epoch = state["epoch"]
        self.batches_served = state["batches_served"]
        self.seed = state["seed"]
        self._epoch_batches = None

    def summary_dict(self) -> dict[str, Any]:
        return asdict(self.summary)


def _keep_episodes(batch: pa.Table, eps_ids: pa.Array) -> pa.Table:
    """Keeps the rows whose `eps_id` is in the `data_ratio` subset."""
    return batch.filter(pc.is_in(batch.column("eps_id"), value_set=eps_ids))


def _to_multi_agent_batch(batch: dict[str, np.ndarray]) -> MultiAgentBatch:
    per_module = unflatten_dict(batch)
    size = len(next(iter(batch.values())))
    return MultiAgentBatch(
        {module_id: SampleBatch(columns) for module_id, columns in per_module.items()},
        env_steps=size,
    )


def _quiet_ray_data_unless_debugging(log_level: str) -> None:
    """Ray Data announces every execution (one per epoch here); RLlib's log level governs it."""
    if logging.getLevelName(log_level) > logging.INFO:
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        ray.data.DataContext.get_current().enable_progress_bars = False


def dataset_folder(input_: str | list[str]) -> str:
    """The dataset folder (where metadata.json lives) of an `input_` folder or shard list."""
    first = input_ if isinstance(input_, str) else input_[0]
    first = str(first).rstrip("/")
    return first.rsplit("/", 1)[0] if first.endswith(".parquet") else first
