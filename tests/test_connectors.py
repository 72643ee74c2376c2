"""DecisionContext and ContextBuffer against a loop-per-step reference, on stepped episodes."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from ray.rllib.connectors.common import BatchIndividualItems
from ray.rllib.env.single_agent_episode import SingleAgentEpisode

from rllib_lamo.connectors.decision_context import (
    ContextBuffer,
    DecisionContext,
    episode_return_so_far,
)
from rllib_lamo.windows import ACTIONS, ATTENTION_MASK, OBS, RETURNS_TO_GO, TIMESTEPS

OBS_SPACE = gym.spaces.Box(-np.inf, np.inf, (3,), np.float32)
BOX_ACTIONS = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
DISCRETE_ACTIONS = gym.spaces.Discrete(4)
K = 5
RTG_SCALE = 10.0
MAX_EP_LEN = 12


def reference_context(
    obs: list, actions: list, rewards: list, *, target: float, discrete: bool
) -> dict[str, np.ndarray]:
    """The DT evaluation context, one position at a time (the current step is last)."""
    t = len(rewards)
    columns: dict[str, list] = {c: [] for c in (OBS, ACTIONS, RETURNS_TO_GO, TIMESTEPS)}
    columns[ATTENTION_MASK] = []
    action_pad = 0 if discrete else np.full(BOX_ACTIONS.shape, -10.0)
    for step in range(t - K + 1, t + 1):
        real = step >= 0
        columns[OBS].append(obs[step] if real else np.zeros(OBS_SPACE.shape))
        columns[ACTIONS].append(actions[step] if 0 <= step < t else action_pad)
        columns[RETURNS_TO_GO].append((target - sum(rewards[:step])) / RTG_SCALE if real else 0.0)
        columns[TIMESTEPS].append(min(step, MAX_EP_LEN - 1) if real else 0)
        columns[ATTENTION_MASK].append(1.0 if real else 0.0)
    return {column: np.array(values) for column, values in columns.items()}


class SteppedEnvs:
    """Random episodes stepped side by side, as a vector env runner would, with optional cuts."""

    def __init__(self, lengths: list[int], *, discrete: bool, seed: int):
        self.rng = np.random.default_rng(seed)
        self.lengths = lengths
        self.discrete = discrete
        self.history = [{"obs": [], "actions": [], "rewards": []} for _ in lengths]
        self.episodes = []
        for history in self.history:
            episode = SingleAgentEpisode(
                observation_space=OBS_SPACE,
                action_space=DISCRETE_ACTIONS if discrete else BOX_ACTIONS,
            )
            first_obs = self.rng.normal(size=3).astype(np.float32)
            episode.add_env_reset(first_obs)
            history["obs"].append(first_obs)
            self.episodes.append(episode)

    def step(self) -> None:
        for length, history, episode in zip(self.lengths, self.history, self.episodes, strict=True):
            if episode.t >= length:
                continue
            obs = self.rng.normal(size=3).astype(np.float32)
            if self.discrete:
                action = int(self.rng.integers(4))
            else:
                action = self.rng.uniform(-1, 1, size=2).astype(np.float32)
            reward = float(self.rng.normal())
            episode.add_env_step(obs, action, reward, terminated=episode.t + 1 == length)
            for key, value in zip(
                ("obs", "actions", "rewards"), (obs, action, reward), strict=True
            ):
                history[key].append(value)

    def cut(self, lookback: int) -> None:
        self.episodes = [
            e if e.is_done else e.cut(len_lookback_buffer=lookback) for e in self.episodes
        ]


def run_connector(connector: DecisionContext, episodes: list) -> dict[str, np.ndarray]:
    """The connector followed by RLlib's batching piece, as in the default pipeline."""
    shared_data: dict = {}
    batch = connector(rl_module=None, batch={}, episodes=episodes, shared_data=shared_data)
    batch = BatchIndividualItems()(
        rl_module=None, batch=batch, episodes=episodes, shared_data=shared_data
    )
    assert shared_data["memorized_map_structure"] == [e.id_ for e in episodes]
    return batch


def make_connector(discrete: bool, target: float) -> DecisionContext:
    return DecisionContext(
        OBS_SPACE,
        DISCRETE_ACTIONS if discrete else BOX_ACTIONS,
        context_len=K,
        rtg_scale=RTG_SCALE,
        max_ep_len=MAX_EP_LEN,
        target_return=target,
    )


