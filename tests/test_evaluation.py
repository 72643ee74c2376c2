"""Multi-target evaluation on real Hopper-v5 env runners, against a hand-rolled DT loop.

The rollouts of the env runners are compared with a Decision-Transformer loop that steps its
own gymnasium env, one episode at a time, with the same per-episode seeds and the same
policy. A randomly initialised LaMo module barely reacts to the return-to-go, so those
comparisons use `ContextProbeModule`, whose action depends strongly on every context column;
the batched-vs-sequential test and the Algorithm and checkpoint test run the real LaMo module
(tiny-gpt2).
"""

from __future__ import annotations

import sys

import gymnasium as gym
import numpy as np
import pytest
import torch
from ray import cloudpickle
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.rl_module import RLModule, RLModuleSpec
from ray.rllib.core.rl_module.torch.torch_rl_module import TorchRLModule
from ray.rllib.env.env_runner_group import EnvRunnerGroup

from rllib_lamo.connectors.decision_context import (
    decision_context_of,
    set_target_return,
)
from rllib_lamo.data.format import Episode
from rllib_lamo.data.writer import write_dataset
from rllib_lamo.evaluation import (
    EpisodeTask,
    TargetRollouts,
    episode_seed,
    evaluate_checkpoint,
    evaluate_target_returns,
    run_episodes,
    run_target_returns,
    sample_categorical,
    summarise,
    target_key,
)
from rllib_lamo.lamo import LaMoConfig
from rllib_lamo.scores import reference_scores
from rllib_lamo.windows import ACTIONS, ATTENTION_MASK, OBS, RETURNS_TO_GO, TIMESTEPS

ENV_ID = "Hopper-v5"
CONTEXT_LEN = 4
RTG_SCALE = 100.0
MAX_EP_LEN = 1000
SEED = 5


class ContextProbeModule(TorchRLModule):
    """A fixed random policy whose action reacts to every column and position of the context."""

    def setup(self) -> None:
        generator = torch.Generator().manual_seed(0)
        obs_dim, action_dim = self.observation_space.shape[0], self.action_space.shape[0]
        self.obs_weight = torch.randn(obs_dim, action_dim, generator=generator) * 0.3
        self.action_weight = torch.randn(action_dim, action_dim, generator=generator) * 0.3
        self.rtg_weight = torch.randn(action_dim, generator=generator)
        self.time_weight = torch.randn(action_dim, generator=generator)

    def _forward(self, batch: dict, **kwargs) -> dict:
        mask = batch[ATTENTION_MASK]
        positions = torch.arange(1, mask.shape[1] + 1, dtype=torch.float32)
        weights = (mask * positions / mask.shape[1]).unsqueeze(-1)  # later steps weigh more
        features = (
            batch[OBS] @ self.obs_weight
            + 0.1 * batch[ACTIONS] @ self.action_weight
            + batch[RETURNS_TO_GO].unsqueeze(-1) * self.rtg_weight
            + torch.sin(0.3 * batch[TIMESTEPS].float()).unsqueeze(-1) * self.time_weight
        )
        actions = torch.tanh((weights * features).sum(dim=1))
        return {Columns.ACTIONS: actions, Columns.ACTION_DIST_INPUTS: actions}


# Env runners rebuild the probe from the config: ship its class by value, not by module name.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def lamo_config(
    *, num_env_runners: int, num_envs: int, targets: list[float], probe: bool = False
) -> LaMoConfig:
    config = (
        LaMoConfig()
        .environment(ENV_ID, normalize_actions=False, clip_actions=True)
        .training(
            language_model="tiny-gpt2",
            context_len=CONTEXT_LEN,
            rtg_scale=RTG_SCALE,
            max_ep_len=MAX_EP_LEN,
            target_returns=targets,
            train_batch_size_per_learner=8,
            language_loss_coeff=0.0,
        )
        .env_runners(num_envs_per_env_runner=num_envs, episode_lookback_horizon=CONTEXT_LEN)
        .evaluation(evaluation_num_env_runners=num_env_runners)
        .debugging(seed=SEED)
    )
    if probe:
        config.rl_module(rl_module_spec=RLModuleSpec(module_class=ContextProbeModule))
    return config


