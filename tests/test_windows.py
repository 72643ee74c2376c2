"""Window sampling, returns-to-go and padding against a loop-per-step reference."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from rllib_lamo.windows import (
    BOX_ACTION_PAD,
    EpisodeBlock,
    episode_block_from_arrow,
    returns_to_go,
    sample_windows,
)

OBS_DIM, ACT_DIM = 3, 2


def random_episodes(rng: np.random.Generator, lengths: list[int]) -> list[dict]:
    return [
        {
            "eps_id": f"ep{i}",
            "obs": rng.normal(size=(n, OBS_DIM)).astype(np.float32),
            "actions": rng.uniform(-1, 1, size=(n, ACT_DIM)).astype(np.float32),
            "rewards": rng.normal(size=n).astype(np.float32),
        }
        for i, n in enumerate(lengths)
    ]


def as_table(episodes: list[dict]) -> pa.Table:
    return pa.table(
        {
            "eps_id": [e["eps_id"] for e in episodes],
            "obs": [e["obs"].tolist() for e in episodes],
            "actions": [e["actions"].tolist() for e in episodes],
            "rewards": [e["rewards"].tolist() for e in episodes],
        }
    )


def reference_window(episode: dict, start: int, K: int, rtg_scale: float, max_ep_len: int):
    """The Decision Transformer's window, one step at a time."""
    n = len(episode["rewards"])
    obs = np.zeros((K, OBS_DIM), np.float32)
    actions = np.full((K, ACT_DIM), BOX_ACTION_PAD, np.float32)
    rtg = np.zeros(K, np.float32)
    timesteps = np.zeros(K, np.int64)
    mask = np.zeros(K, np.float32)
    steps = list(range(start, min(start + K, n)))
    for slot, t in zip(range(K - len(steps), K), steps, strict=True):
        obs[slot] = episode["obs"][t]
        actions[slot] = episode["actions"][t]
        rtg[slot] = sum(float(r) for r in episode["rewards"][t:]) / rtg_scale
        timesteps[slot] = min(t, max_ep_len - 1)
        mask[slot] = 1.0
    return obs, actions, rtg, timesteps, mask


def test_returns_to_go_matches_reverse_sums():
    rng = np.random.default_rng(0)
    lengths = np.array([1, 5, 3, 12])
    rewards = rng.normal(size=lengths.sum()).astype(np.float32)
    expected = np.concatenate(
        [
            [rewards[s : s + n][i:].sum() for i in range(n)]
            for s, n in zip(np.r_[0, np.cumsum(lengths)[:-1]], lengths, strict=True)
        ]
    )
    np.testing.assert_allclose(returns_to_go(rewards, lengths), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("K", [1, 4, 20])
def test_windows_match_reference(K: int):
    rng = np.random.default_rng(1)
    episodes = random_episodes(rng, [1, 3, K, K + 1, 2 * K + 7, 50])
    block = episode_block_from_arrow(as_table(episodes), obs_dim=OBS_DIM, discrete_actions=False)
    windows = sample_windows(
        block,
        num_windows=200,
        context_len=K,
        rtg_scale=10.0,
        max_ep_len=30,
        rng=np.random.default_rng(2),
    )
    # Recover each window's episode and start from the sampling stream itself.
    starts = np.random.default_rng(2).integers(0, block.num_steps, size=200)
    for w, global_start in enumerate(starts):
        e = int(np.searchsorted(block.starts, global_start, side="right") - 1)
        expected = reference_window(episodes[e], int(global_start - block.starts[e]), K, 10.0, 30)
        names = ["obs", "actions", "returns_to_go", "timesteps", "attention_mask"]
        for name, value in zip(names, expected, strict=True):
            np.testing.assert_allclose(windows[name][w], value, rtol=1e-5, atol=1e-5, err_msg=name)


def test_last_slot_is_always_real_and_padding_is_left():
    rng = np.random.default_rng(3)
    block = episode_block_from_arrow(
        as_table(random_episodes(rng, [2, 7, 40])), obs_dim=OBS_DIM, discrete_actions=False
    )
    mask = sample_windows(
        block, num_windows=500, context_len=10, rtg_scale=1.0, max_ep_len=1000, rng=rng
    )["attention_mask"]
    assert (mask[:, -1] == 1).all()
    assert (np.diff(mask, axis=1) >= 0).all()  # once real, real to the end of the window


def test_windows_cover_episodes_in_proportion_to_length():
    lengths = np.array([10, 90])
    block = EpisodeBlock(
        obs=np.zeros((100, 1), np.float32),
        actions=np.zeros((100, 1), np.float32),
        rewards=np.r_[np.zeros(10), np.ones(90)].astype(np.float32),
        starts=np.array([0, 10]),
        lengths=lengths,
    )
    windows = sample_windows(
        block,
        num_windows=20_000,
        context_len=1,
        rtg_scale=1.0,
        max_ep_len=1000,
        rng=np.random.default_rng(4),
    )
    share_of_long = (windows["returns_to_go"][:, 0] > 0).mean()
    assert abs(share_of_long - 0.9) < 0.02
