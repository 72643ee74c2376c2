"""LaMoOfflineData on real Parquet shards read by Ray Data."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from rllib_lamo.data.format import Episode
from rllib_lamo.data.writer import write_dataset
from rllib_lamo.lamo import LaMoConfig
from rllib_lamo.offline_data import LaMoOfflineData

OBS_SPACE = gym.spaces.Box(-np.inf, np.inf, (3,), np.float32)
ACT_SPACE = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)


@pytest.fixture(scope="module")
def episode_dataset(tmp_path_factory) -> str:
    rng = np.random.default_rng(0)
    episodes = [
        Episode(
            obs=rng.normal(loc=2.0, scale=3.0, size=(n, 3)).astype(np.float32),
            actions=rng.uniform(-1, 1, size=(n, 2)).astype(np.float32),
            rewards=rng.uniform(0, 1, size=n).astype(np.float32),
            terminated=bool(i % 2),
            eps_id=f"episode-{i:03d}",
        )
        for i, n in enumerate(rng.integers(5, 60, size=40))
    ]
    out = tmp_path_factory.mktemp("data") / "toy"
    write_dataset(
        out,
        episodes,
        observation_space=OBS_SPACE,
        action_space=ACT_SPACE,
        env_id="Toy-v0",
        max_steps_per_shard=300,
    )
    return str(out)


def make_offline_data(path: str, **training) -> LaMoOfflineData:
    config = (
        LaMoConfig().offline_data(input_=path).training(context_len=4, **training).debugging(seed=3)
    )
    config.validate()
    return LaMoOfflineData(config)


def test_statistics_cover_every_step(ray_cluster, episode_dataset):
    data = make_offline_data(episode_dataset)
    from rllib_lamo.data.format import read_metadata

    metadata = read_metadata(episode_dataset)
    assert data.summary.num_episodes == metadata["num_episodes"] == 40
    assert data.summary.num_steps == metadata["num_steps"]
    np.testing.assert_allclose(data.summary.obs_mean, metadata["obs_mean"], rtol=1e-4)
    np.testing.assert_allclose(data.summary.obs_std, metadata["obs_std"], rtol=1e-4)


def test_subset_keeps_whole_episodes_deterministically(ray_cluster, episode_dataset):
    first = make_offline_data(episode_dataset, data_ratio=0.25, data_subset_seed=1)
    again = make_offline_data(episode_dataset, data_ratio=0.25, data_subset_seed=1)
    other = make_offline_data(episode_dataset, data_ratio=0.25, data_subset_seed=2)
    assert first.summary.num_episodes == 10
    assert first.summary == again.summary
    assert first.summary != other.summary


def test_batches_repeat_for_a_seed_and_resume_mid_epoch(ray_cluster, episode_dataset):
    data = make_offline_data(episode_dataset)
    stream = [data.sample(16) for _ in range(40)]  # spans more than one epoch
    assert data.epoch >= 1
    batch = stream[0]["default_policy"]
    assert batch["obs"].shape == (16, 4, 3)
    assert batch["actions"].shape == (16, 4, 2)
    assert set(np.unique(batch["attention_mask"])) <= {0.0, 1.0}

    replay = make_offline_data(episode_dataset)
    for expected in stream[:25]:
        np.testing.assert_array_equal(
            replay.sample(16)["default_policy"]["obs"], expected["default_policy"]["obs"]
        )
    state = replay.get_state()
    resumed = make_offline_data(episode_dataset)
    resumed.set_state(state)
    for expected in stream[25:]:
        np.testing.assert_array_equal(
            resumed.sample(16)["default_policy"]["obs"], expected["default_policy"]["obs"]
        )


def test_epochs_resample_windows(ray_cluster, episode_dataset):
    data = make_offline_data(episode_dataset)
    first_epoch = data.sample(16)
    while data.epoch == 0:
        data.sample(16)
    second_epoch = data.sample(16)
    assert not np.array_equal(
        first_epoch["default_policy"]["obs"], second_epoch["default_policy"]["obs"]
    )
