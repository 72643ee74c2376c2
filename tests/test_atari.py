"""Atari: the DT protocol envs, scores, frames stored once and stacked in windows, the conv
encoder, the loss, the DQN Replay converter (on files in its exact layout) and training with
frames gathered on the learner. Real ALE, real Parquet, real Ray."""

from __future__ import annotations

import gzip
import math

import gymnasium as gym
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from ray.rllib.core.columns import Columns
from ray.rllib.policy.sample_batch import MultiAgentBatch, SampleBatch

from rllib_lamo.data.dqn_replay import (
    convert_dqn_replay,
    parse_checkpoints,
    plan_episodes,
    read_store,
    store_path,
    write_store_files,
)
from rllib_lamo.data.format import DatasetError, frame_layout, iter_episodes, list_shards
from rllib_lamo.data.validation import validate_dataset
from rllib_lamo.data.writer import EpisodeDatasetWriter
from rllib_lamo.envs.atari import atari_env_id
from rllib_lamo.scores import reference_scores
from rllib_lamo.torch.embeddings import NatureCNNEncoder
from rllib_lamo.windows import (
    ATTENTION_MASK,
    FRAME_INDEX,
    OBS,
    EpisodeBlock,
    gather_stacked_frames,
    sample_windows,
)

MODULE_ID = "default_policy"
PONG = atari_env_id("pong")


def pong_spaces() -> tuple[gym.Space, gym.Space]:
    env = gym.make(PONG)
    try:
        return env.observation_space, env.action_space
    finally:
        env.close()


