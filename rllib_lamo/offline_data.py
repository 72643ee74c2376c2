"""LaMo training windows from episode shards: read once per trial, sampled from all of it.

Ray Data reads and validates the episode rows once (local folder or cloud URI); the
`data_ratio` subset is kept, and the episodes are held as one `EpisodeBlock` of flat per-step
arrays. Every batch then draws its K-step windows at uniformly random steps of the *whole*
dataset, so consecutive batches mix episodes of every shard (D4RL's medium-replay and
medium-expert shards are ordered by policy quality), and there is no pipeline to restart at an
epoch boundary. Batch i depends only on (seed, i): the count of batches served is the whole
resume state, and the driver's global batch is the same for any number of learners.

The episodes must fit in the driver's memory (float32: 4 bytes per number; a 1M-step Hopper
set is about 60 MB). Image datasets keep one uint8 frame per step (DT's 500K Atari steps: 3.5
GB), put once into Ray's object store: their batches carry frame indices, and each learner
gathers the stacked frames from its own view of that store (`LaMoTorchLearner.set_frames`).
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray
import ray.data
from ray.rllib.core import DEFAULT_MODULE_ID
from ray.rllib.offline.offline_data import OfflineData
from ray.rllib.policy.sample_batch import MultiAgentBatch, SampleBatch

from rllib_lamo.data.format import frame_layout, space_to_dict, stored_obs_dim
from rllib_lamo.data.subsets import subset_episode_ids
from rllib_lamo.data.validation import validate_episode_batch
from rllib_lamo.windows import (
    FRAME_INDEX,
    EpisodeBlock,
    episode_block_from_arrow,
    sample_windows,
)

logger = logging.getLogger(__name__)

EPISODE_COLUMNS = ("eps_id", "obs", "actions", "rewards")
# uint8 pixels are divided by this (mean 0), as the Decision Transformer's Atari code does.
PIXEL_SCALE = 255.0


@dataclass
class DatasetSummary:
    """What training needs to know about the (possibly subsampled) episodes it reads."""

    num_episodes: int
    num_steps: int
    obs_mean: list[float]
    obs_std: list[float]
    return_mean: float


class LaMoOfflineData(OfflineData):
    """RLlib `OfflineData` for episode shards: one read, the subset, statistics, windows."""

    def __init__(self, config: Any):
        if isinstance(config.input_, str) and "://" in config.input_:
            # Ray 2.60's OfflineData wraps a str in pathlib.Path: "s3://b/k" -> "s3:/b/k".
            config = config.copy(copy_frozen=False)
            config.input_ = [config.input_]
        _quiet_ray_data_unless_debugging(config.log_level)
        super().__init__(config)
        if config.prelearner_class is not None:
            raise ValueError(
                "LaMo cuts windows in LaMoOfflineData from episodes it holds, so "
                f"`prelearner_class` ({config.prelearner_class.__name__}) would never run: unset "
                "it, or subclass LaMoOfflineData and set `offline_data_class`."
            )
        self.dataset = config.trajectory_dataset()
        # LaMoConfig.validate() filled these from metadata.json where the user set none.
        self.observation_space, self.action_space = config.observation_space, config.action_space
        if self.observation_space is None or self.action_space is None:
            raise ValueError("LaMoOfflineData needs a validated config: call config.validate().")
        # Image observations are stored and held as one uint8 frame per step.
        self.frames = frame_layout(self.observation_space)
        self.obs_dim = stored_obs_dim(self.observation_space)
        self.discrete_actions = isinstance(self.action_space, gym.spaces.Discrete)
        self.seed = int(config.seed) if config.seed is not None else 0

        table = self._read_validated_episodes()
        if config.data_ratio < 1.0:
            table, _ = self._split(table, config.data_ratio, config.data_subset_seed)
            logger.info(
                "data_ratio=%s keeps %d episodes (subset seed %d)",
                config.data_ratio,
                table.num_rows,
                config.data_subset_seed,
            )
        if table.num_rows == 0:
            raise ValueError(f"{self.dataset.folder}: no episodes to train on (empty dataset).")
        self.validation_episodes: EpisodeBlock | None = None
        self._validation_batch: MultiAgentBatch | None = None
        if config.validation_fraction > 0:
            table = self._hold_out_validation_episodes(table, config.validation_fraction)
        self.episodes: EpisodeBlock = self._block(table)
        self.summary = _summarise(self.episodes)
        # The frames go to the object store once; learners gather their windows' stacks from
        # it (`FRAME_INDEX`), so batches leaving this process carry indices, not pixels.
        # Validation episodes' frames follow the training ones in that one array.
        self.frames_ref: ray.ObjectRef | None = None
        if self.frames is not None:
            self._put_frames()
        logger.info("LaMo dataset %s: %s", self.dataset.folder, self.summary)
        # About one window per K steps of data makes an epoch (only counted, for reporting).
        self.windows_per_epoch = math.ceil(self.summary.num_steps / config.context_len)
        self.batches_served = 0
        self.windows_served = 0

    def _put_frames(self) -> None:
        """All frames into the object store; this process keeps zero-copy views of them."""
        blocks = [self.episodes] + (
            [self.validation_episodes] if self.validation_episodes is not None else []
        )
        self.frames_ref = ray.put(np.concatenate([block.obs for block in blocks]))
        frames = ray.get(self.frames_ref)
        offset = 0
        for block in blocks:
            block.obs = frames[offset : offset + block.num_steps]
            offset += block.num_steps

    def _read_validated_episodes(self) -> pa.Table:
        """One parallel Ray Data pass: validates every block, keeps the episodes, by id order."""
        obs_dim, action_space_dict = self.obs_dim, space_to_dict(self.action_space)
        frames = self.frames
        folder = self.dataset.folder

        def validated(batch: pa.Table) -> pa.Table:
            shard = batch.column("path")[0].as_py() if "path" in batch.column_names else folder
            validate_episode_batch(
                batch,
                source=shard,
                obs_dim=obs_dim,
                action_space_dict=action_space_dict,
                frames=frames,
            )
            return batch.select(EPISODE_COLUMNS)

        blocks = self.data.map_batches(validated, batch_format="pyarrow", **self.map_batches_kwargs)
        with warnings.catch_warnings():
            # Ray Data warns when a small dataset has fewer read blocks than the two tasks
            # allowed: harmless here (one read, of what there is).
            warnings.filterwarnings("ignore", message="The maximum number of concurrent tasks")
            tables = [table for table in ray.get(blocks.to_arrow_refs()) if table.num_rows]
        if not tables:
            raise ValueError(f"{folder}: no episodes to train on (empty dataset).")
        # Blocks finish in any order; sorting by id makes the episodes (and batches) exact.
        table = pa.concat_tables(tables, promote_options="permissive")
        return table.sort_by("eps_id").combine_chunks()

    def _block(self, table: pa.Table) -> EpisodeBlock:
        return episode_block_from_arrow(
            table, obs_dim=self.obs_dim, discrete_actions=self.discrete_actions, frames=self.frames
        )

    @staticmethod
    def _split(table: pa.Table, ratio: float, seed: int | list[int]) -> tuple[pa.Table, pa.Table]:
        """A seeded random share `ratio` of whole episodes, and the rest; chosen once."""
        eps_ids = table.column("eps_id").to_pylist()
        lengths = pc.list_value_length(table.column("rewards")).to_numpy(zero_copy_only=False)
        chosen = pa.array(
            subset_episode_ids(eps_ids, lengths, ratio, seed),
            type=table.schema.field("eps_id").type,
        )
        is_chosen = pc.is_in(table.column("eps_id"), value_set=chosen)
        return table.filter(is_chosen), table.filter(pc.invert(is_chosen))

    def _hold_out_validation_episodes(self, table: pa.Table, fraction: float) -> pa.Table:
        """Keeps the validation episodes apart; returns the training ones.

        Seeded by `data_subset_seed` (another stream than the subset's), so that every
        training seed and method of a study is checked on the same episodes.
        """
        if table.num_rows < 2:
            raise ValueError(
                f"validation_fraction={fraction}: {self.dataset.folder} keeps "
                f"{table.num_rows} episode(s) after data_ratio={self.config.data_ratio}; a "
                "validation split needs at least 2 (one to train on, one to hold out). "
                "Set validation_fraction to 0 or raise data_ratio."
            )
        held_out, training = self._split(table, fraction, [self.config.data_subset_seed, 1])
        if training.num_rows == 0:
            held_out, training = held_out.slice(1), held_out.slice(0, 1)
        self.validation_episodes = self._block(held_out)
        logger.info(
            "validation_fraction=%s holds out %d of %d episodes",
            fraction,
            held_out.num_rows,
            table.num_rows,
        )
        return training

    def validation_batch(self) -> MultiAgentBatch | None:
        """Fixed windows of the held-out episodes (None without a validation split)."""
        if self.validation_episodes is None:
            return None
        if self._validation_batch is None:
            config = self.config
            self._validation_batch = self._windows(
                self.validation_episodes,
                config.validation_num_windows,
                np.random.default_rng([config.data_subset_seed, 1]),
                frame_offset=self.episodes.num_steps,
            )
        return self._validation_batch

    def _windows(
        self,
        episodes: EpisodeBlock,
        num_windows: int,
        rng: np.random.Generator,
        frame_offset: int = 0,
    ) -> MultiAgentBatch:
        """`num_windows` K-step windows at random steps of `episodes`, as a batch.

        Image windows carry `FRAME_INDEX` into `frames_ref`'s array, where `episodes`' frames
        start at `frame_offset`.
        """
        config = self.config
        windows = sample_windows(
            episodes,
            num_windows=num_windows,
            context_len=config.context_len,
            rtg_scale=config.rtg_scale,
            max_ep_len=config.max_ep_len,
            rng=rng,
            gather_frames=False,
        )
        if FRAME_INDEX in windows:
            windows[FRAME_INDEX] += frame_offset
        return MultiAgentBatch({DEFAULT_MODULE_ID: SampleBatch(windows)}, env_steps=num_windows)

    @property
    def epoch(self) -> int:
        """How many times the windows served so far cover the data (about one per K steps)."""
        return self.windows_served // self.windows_per_epoch

    def sample(self, num_samples: int, **_: Any) -> MultiAgentBatch:
        """The next batch of `num_samples` windows, drawn from the whole dataset.

        Batch i depends only on the seed and i, so a restored run continues with the very
        batches an uninterrupted one would have seen.
        """
        batch = self._windows(
            self.episodes, num_samples, np.random.default_rng([self.seed, self.batches_served])
        )
        self.batches_served += 1
        self.windows_served += num_samples
        return batch

    @property
    def default_map_batches_kwargs(self) -> dict[str, Any]:
        # The one read is validated in stateless Ray tasks, two at a time on any machine.
        return {"compute": ray.data.TaskPoolStrategy(size=max(2, self.config.num_learners))}

    def close(self) -> None:
        """Nothing streams between batches: the episodes are plain arrays."""

    def get_state(self) -> dict[str, Any]:
        return {
            "batches_served": self.batches_served,
            "windows_served": self.windows_served,
            "seed": self.seed,
        }

    def set_state(self, state: dict[str, Any]) -> None:
        if "windows_served" not in state:
            logger.warning(
                "This checkpoint's data position comes from an older, per-epoch stream: "
                "training continues with a freshly seeded stream from batch %d.",
                state["batches_served"],
            )
        self.batches_served = state["batches_served"]
        self.windows_served = state.get("windows_served", 0)
        self.seed = state["seed"]


def _summarise(episodes: EpisodeBlock) -> DatasetSummary:
    """Observation statistics over every step, and episode returns, of the kept episodes.

    Frames are scaled by the constant 255 (the Decision Transformer's x / 255), not by
    per-pixel statistics.
    """
    returns = episodes.step_returns_to_go[episodes.starts]
    if episodes.frame_stack:
        obs_mean, obs_std = [0.0], [PIXEL_SCALE]
    else:
        obs = episodes.obs.astype(np.float64)
        mean = obs.mean(axis=0)
        obs_mean = mean.tolist()
        obs_std = (np.sqrt(np.square(obs - mean).mean(axis=0)) + 1e-6).tolist()
    return DatasetSummary(
        num_episodes=len(episodes.lengths),
        num_steps=episodes.num_steps,
        obs_mean=obs_mean,
        obs_std=obs_std,
        return_mean=float(returns.mean()),
    )


def _quiet_ray_data_unless_debugging(log_level: str) -> None:
    """Ray Data announces every execution; RLlib's log level governs it."""
    if logging.getLevelName(log_level) > logging.INFO:
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        ray.data.DataContext.get_current().enable_progress_bars = False