def dt_context(obs: list, actions: list, rewards: list, target: float) -> dict[str, np.ndarray]:
    """DT's evaluation context, position by position (current step last, left padding)."""
    t = len(rewards)
    context: dict[str, list] = {c: [] for c in (OBS, ACTIONS, RETURNS_TO_GO, TIMESTEPS)}
    context[ATTENTION_MASK] = []
    for step in range(t - CONTEXT_LEN + 1, t + 1):
        real = step >= 0
        context[OBS].append(obs[step] if real else np.zeros_like(obs[0]))
        context[ACTIONS].append(actions[step] if 0 <= step < t else np.full(3, -10.0))
        context[RETURNS_TO_GO].append((target - sum(rewards[:step])) / RTG_SCALE if real else 0)
        context[TIMESTEPS].append(min(step, MAX_EP_LEN - 1) if real else 0)
        context[ATTENTION_MASK].append(float(real))
    dtypes = {TIMESTEPS: np.int64}
    return {c: np.asarray(v, dtype=dtypes.get(c, np.float32)) for c, v in context.items()}


def reference_episode(module: RLModule, *, seed: int | None, target: float) -> tuple:
    """(return, length, actions) of one episode, stepped alone with its own env and seed."""
    env = gym.make(ENV_ID)
    obs, _ = env.reset(seed=seed)
    observations, actions, rewards = [obs], [], []
    done = False
    while not done:
        context = dt_context(observations, actions, rewards, target)
        batch = {column: torch.as_tensor(values)[None] for column, values in context.items()}
        action = module.forward_inference(batch)[Columns.ACTIONS][0].numpy()
        obs, reward, terminated, truncated, _ = env.step(np.clip(action, -1.0, 1.0))
        observations.append(obs)
        actions.append(action)
        rewards.append(float(reward))
        done = terminated or truncated
    return sum(rewards), len(rewards), np.asarray(actions)


def reference_episodes(
    module: RLModule, *, num_episodes: int, target: float
) -> list[tuple[float, int]]:
    """The episodes evaluation runs for one target, with the config's seed."""
    return [
        reference_episode(module, seed=episode_seed(SEED, index), target=target)[:2]
        for index in range(num_episodes)
    ]


def policy_and_group(config: LaMoConfig) -> tuple[RLModule, EnvRunnerGroup]:
    """A policy built here and evaluation env runners that carry its weights."""
    eval_config = config.get_evaluation_config_object()
    module = eval_config.get_rl_module_spec(env=gym.make(ENV_ID), inference_only=True).build()
    state = module.get_state()
    local = eval_config.num_env_runners == 0
    group = EnvRunnerGroup(config=eval_config, local_env_runner=local)
    group.foreach_env_runner(lambda runner: runner.module.set_state(state), local_env_runner=local)
    return module, group


def assert_summary_of(metrics: dict, episodes: list[tuple[float, int]]) -> None:
    returns = np.array([r for r, _ in episodes])
    assert metrics["num_episodes"] == len(episodes)
    assert metrics["return_mean"] == pytest.approx(returns.mean(), rel=1e-4)
    assert metrics["return_std"] == pytest.approx(returns.std(), rel=1e-3, abs=1e-6)
    assert metrics["episode_len_mean"] == pytest.approx(np.mean([n for _, n in episodes]))


def test_summary_layout_and_best_target():
    rollouts = [
        TargetRollouts(3600.0, returns=[1000.0, 1200.0], lengths=[300, 400]),
        TargetRollouts(1800.0, returns=[1500.0, 1700.0], lengths=[500, 600]),
    ]
    metrics = summarise(rollouts, env_id=ENV_ID)
    hopper = reference_scores(ENV_ID)
    assert metrics["target_1800"] == {
        "target_return": 1800.0,
        "return_mean": 1600.0,
        "return_std": 100.0,
        "episode_len_mean": 550.0,
        "num_episodes": 2,
        "normalised_score_mean": pytest.approx(float(hopper.normalise(1600.0))),
        "normalised_score_std": pytest.approx(100.0 * 100.0 / (hopper.expert - hopper.random)),
    }
    assert metrics["best"] == {
        "target_return": 1800.0,
        "return": 1600.0,
        "normalised_score": pytest.approx(float(hopper.normalise(1600.0))),
    }
    unscored = summarise(rollouts, env_id="CartPole-v1")
    assert "normalised_score_mean" not in unscored["target_3600"]
    assert unscored["best"] == {"target_return": 1800.0, "return": 1600.0}
    assert [target_key(t) for t in (3600.0, 0.5, -20)] == [
        "target_3600",
        "target_0.5",
        "target_-20",
    ]


class RecordedActions(gym.Wrapper):
    """Appends (reset seed, actions of that episode) to a shared log, in reset order."""

    def __init__(self, env: gym.Env, log: list):
        super().__init__(env)
        self.log = log

    def reset(self, *, seed=None, options=None):
        self.log.append((seed, []))
        self.actions = self.log[-1][1]
        return super().reset(seed=seed, options=options)

    def step(self, action):
        self.actions.append(np.array(action))
        return super().step(action)


