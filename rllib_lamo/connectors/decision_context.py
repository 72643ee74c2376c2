"""Decision-Transformer contexts of running episodes: a rolling buffer and a connector.

At every env step the policy sees the last K steps of (return-to-go, observation, action) of
its episode, left-padded and masked exactly as the training windows (`rllib_lamo.windows`).
The return-to-go starts at the episode's target return and is decremented by every raw
reward.

`ContextBuffer` keeps those contexts for many envs stepped together (LaMo's evaluation): one
shift and one write per step for all envs, never a rebuild from the episode. The
`DecisionContext` connector builds the same contexts from RLlib's `SingleAgentEpisode`s, for
RLlib's own sampling loop; its running return lives in `episode.custom_data`, so it stays
exact when RLlib cuts a long episode into chunks that keep only `episode_lookback_horizon`
steps of history.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import gymnasium as gym
import numpy as np
from ray.rllib.connectors.connector_v2 import ConnectorV2
from ray.rllib.core import COMPONENT_ENV_TO_MODULE_CONNECTOR
from ray.rllib.core.rl_module.rl_module import RLModule
from ray.rllib.env.single_agent_episode import SingleAgentEpisode
from ray.rllib.utils.annotations import override

from rllib_lamo.windows import (
    ACTIONS,
    ATTENTION_MASK,
    BOX_ACTION_PAD,
    DISCRETE_ACTION_PAD,
    OBS,
    OBS_PAD,
    RETURNS_TO_GO,
    RTG_PAD,
    TIMESTEPS,
)

if TYPE_CHECKING:
    from ray.rllib.env.env_runner import EnvRunner
    from ray.rllib.env.env_runner_group import EnvRunnerGroup

    from rllib_lamo.lamo import LaMoConfig

# What the connector keeps in `episode.custom_data` (copied along when RLlib cuts an episode).
TARGET_RETURN_KEY = "lamo_target_return"
RETURN_KEY = "lamo_return"  # undiscounted reward sum of the whole episode so far ...
RETURN_T_KEY = "lamo_return_t"  # ... up to this (absolute) timestep


class ContextBuffer:
    """The K-step contexts of `num_envs` episodes stepped side by side, one row per env.

    Rows hold the arrays `DecisionContext` builds (same columns, dtypes, padding and
    scaling), kept up to date incrementally: `start` fills a row for a new episode, `step`
    appends the last action and the new observation to the rows that stepped, shifting their
    window by one. Returns-to-go are the target minus the rewards so far, summed in float64
    in step order.
    """

    def __init__(
        self,
        num_envs: int,
        observation_space: gym.Space,
        action_space: gym.Space,
        *,
        context_len: int,
        rtg_scale: float,
        max_ep_len: int,
    ):
        k = context_len
        self.rtg_scale = float(rtg_scale)
        self.max_ep_len = max_ep_len
        if isinstance(action_space, gym.spaces.Discrete):
            action_shape, action_dtype, self.action_pad = (), np.int64, DISCRETE_ACTION_PAD
        else:
            action_shape, action_dtype, self.action_pad = (
                action_space.shape,
                np.float32,
                BOX_ACTION_PAD,
            )
        self.columns = {
            OBS: np.zeros((num_envs, k, *observation_space.shape), dtype=np.float32),
            ACTIONS: np.zeros((num_envs, k, *action_shape), dtype=action_dtype),
            RETURNS_TO_GO: np.zeros((num_envs, k), dtype=np.float32),
            TIMESTEPS: np.zeros((num_envs, k), dtype=np.int64),
            ATTENTION_MASK: np.zeros((num_envs, k), dtype=np.float32),
        }
        self.target_returns = np.zeros(num_envs, dtype=np.float64)
        self.returns = np.zeros(num_envs, dtype=np.float64)  # rewards so far, per row
        self.lengths = np.zeros(num_envs, dtype=np.int64)  # env steps so far, per row

    def start(self, row: int, observation: np.ndarray, target_return: float) -> None:
        """Row `row` begins a new episode at `observation`, conditioned on `target_return`."""
        pads = {OBS: OBS_PAD, ACTIONS: self.action_pad, RETURNS_TO_GO: RTG_PAD}
        for column, values in self.columns.items():
            values[row] = pads.get(column, 0)
        self.target_returns[row] = target_return
        self.returns[row] = 0.0
        self.lengths[row] = 0
        self._write_current(np.array([row]), np.asarray(observation)[None])

    def step(
        self,
        rows: np.ndarray,
        actions: np.ndarray,
        rewards: np.ndarray,
        observations: np.ndarray,
    ) -> None:
        """`rows` took `actions`, got `rewards` and now see `observations` (all row-aligned)."""
        self.columns[ACTIONS][rows, -1] = actions
        for values in self.columns.values():
            values[rows, :-1] = values[rows, 1:]
        self.returns[rows] += rewards
        self.lengths[rows] += 1
        self._write_current(rows, observations)

    def batch(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """The contexts of `rows`, ready for `forward_inference` (as tensors)."""
        if len(rows) == len(self.returns) and np.array_equal(rows, np.arange(len(rows))):
            return dict(self.columns)
        return {column: values[rows] for column, values in self.columns.items()}

    def _write_current(self, rows: np.ndarray, observations: np.ndarray) -> None:
        """The current step (last position) of `rows`; its action is still unknown."""
        columns = self.columns
        columns[OBS][rows, -1] = observations
        columns[ACTIONS][rows, -1] = self.action_pad
        rtg = (self.target_returns[rows] - self.returns[rows]) / self.rtg_scale
        columns[RETURNS_TO_GO][rows, -1] = rtg
        columns[TIMESTEPS][rows, -1] = np.minimum(self.lengths[rows], self.max_ep_len - 1)
        columns[ATTENTION_MASK][rows, -1] = 1.0


class DecisionContext(ConnectorV2):
    """Builds the K-step context batch that `LaMoTorchRLModule.forward_inference` consumes.

    Per episode (one row per vectorised env, current step last, left padding):
    ``obs`` [K, *obs_shape] raw observations (padding 0), ``actions`` [K, *act_shape] float32
    (Box, padding -10) or [K] int64 (Discrete, padding 0) with the unknown current action as
    padding, ``returns_to_go`` [K] divided by `rtg_scale` (padding 0), ``timesteps`` [K]
    absolute step indices clipped to ``max_ep_len - 1`` (padding 0) and ``attention_mask``
    [K] (1 real, 0 padding).

    It adds one item per episode and column; RLlib's default `BatchIndividualItems` and
    `NumpyToTensor` pieces after it stack the rows and move them to the module's device.
    The target return is read when an episode starts: changing `target_return` affects new
    episodes only. Needs ``episode_lookback_horizon >= context_len - 1`` for chunked episodes.
    """

    def __init__(
        self,
        input_observation_space: gym.Space | None = None,
        input_action_space: gym.Space | None = None,
        *,
        context_len: int,
        rtg_scale: float,
        max_ep_len: int,
        target_return: float,
        **kwargs: Any,
    ):
        """Initialises the piece; the connector pipeline sets the input spaces.

        Args:
            context_len: K, the number of steps in a context.
            rtg_scale: Returns-to-go are divided by this before they reach the module.
            max_ep_len: Size of the module's timestep embedding (timesteps are clipped to it).
            target_return: Return-to-go of new episodes, in raw (unscaled) return units.
        """
        super().__init__(input_observation_space, input_action_space, **kwargs)
        if context_len < 1 or max_ep_len < 1 or rtg_scale <= 0:
            raise ValueError("`context_len`, `max_ep_len` and `rtg_scale` must be positive.")
        self.context_len = context_len
        self.rtg_scale = float(rtg_scale)
        self.max_ep_len = max_ep_len
        self.target_return = float(target_return)

    @override(ConnectorV2)
    def __call__(
        self,
        *,
        rl_module: RLModule,
        batch: dict[str, Any],
        episodes: list[SingleAgentEpisode],
        explore: bool | None = None,
        shared_data: dict | None = None,
        **kwargs: Any,
    ) -> Any:
        for episode in episodes:
            if TARGET_RETURN_KEY not in episode.custom_data:
                episode.custom_data.update(
                    {
                        TARGET_RETURN_KEY: self.target_return,
                        RETURN_KEY: 0.0,
                        RETURN_T_KEY: 0,
                    }
                )
            for column, item in self._context(episode).items():
                self.add_batch_item(batch, column, item, single_agent_episode=episode)
        return batch

    def _context(self, episode: SingleAgentEpisode) -> dict[str, np.ndarray]:
        """The padded K-step context of one episode, ending at its current observation."""
        k = self.context_len
        t = episode.t  # absolute index of the current observation
        num_real = min(k, t + 1)
        _require_history(episode, num_real - 1)
        episode_return = episode_return_so_far(episode)

        obs = np.asarray(episode.get_observations(slice(-num_real, None)), dtype=np.float32)
        obs_context = np.full((k, *obs.shape[1:]), OBS_PAD, dtype=np.float32)
        obs_context[k - num_real :] = obs

        if isinstance(self.input_action_space, gym.spaces.Discrete):
            action_context = np.full(k, DISCRETE_ACTION_PAD, dtype=np.int64)
        else:
            action_shape = self.input_action_space.shape
            action_context = np.full((k, *action_shape), BOX_ACTION_PAD, dtype=np.float32)

        # Return-to-go at each real step: what is left of the target after the rewards before
        # it, i.e. the current one plus the rewards between that step and now.
        rtg_now = episode.custom_data[TARGET_RETURN_KEY] - episode_return
        rtg = np.full(num_real, rtg_now, dtype=np.float64)
        if num_real > 1:
            past = slice(-(num_real - 1), None)
            action_context[k - num_real : k - 1] = np.asarray(episode.get_actions(past))
            rewards = np.asarray(episode.get_rewards(past), dtype=np.float64)
            rtg[:-1] += np.cumsum(rewards[::-1])[::-1]
        rtg_context = np.full(k, RTG_PAD, dtype=np.float32)
        rtg_context[k - num_real :] = rtg / self.rtg_scale

        timesteps = np.zeros(k, dtype=np.int64)
        timesteps[k - num_real :] = np.minimum(
            np.arange(t - num_real + 1, t + 1), self.max_ep_len - 1
        )
        mask = np.zeros(k, dtype=np.float32)
        mask[k - num_real :] = 1.0
        return {
            OBS: obs_context,
            ACTIONS: action_context,
            RETURNS_TO_GO: rtg_context,
            TIMESTEPS: timesteps,
            ATTENTION_MASK: mask,
        }


def _require_history(episode: SingleAgentEpisode, num_steps: int) -> None:
    """Fails loudly where a cut episode kept fewer past steps than the context needs."""
    available = episode.rewards.len_incl_lookback()
    if num_steps > available:
        raise ValueError(
            f"Episode {episode.id_} at step {episode.t} keeps only {available} past steps but "
            f"{num_steps} are needed: set `config.env_runners(episode_lookback_horizon=...)` "
            "to at least `context_len - 1`."
        )


def episode_return_so_far(episode: SingleAgentEpisode) -> float:
    """Undiscounted return of the whole episode up to now, across all of its chunks.

    Only valid for episodes the `DecisionContext` has seen from their first step: it adds the
    rewards since its last visit to the total kept in `episode.custom_data`.
    """
    data = episode.custom_data
    new_steps = episode.t - data[RETURN_T_KEY]
    if new_steps > 0:
        _require_history(episode, new_steps)
        data[RETURN_KEY] += float(np.sum(episode.get_rewards(slice(-new_steps, None))))
        data[RETURN_T_KEY] = episode.t
    return data[RETURN_KEY]


def decision_context_connector(config: LaMoConfig) -> DecisionContext:
    """The connector piece for `config`; starts at its first target return."""
    return DecisionContext(
        context_len=config.context_len,
        rtg_scale=config.rtg_scale,
        max_ep_len=config.max_ep_len,
        target_return=config.target_returns[0],
    )


def decision_context_of(env_runner: EnvRunner) -> DecisionContext:
    """The `DecisionContext` inside an env runner's env-to-module pipeline."""
    components = dict(env_runner.get_checkpointable_components())
    pieces = components[COMPONENT_ENV_TO_MODULE_CONNECTOR][DecisionContext]
    if len(pieces) != 1:
        raise ValueError(
            f"Expected one DecisionContext in the env-to-module pipeline, found {len(pieces)}; "
            "is the env runner built from a LaMoConfig?"
        )
    return pieces[0]


def set_target_return(env_runner_group: EnvRunnerGroup, target_return: float) -> None:
    """Sets the target return of new episodes on every env runner of the group."""

    def assign(env_runner: EnvRunner) -> None:
        decision_context_of(env_runner).target_return = float(target_return)

    env_runner_group.foreach_env_runner(assign, local_env_runner=True)
