"""LaMoOfflineData on real Parquet shards read by Ray Data."""

from __future__ import annotations

import json
import shutil

import gymnasium as gym
import numpy as np
import pytest

from rllib_lamo.data.format import Episode, iter_shard_tables
from rllib_lamo.data.testing import write_toy_dataset
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


def test_batches_do_not_depend_on_the_batch_size_of_other_calls(ray_cluster, episode_dataset):
    """Batch i is a function of (seed, i): resuming needs nothing but the count."""
    data = make_offline_data(episode_dataset)
    data.sample(16), data.sample(8)
    third = data.sample(16)["default_policy"]["obs"]
    resumed = make_offline_data(episode_dataset)
    resumed.set_state({**data.get_state(), "batches_served": 2})
    np.testing.assert_array_equal(resumed.sample(16)["default_policy"]["obs"], third)


def shard_of_each_step(path: str) -> dict[bytes, str]:
    """Maps every step's observation (bytes) to the shard file that holds its episode."""
    owner = {}
    for shard, table in iter_shard_tables(path, columns=["obs"]):
        for episode in table.column("obs").to_pylist():
            for obs in episode:
                owner[np.asarray(obs, np.float32).tobytes()] = shard
    return owner


def test_consecutive_batches_draw_from_many_shards(ray_cluster, tmp_path):
    """Shards can be ordered (medium-replay, medium-expert): no batch may come from one."""
    path = tmp_path / "many-shards"
    write_toy_dataset(path, num_episodes=80, max_steps_per_shard=150, seed=4)
    owner = shard_of_each_step(str(path))
    num_shards = len(set(owner.values()))
    assert num_shards >= 8
    data = make_offline_data(str(path))
    seen_in_three = set()
    for index in range(12):
        # The last slot of a window always holds a real step.
        last_obs = data.sample(16)["default_policy"]["obs"][:, -1]
        shards = {owner[obs.tobytes()] for obs in last_obs}
        assert len(shards) >= num_shards // 2, f"batch {index} draws from {len(shards)} shards"
        seen_in_three |= shards
        if index % 3 == 2:
            assert len(seen_in_three) >= num_shards - 1
            seen_in_three = set()


def test_subset_windows_come_only_from_the_kept_episodes(ray_cluster, episode_dataset):
    from rllib_lamo.data.subsets import subset_ids_for_dataset

    kept = set(subset_ids_for_dataset(episode_dataset, 0.25, seed=1))
    owner = {}
    for _shard, table in iter_shard_tables(episode_dataset, columns=["eps_id", "obs"]):
        for eps_id, episode in zip(*table.to_pydict().values(), strict=True):
            for obs in episode:
                owner[np.asarray(obs, np.float32).tobytes()] = eps_id
    data = make_offline_data(episode_dataset, data_ratio=0.25, data_subset_seed=1)
    drawn = {
        owner[obs.tobytes()]
        for _ in range(20)
        for obs in data.sample(16)["default_policy"]["obs"][:, -1]
    }
    assert drawn <= kept and len(drawn) > len(kept) // 2


def test_the_dataset_is_read_once_and_handed_on(ray_cluster, episode_dataset):
    config = LaMoConfig().offline_data(input_=episode_dataset).training(context_len=4)
    config.validate()
    dataset = config.trajectory_dataset()
    assert dataset.folder == episode_dataset
    assert dataset.observation_space == OBS_SPACE and dataset.action_space == ACT_SPACE
    assert dataset.env_id == "Toy-v0"
    # The writer records the shards' hash in metadata.json; the object hands it on unread.
    assert dataset.content_hash == dataset.metadata["content_hash"]
    assert len(dataset.content_hash) == 64
    assert LaMoOfflineData(config).dataset is dataset
    # Derived state, not a setting: no MLflow param, no stale copy in a checkpoint.
    assert "_trajectory_dataset" not in config.to_dict()


def test_the_dataset_reports_the_content_hash_its_metadata_holds(tmp_path, episode_dataset):
    from rllib_lamo.data.dataset import TrajectoryDataset

    copy = tmp_path / "hashed"
    shutil.copytree(episode_dataset, copy)
    metadata = json.loads((copy / "metadata.json").read_text())
    (copy / "metadata.json").write_text(json.dumps({**metadata, "content_hash": "blake2b:abc"}))
    shards = sorted(str(p) for p in copy.glob("*.parquet"))
    assert TrajectoryDataset.read(shards).folder == str(copy)
    assert TrajectoryDataset.read(str(copy)).content_hash == "blake2b:abc"


def test_a_prelearner_class_is_refused_not_ignored(ray_cluster, episode_dataset):
    from ray.rllib.offline.offline_prelearner import OfflinePreLearner

    config = (
        LaMoConfig()
        .offline_data(input_=episode_dataset, prelearner_class=OfflinePreLearner)
        .training(context_len=4)
    )
    config.validate()
    with pytest.raises(ValueError, match="prelearner_class"):
        LaMoOfflineData(config)


def _episodes_of(block) -> set[bytes]:
    """Each episode's first observation: an identity that survives the block's layout."""
    return {block.obs[start].tobytes() for start in block.starts}


def test_validation_episodes_are_held_out_of_training(ray_cluster, episode_dataset):
    data = make_offline_data(episode_dataset, validation_fraction=0.2)
    training, held_out = _episodes_of(data.episodes), _episodes_of(data.validation_episodes)
    assert len(held_out) == 8 and len(training) == 32 and not training & held_out
    # Statistics describe what is trained on.
    assert data.summary.num_episodes == 32
    # Fixed windows of the held-out episodes, the same every call.
    batch = data.validation_batch()["default_policy"]
    assert batch["obs"].shape[0] == 256
    np.testing.assert_array_equal(batch["obs"], data.validation_batch()["default_policy"]["obs"])
    assert batch["obs"][:, -1].tobytes() not in {obs.tobytes() for obs in data.episodes.obs}


def test_the_validation_split_is_shared_by_training_seeds(ray_cluster, episode_dataset):
    """Every seed and method of a study is checked on the same episodes and windows."""
    first = make_offline_data(episode_dataset, validation_fraction=0.2)
    config = (
        LaMoConfig()
        .offline_data(input_=episode_dataset)
        .training(context_len=4, validation_fraction=0.2)
        .debugging(seed=99)
    )
    config.validate()
    other_seed = LaMoOfflineData(config)
    assert _episodes_of(first.validation_episodes) == _episodes_of(other_seed.validation_episodes)
    np.testing.assert_array_equal(
        first.validation_batch()["default_policy"]["obs"],
        other_seed.validation_batch()["default_policy"]["obs"],
    )
    assert make_offline_data(episode_dataset).validation_batch() is None


def test_a_validation_split_of_one_episode_is_refused(ray_cluster, episode_dataset):
    with pytest.raises(ValueError, match=r"validation_fraction=0.5: .* keeps 1 episode"):
        make_offline_data(episode_dataset, data_ratio=0.01, validation_fraction=0.5)