@pytest.mark.parametrize("probe", [False, True], ids=["lamo", "probe"])
def test_batched_rollouts_match_one_at_a_time(probe: bool):
    targets = [150.0, 30.0]
    config = lamo_config(num_env_runners=0, num_envs=1, targets=targets, probe=probe)
    torch.manual_seed(0)
    module = config.get_rl_module_spec(env=gym.make(ENV_ID), inference_only=True).build()
    tasks = [EpisodeTask(t, i, episode_seed(SEED, i)) for i in range(3) for t in targets]
    runs = {}
    for num_envs in (1, 4, len(tasks)):
        log: list = []
        envs = [RecordedActions(gym.make(ENV_ID), log) for _ in range(num_envs)]
        episodes, env_steps = run_episodes(module, envs, tasks, config)
        assert len(episodes) == len(tasks) and {e.task for e in episodes} == set(tasks)
        assert env_steps == sum(e.length for e in episodes)
        # Envs take the next task as they free up: resets follow the task order.
        assert [seed for seed, _ in log] == [task.seed for task in tasks]
        runs[num_envs] = ({e.task: e for e in episodes}, log, [e.task for e in episodes])

    sequential, sequential_log, _ = runs[1]
    for num_envs in (4, len(tasks)):
        batched, log, _ = runs[num_envs]
        for task, (_, actions), (_, expected_actions) in zip(
            tasks, log, sequential_log, strict=True
        ):
            np.testing.assert_array_equal(np.asarray(actions), np.asarray(expected_actions))
            assert batched[task].episode_return == sequential[task].episode_return
            assert batched[task].length == sequential[task].length
    # The env-runner-free DT loop agrees too (first task of each target).
    for task in tasks[:2]:
        episode_return, length, actions = reference_episode(
            module, seed=task.seed, target=task.target_return
        )
        np.testing.assert_array_equal(actions, np.asarray(sequential_log[tasks.index(task)][1]))
        assert (episode_return, length) == (
            pytest.approx(sequential[task].episode_return, rel=1e-12),
            sequential[task].length,
        )
    if probe:
        # Episodes of different lengths: batched, they finish out of task order.
        assert len({e.length for e in sequential.values()}) > 1
        assert runs[len(tasks)][2] != tasks


def test_sample_categorical_inverts_the_softmax_cdf():
    logits = torch.log(torch.tensor([[0.2, 0.5, 0.3]] * 4))
    np.testing.assert_array_equal(
        sample_categorical(logits, np.array([0.0, 0.19, 0.69, 0.999999])), [0, 0, 1, 2]
    )
    draws = sample_categorical(
        logits[:1].expand(20_000, 3), np.random.default_rng(0).random(20_000)
    )
    np.testing.assert_allclose(np.bincount(draws) / 20_000, [0.2, 0.5, 0.3], atol=0.01)


def test_discrete_actions_are_sampled_per_episode_stream():
    """DT's Atari evaluation samples from the softmax; each episode draws from its own stream,
    so batching changes no action, and argmax remains an option."""
    env_id = "CartPole-v1"
    tasks = [EpisodeTask(t, i, episode_seed(SEED, i)) for i in range(3) for t in (100.0, 20.0)]

    def rollouts(num_envs: int, sample: bool) -> list:
        config = (
            lamo_config(num_env_runners=0, num_envs=num_envs, targets=[100.0, 20.0])
            .environment(env_id)
            .training(sample_discrete_actions=sample)
        )
        torch.manual_seed(0)
        module = config.get_rl_module_spec(env=gym.make(env_id), inference_only=True).build()
        log: list = []
        envs = [RecordedActions(gym.make(env_id), log) for _ in range(num_envs)]
        run_episodes(module, envs, tasks, config)
        return [np.asarray(actions) for _, actions in log]

    sampled = rollouts(1, sample=True)
    for alone, batched in zip(sampled, rollouts(len(tasks), sample=True), strict=True):
        np.testing.assert_array_equal(alone, batched)
    greedy = rollouts(1, sample=False)
    assert any(len(a) != len(b) or (a != b).any() for a, b in zip(sampled, greedy, strict=True))
    # A random-init policy is near uniform: its greedy choice is mostly one action per state
    # region, its samples take both.
    assert all(set(np.unique(actions)) == {0, 1} for actions in sampled if len(actions) > 8)