def replay_fixture(replay_dir, checkpoints=(3, 4), rows=300, num_actions=6, seed=0) -> dict:
    """Checkpoints in the DQN Replay layout: terminals every 40-70 steps; frames that encode
    (checkpoint, row) in their first pixels, so that the converted frames can be traced back."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for checkpoint in checkpoints:
        terminal = np.zeros(rows, np.uint8)
        terminal[np.cumsum(rng.integers(40, 70, size=rows // 40))[: rows // 70]] = 1
        frames = rng.integers(0, 50, size=(rows, 84, 84), dtype=np.uint8)
        frames[:, 0, 0] = checkpoint
        frames[:, 0, 1:3] = np.stack([np.arange(rows) // 256, np.arange(rows) % 256], axis=1)
        arrays[checkpoint] = {
            "observation": frames,
            "action": rng.integers(0, num_actions, rows).astype(np.int32),
            "reward": rng.choice([-1.0, 0.0, 1.0], rows).astype(np.float32),
            "terminal": terminal,
        }
        write_store_files(replay_dir, checkpoint, arrays[checkpoint])
    return arrays


# ------------------------------------------------------------------------------ env, scores
def test_envs_follow_the_decision_transformer_protocol():
    env = gym.make(PONG)
    obs, _ = env.reset(seed=0)
    assert env.observation_space == gym.spaces.Box(0, 255, (4, 84, 84), np.uint8)
    assert env.action_space == gym.spaces.Discrete(6)
    assert obs.dtype == np.uint8 and obs.shape == (4, 84, 84)
    assert all(np.array_equal(obs[0], obs[i]) for i in range(4))  # padded with the first frame
    ale = env.unwrapped.ale
    assert ale.getFloat("repeat_action_probability") == 0.0
    assert ale.getInt("max_num_frames_per_episode") == 108_000
    frames_before = ale.getEpisodeFrameNumber()
    next_obs, *_ = env.step(0)
    assert ale.getEpisodeFrameNumber() - frames_before == 4  # frame skip 4
    assert np.array_equal(next_obs[:3], obs[1:])  # the stack shifts by one frame per step
    env.close()
    assert gym.make(atari_env_id("breakout")).action_space == gym.spaces.Discrete(4)
    assert gym.make(atari_env_id("qbert")).action_space == gym.spaces.Discrete(6)


@pytest.mark.parametrize(
    ("task", "random", "human"),
    [("pong", -20.7, 9.3), ("breakout", 1.7, 31.8), ("qbert", 163.9, 13455.0)],
)
def test_human_normalised_scores_use_the_papers_constants(task, random, human):
    references = reference_scores(atari_env_id(task))
    assert references.normalise(random) == pytest.approx(0.0)
    assert references.normalise(human) == pytest.approx(100.0)


# ------------------------------------------------------------------ frames stored, stacked
def test_frames_are_stored_once_and_windows_stack_them_as_the_env_does(tmp_path):
    """An episode of the real env, written and read back: every window's stack at step t is
    exactly the observation the env returned at step t, padding included."""
    observation_space, action_space = pong_spaces()
    env = gym.make(PONG)
    obs, _ = env.reset(seed=3)
    observations, frames = [], []
    rng = np.random.default_rng(0)
    actions = rng.integers(0, 6, size=40)
    for action in actions:
        observations.append(obs)
        frames.append(obs[-1])
        obs, *_ = env.step(int(action))
    env.close()
    with EpisodeDatasetWriter(
        tmp_path / "pong",
        observation_space=observation_space,
        action_space=action_space,
        env_id=PONG,
    ) as writer:
        writer.add_episode(np.stack(frames), actions, np.zeros(40, np.float32), False)
    meta = validate_dataset(tmp_path / "pong")
    assert meta["obs_mean"] is None and meta["observation_space"]["dtype"] == "uint8"
    table = pq.read_table(list_shards(tmp_path / "pong")[0])
    assert (
        str(table.schema.field("obs").type)
        == "list<element: fixed_size_list<element: uint8>[7056]>"
    )
    assert len(table.column("obs")[0]) == 40  # 40 frames, not 40 stacks of 4
    episode = next(iter_episodes(tmp_path / "pong"))
    block = EpisodeBlock(
        obs=episode.obs.reshape(40, 84, 84),
        actions=episode.actions,
        rewards=episode.rewards,
        starts=np.array([0]),
        lengths=np.array([40]),
        frame_stack=4,
    )
    windows = sample_windows(
        block, num_windows=64, context_len=6, rtg_scale=1, max_ep_len=100, rng=rng
    )
    mask = windows[ATTENTION_MASK] > 0
    steps = windows["timesteps"]
    expected = np.stack(observations)[steps]
    expected[~mask] = 0
    assert windows[OBS].dtype == np.uint8 and windows[OBS].shape == (64, 6, 4, 84, 84)
    np.testing.assert_array_equal(windows[OBS], expected)
    assert (~mask).any() and (steps[mask] < 3).any()  # padding and stacks at the start covered

    indexed = sample_windows(
        block,
        num_windows=64,
        context_len=6,
        rtg_scale=1,
        max_ep_len=100,
        rng=np.random.default_rng(0),
        gather_frames=False,
    )
    again = sample_windows(
        block,
        num_windows=64,
        context_len=6,
        rtg_scale=1,
        max_ep_len=100,
        rng=np.random.default_rng(0),
    )
    assert OBS not in indexed and indexed[FRAME_INDEX].shape == (64, 6, 4)
    gathered = gather_stacked_frames(block.obs, indexed[FRAME_INDEX], indexed[ATTENTION_MASK])
    np.testing.assert_array_equal(gathered, again[OBS])


def test_frames_of_two_episodes_never_mix_in_a_stack():
    frames = np.arange(10, dtype=np.uint8)[:, None, None] * np.ones((1, 84, 84), np.uint8)
    block = EpisodeBlock(
        obs=frames,
        actions=np.zeros(10, np.int64),
        rewards=np.ones(10, np.float32),
        starts=np.array([0, 4]),
        lengths=np.array([4, 6]),
        frame_stack=4,
    )
    windows = sample_windows(
        block,
        num_windows=200,
        context_len=2,
        rtg_scale=1,
        max_ep_len=10,
        rng=np.random.default_rng(1),
    )
    stacks = windows[OBS][..., 0, 0]  # [W, K, 4] frame numbers
    real = windows[ATTENTION_MASK] > 0
    second = stacks[real][stacks[real][:, -1] >= 4]
    assert second.size and (second >= 4).all()  # episode 2 never shows episode 1's frames
    np.testing.assert_array_equal(
        stacks[real][stacks[real][:, -1] == 4],
        [[4, 4, 4, 4]] * int((stacks[real][:, -1] == 4).sum()),
    )


# ------------------------------------------------------------------------ encoder and loss
def test_nature_cnn_encoder_maps_frame_stacks_to_the_lm_width():
    encoder = NatureCNNEncoder(4, 84, 84, 96)
    assert encoder.projection[0].in_features == 3136  # 64 x 7 x 7, as in DT
    out = encoder(torch.rand(5, 4, 84, 84))
    assert out.shape == (5, 96) and out.abs().max() <= 1.0  # tanh


def image_windows(rng: np.random.Generator, batch: int = 6, context: int = 3) -> dict:
    """Windows whose action is readable from the frames: 255 at pixel row 10*a of the newest."""
    actions = rng.integers(0, 6, size=(batch, context))
    obs = np.zeros((batch, context, 4, 84, 84), np.uint8)
    for a in range(6):
        obs[..., -1, 10 * a : 10 * a + 8, :][actions == a] = 255
    mask = np.ones((batch, context), np.float32)
    mask[0, 0] = 0
    obs[0, 0] = 0
    return {
        Columns.OBS: obs,
        Columns.ACTIONS: actions.astype(np.int64),
        "returns_to_go": np.ones((batch, context), np.float32),
        "timesteps": np.tile(np.arange(context), (batch, 1)).astype(np.int64),
        ATTENTION_MASK: mask,
    }


def test_image_module_learns_actions_with_cross_entropy_and_frames_gathered_on_the_learner():
    from rllib_lamo.lamo import LaMoConfig

    observation_space, action_space = pong_spaces()
    config = (
        LaMoConfig()
        .training(
            language_model="tiny-gpt2",
            context_len=3,
            max_ep_len=16,
            lora_rank=4,
            dropout=0.0,
            lora_dropout=0.0,
            lr=1e-3,
            warmup_steps=1,
            language_loss_coeff=0.0,
        )
        .debugging(seed=0)
    )
    learner = config.build_learner(spaces={MODULE_ID: (observation_space, action_space)})
    module = learner.module[MODULE_ID]
    assert isinstance(module.state_embedding, NatureCNNEncoder)
    assert tuple(module.obs_mean.shape) == (1,)
    with torch.no_grad():
        module.obs_std.fill_(255.0)
    windows = image_windows(np.random.default_rng(0))
    batch = MultiAgentBatch({MODULE_ID: SampleBatch(windows)}, env_steps=6)
    losses = [learner.update(batch=batch)[MODULE_ID]["action_loss"].peek() for _ in range(15)]
    assert losses[0] == pytest.approx(math.log(6), rel=0.3)
    assert losses[-1] < 0.5 * losses[0]

    # The same windows as frame indices into the learner's frames: the same loss.
    frames = windows[Columns.OBS].reshape(-1, 84, 84)
    index = np.arange(len(frames)).reshape(6, 3, 4)
    learner.set_frames(frames)
    indexed = {k: v for k, v in windows.items() if k != Columns.OBS} | {FRAME_INDEX: index}
    from_pixels = learner.validation_action_losses(batch)[MODULE_ID]
    from_index = learner.validation_action_losses(
        MultiAgentBatch({MODULE_ID: SampleBatch(indexed)}, env_steps=6)
    )[MODULE_ID]
    assert from_index == pytest.approx(from_pixels, rel=1e-6)


# --------------------------------------------------------------------- DQN Replay converter
def test_store_files_are_gzipped_npy_arrays_read_in_part(tmp_path):
    arrays = replay_fixture(tmp_path, checkpoints=(7,), rows=120)[7]
    path = store_path(tmp_path, "observation", 7)
    assert path.name == "$store$_observation_ckpt.7.gz"
    with gzip.open(path) as stream:
        np.testing.assert_array_equal(np.load(stream), arrays["observation"])
    np.testing.assert_array_equal(read_store(path, rows=50), arrays["observation"][:50])
    assert parse_checkpoints("1,5,40-42") == [1, 5, 40, 41, 42]


def test_plan_takes_whole_episodes_per_visit_until_the_step_budget():
    terminals = {0: np.zeros(100, np.uint8), 1: np.zeros(100, np.uint8)}
    terminals[0][[9, 29, 49, 69]] = 1  # complete episodes 10-29, 30-49, 50-69
    terminals[1][[19, 59]] = 1  # one: 20-59
    plan = plan_episodes(
        terminals, num_steps=10_000, trajectories_per_buffer=2, rng=np.random.default_rng(0)
    )
    np.testing.assert_array_equal(plan[0], [10, 30, 50, 70])
    np.testing.assert_array_equal(plan[1], [20, 60])
    small = plan_episodes(
        terminals, num_steps=1, trajectories_per_buffer=1, rng=np.random.default_rng(0)
    )
    assert sum(len(ends) - 1 for ends in small.values()) == 1


def test_converter_writes_the_planned_episodes_frame_for_frame(tmp_path):
    arrays = replay_fixture(tmp_path / "replay_logs")
    meta = convert_dqn_replay(
        tmp_path / "replay_logs",
        tmp_path / "pong",
        game="pong",
        checkpoints=[3, 4],
        num_steps=10_000,
        trajectories_per_buffer=2,
    )
    assert meta["env_id"] == PONG and frame_layout(meta["observation_space"]).stack == 4
    assert meta["normalised_return"] is not None
    validate_dataset(tmp_path / "pong")
    steps = 0
    for episode in iter_episodes(tmp_path / "pong"):
        frames = episode.obs.reshape(-1, 84, 84)
        checkpoint = int(frames[0, 0, 0])
        rows = frames[:, 0, 1].astype(int) * 256 + frames[:, 0, 2]
        np.testing.assert_array_equal(rows, np.arange(rows[0], rows[0] + len(rows)))
        source = arrays[checkpoint]
        np.testing.assert_array_equal(frames, source["observation"][rows])
        np.testing.assert_array_equal(episode.actions, source["action"][rows])
        np.testing.assert_array_equal(episode.rewards, source["reward"][rows])
        assert source["terminal"][rows[-1]] == 1 and source["terminal"][rows[:-1]].sum() == 0
        assert source["terminal"][rows[0] - 1] == 1  # starts right after a game ended
        steps += len(rows)
    ends = {c: np.flatnonzero(a["terminal"]) + 1 for c, a in arrays.items()}
    assert steps == sum(int(e[-1] - e[0]) for e in ends.values())  # every complete episode


def test_converter_names_the_file_and_field_of_bad_input(tmp_path):
    replay_fixture(tmp_path / "breakout_run", checkpoints=(1,), num_actions=6)
    with pytest.raises(
        DatasetError,
        match=r"\$store\$_action_ckpt\.1\.gz: field 'action': .*outside breakout's 4 actions",
    ):
        convert_dqn_replay(
            tmp_path / "breakout_run", tmp_path / "out", game="breakout", checkpoints=[1]
        )
    write_store_files(
        tmp_path / "float_frames", 1, {"observation": np.zeros((300, 84, 84), np.float32)}
    )
    for name in ("action", "reward", "terminal"):
        write_store_files(
            tmp_path / "float_frames", 1, {name: replay_fixture(tmp_path / "x", (1,))[1][name]}
        )
    with pytest.raises(
        DatasetError, match=r"observation_ckpt\.1\.gz: field 'observation': holds float32 frames"
    ):
        convert_dqn_replay(
            tmp_path / "float_frames", tmp_path / "out", game="pong", checkpoints=[1]
        )
    with pytest.raises(DatasetError, match=r"\$store\$_terminal_ckpt\.9\.gz: missing"):
        convert_dqn_replay(
            tmp_path / "float_frames", tmp_path / "out", game="pong", checkpoints=[9]
        )
    assert not (tmp_path / "out").exists()


def test_writer_refuses_frames_of_the_wrong_dtype_or_shape(tmp_path):
    observation_space, action_space = pong_spaces()
    writer = EpisodeDatasetWriter(
        tmp_path / "out", observation_space=observation_space, action_space=action_space
    )
    actions = np.zeros(5, np.int64)
    rewards = np.zeros(5, np.float32)
    with pytest.raises(DatasetError, match="field 'obs': must be uint8 frames, got float32"):
        writer.add_episode(np.zeros((5, 84, 84), np.float32), actions, rewards, True)
    with pytest.raises(
        DatasetError,
        match=r"field 'obs': has shape \(5, 28224\), expected \[T, 7056\] \(one 84x84 uint8 "
        r"frame per step, not stacks\)",
    ):
        writer.add_episode(np.zeros((5, 4, 84, 84), np.uint8), actions, rewards, True)
    with pytest.raises(DatasetError, match=r"field 'actions': 6 outside the action space"):
        writer.add_episode(np.zeros((5, 84, 84), np.uint8), actions + 6, rewards, True)
    writer.abort()


# -------------------------------------------------------------------- training end to end
def test_training_on_converted_frames_never_ships_pixels_from_the_driver(tmp_path, ray_cluster):
    from rllib_lamo.lamo import LaMoConfig

    replay_fixture(tmp_path / "replay_logs")
    convert_dqn_replay(
        tmp_path / "replay_logs",
        tmp_path / "pong",
        game="pong",
        checkpoints=[3, 4],
        num_steps=10_000,
    )
    config = (
        LaMoConfig()
        .environment(PONG)
        .offline_data(input_=str(tmp_path / "pong"), dataset_num_iters_per_learner=2)
        .training(
            language_model="tiny-gpt2",
            context_len=4,
            max_ep_len=200,
            train_batch_size_per_learner=4,
            language_loss_coeff=0.0,
            validation_fraction=0.3,
            validation_num_windows=4,
        )
        .debugging(seed=0)
    )
    algo = config.build_algo()
    try:
        batch = algo.offline_data.sample(4).policy_batches[MODULE_ID]
        assert OBS not in batch and batch[FRAME_INDEX].shape == (4, 4, 4)
        result = algo.train()
        assert math.isfinite(result["learners"][MODULE_ID]["action_loss"])
        assert math.isfinite(result["validation"]["action_loss"])
    finally:
        algo.stop()


def test_readers_refuse_shards_whose_frames_are_not_single_uint8_frames():
    from rllib_lamo.data.format import frame_layout
    from rllib_lamo.data.validation import validate_episode_batch
    from rllib_lamo.data.writer import _object_array

    observation_space, action_space = pong_spaces()
    frames = frame_layout(observation_space)

    def batch(obs: np.ndarray) -> dict:
        return {
            "eps_id": np.array(["e"], dtype=object),
            "obs": _object_array([obs]),
            "actions": _object_array([np.zeros(3, np.int64)]),
            "rewards": _object_array([np.zeros(3, np.float32)]),
            "terminated": np.array([True]),
            "return": np.array([0.0]),
            "length": np.array([3], dtype=np.int64),
        }

    options = {
        "source": "shard.parquet",
        "obs_dim": frames.frame_size,
        "action_space_dict": {"type": "Discrete", "n": 6},
        "frames": frames,
    }
    validate_episode_batch(batch(np.zeros((3, 7056), np.uint8)), **options)
    with pytest.raises(
        DatasetError, match="shard.parquet: field 'obs': must be uint8, got float32"
    ):
        validate_episode_batch(batch(np.zeros((3, 7056), np.float32)), **options)
    with pytest.raises(
        DatasetError,
        match=r"field 'obs': has width 28224, expected 7056 \(one 84x84 uint8 frame per step\)",
    ):
        validate_episode_batch(batch(np.zeros((3, 28224), np.uint8)), **options)