@pytest.mark.parametrize("discrete", [False, True])
@pytest.mark.parametrize("cut_every", [None, 3, 7])
def test_matches_reference_at_every_step(discrete: bool, cut_every: int | None):
    # Shorter than, equal to and longer than K, and past max_ep_len (timestep clipping).
    lengths = [2, K, K + 1, 11, 17]
    envs = SteppedEnvs(lengths, discrete=discrete, seed=7)
    connector = make_connector(discrete, target=30.0)
    for step in range(max(lengths) + 1):
        batch = run_connector(connector, envs.episodes)
        assert batch[OBS].shape == (len(lengths), K, 3) and batch[OBS].dtype == np.float32
        assert batch[ACTIONS].dtype == (np.int64 if discrete else np.float32)
        assert batch[RETURNS_TO_GO].dtype == np.float32
        assert batch[TIMESTEPS].dtype == np.int64
        for row, history in enumerate(envs.history):
            expected = reference_context(**history, target=30.0, discrete=discrete)
            for column, values in expected.items():
                np.testing.assert_allclose(
                    batch[column][row], values, rtol=1e-5, atol=1e-5, err_msg=f"{column} @ {step}"
                )
            assert episode_return_so_far(envs.episodes[row]) == pytest.approx(
                sum(history["rewards"])
            )
        envs.step()
        if cut_every and step % cut_every == cut_every - 1:
            envs.cut(lookback=K - 1)


def test_target_applies_to_new_episodes_only():
    connector = make_connector(discrete=False, target=30.0)
    envs = SteppedEnvs([6], discrete=False, seed=1)
    run_connector(connector, envs.episodes)
    connector.target_return = 50.0
    envs.step()
    old = run_connector(connector, envs.episodes)
    assert old[RETURNS_TO_GO][0, -1] == pytest.approx(
        (30.0 - sum(envs.history[0]["rewards"])) / RTG_SCALE, rel=1e-5
    )
    fresh = SteppedEnvs([6], discrete=False, seed=2)
    new = run_connector(connector, fresh.episodes)
    assert new[RETURNS_TO_GO][0, -1] == pytest.approx(5.0)


def test_too_short_lookback_fails_loudly():
    envs = SteppedEnvs([20], discrete=False, seed=3)
    connector = make_connector(discrete=False, target=1.0)
    for _ in range(8):
        run_connector(connector, envs.episodes)
        envs.step()
    envs.cut(lookback=2)
    envs.step()
    with pytest.raises(ValueError, match="episode_lookback_horizon"):
        run_connector(connector, envs.episodes)


@pytest.mark.parametrize("discrete", [False, True])
def test_context_buffer_matches_reference_as_rows_step_and_restart(discrete: bool):
    # Per row, episodes of these lengths one after another (shorter/longer than K, past
    # max_ep_len); a row whose episode ends restarts at once, as in evaluation, or drops out.
    queues = [[2, 6, 1], [K], [K + 1, 3], [11], [17]]
    num_episodes = sum(map(len, queues))
    rng = np.random.default_rng(11)
    buffer = ContextBuffer(
        len(queues),
        OBS_SPACE,
        DISCRETE_ACTIONS if discrete else BOX_ACTIONS,
        context_len=K,
        rtg_scale=RTG_SCALE,
        max_ep_len=MAX_EP_LEN,
    )
    running: dict[int, dict] = {}

    def start(row: int) -> None:
        if not queues[row]:
            running.pop(row, None)
            return
        history = {"obs": [rng.normal(size=3).astype(np.float32)], "actions": [], "rewards": []}
        running[row] = {"length": queues[row].pop(0), "target": rng.normal(20.0, 5.0), **history}
        buffer.start(row, history["obs"][0], running[row]["target"])

    for row in range(len(queues)):
        start(row)
    episodes_seen = 0
    while running:
        rows = np.array(sorted(running))
        batch = buffer.batch(rows)
        for position, row in enumerate(rows):
            episode = running[row]
            expected = reference_context(
                episode["obs"],
                episode["actions"],
                episode["rewards"],
                target=episode["target"],
                discrete=discrete,
            )
            for column, values in expected.items():
                assert batch[column].dtype == buffer.columns[column].dtype
                np.testing.assert_allclose(
                    batch[column][position], values, rtol=1e-6, err_msg=f"{column} row {row}"
                )
        if discrete:
            actions = rng.integers(4, size=len(rows))
        else:
            actions = rng.uniform(-1, 1, size=(len(rows), 2)).astype(np.float32)
        rewards = rng.normal(size=len(rows))
        observations = rng.normal(size=(len(rows), 3)).astype(np.float32)
        buffer.step(rows, actions, rewards, observations)
        for position, row in enumerate(rows):
            episode = running[row]
            episode["actions"].append(actions[position])
            episode["rewards"].append(float(rewards[position]))
            episode["obs"].append(observations[position])
            assert buffer.returns[row] == pytest.approx(sum(episode["rewards"]))
            assert buffer.lengths[row] == len(episode["rewards"])
            if len(episode["rewards"]) == episode["length"]:
                episodes_seen += 1
                start(row)
    assert episodes_seen == num_episodes