def test_remote_runners_match_reference_rollouts(ray_cluster):
    targets = [150.0, 30.0]
    config = lamo_config(num_env_runners=2, num_envs=2, targets=targets, probe=True)
    module, group = policy_and_group(config)
    try:
        metrics, env_steps, runner_metrics = run_target_returns(
            group, target_returns=targets, num_episodes=6, env_id=ENV_ID, seed=SEED
        )
        set_target_return(group, 77.0)
        on_runners = group.foreach_env_runner(
            lambda runner: decision_context_of(runner).target_return, local_env_runner=False
        )
    finally:
        group.stop()
    assert on_runners == [77.0, 77.0]

    expected = reference_episodes(module, num_episodes=6, target=targets[0])
    assert_summary_of(metrics["target_150"], expected)
    assert metrics["target_30"]["num_episodes"] == 6
    assert metrics["target_30"]["return_mean"] != metrics["target_150"]["return_mean"]
    best = max(targets, key=lambda t: metrics[target_key(t)]["return_mean"])
    assert metrics["best"]["target_return"] == best
    assert metrics["best"]["normalised_score"] == pytest.approx(
        metrics[target_key(best)]["normalised_score_mean"]
    )
    episode_steps = sum(6 * metrics[target_key(t)]["episode_len_mean"] for t in targets)
    assert env_steps == metrics["num_env_steps"] >= episode_steps
    assert len(runner_metrics) == 2


def test_local_runner_when_there_are_no_remote_ones(ray_cluster):
    config = lamo_config(num_env_runners=0, num_envs=1, targets=[100.0], probe=True)
    module, group = policy_and_group(config)
    try:
        metrics, _, _ = run_target_returns(
            group, target_returns=[100.0], num_episodes=3, env_id=ENV_ID, seed=SEED
        )
    finally:
        group.stop()
    expected = reference_episodes(module, num_episodes=3, target=100.0)
    assert_summary_of(metrics["target_100"], expected)


@pytest.fixture(scope="module")
def hopper_dataset(tmp_path_factory) -> str:
    rng = np.random.default_rng(0)
    env = gym.make(ENV_ID)
    episodes = [
        Episode(
            obs=rng.normal(1.0, 2.0, size=(n, 11)).astype(np.float32),
            actions=rng.uniform(-1, 1, size=(n, 3)).astype(np.float32),
            rewards=rng.uniform(0, 3, size=n).astype(np.float32),
            terminated=True,
            eps_id=f"episode-{i}",
        )
        for i, n in enumerate(rng.integers(10, 40, size=16))
    ]
    path = tmp_path_factory.mktemp("data") / "hopper-toy"
    write_dataset(
        path,
        episodes,
        observation_space=env.observation_space,
        action_space=env.action_space,
        env_id=ENV_ID,
    )
    return str(path)


def test_algorithm_evaluation_and_checkpoint(ray_cluster, hopper_dataset, tmp_path):
    targets = [3600.0, 1800.0]
    config = (
        lamo_config(num_env_runners=0, num_envs=1, targets=targets)
        .offline_data(input_=hopper_dataset, dataset_num_iters_per_learner=1)
        .evaluation(
            evaluation_interval=1,
            evaluation_duration=2,
            custom_evaluation_function=evaluate_target_returns,
        )
    )
    algo = config.build_algo()
    try:
        results = algo.evaluate()
        for target in targets:
            assert results[target_key(target)]["num_episodes"] == 2
        assert results["best"]["target_return"] in targets
        assert "normalised_score" in results["best"]
        assert results["env_runners"]["num_episodes"] >= 4
        policy = algo.eval_env_runner_group.local_env_runner.module
        checkpoint = algo.save_to_path(tmp_path / "checkpoint")
    finally:
        algo.stop()

    # Fresh remote env runners load the policy from the checkpoint: one episode each.
    metrics = evaluate_checkpoint(
        checkpoint, episodes=2, target_returns=[1000.0], num_env_runners=2, seed=SEED
    )
    expected = reference_episodes(policy, num_episodes=2, target=1000.0)
    assert_summary_of(metrics["target_1000"], expected)
    assert metrics["best"]["target_return"] == 1000.0


def test_results_between_evaluations_carry_the_latest_one(ray_cluster, hopper_dataset):
    config = (
        lamo_config(num_env_runners=1, num_envs=1, targets=[1000.0])
        .offline_data(input_=hopper_dataset, dataset_num_iters_per_learner=1)
        .evaluation(evaluation_interval=2, evaluation_duration=1)
    )
    algo = config.build_algo()
    try:
        results = [algo.train() for _ in range(3)]
    finally:
        algo.stop()
    assert "best" not in results[0].get("evaluation", {})
    evaluated, between = results[1]["evaluation"], results[2]["evaluation"]
    assert evaluated["evaluated_at_iteration"] == between["evaluated_at_iteration"] == 2
    assert between["best"] == evaluated["best"]
    assert between["target_1000"]["return_mean"] == evaluated["target_1000"]["return_mean"]
    assert np.isfinite(between["target_1000"]["return_mean"])
    assert between["best_so_far"]["iteration"] == 2
