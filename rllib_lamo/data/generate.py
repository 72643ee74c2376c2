"""Behaviour datasets for gymnasium's MuJoCo v5 tasks and LaMo's Reacher2d, as D4RL made them.

D4RL's v2 MuJoCo datasets were recorded on the retired mujoco-py v2 envs; on gymnasium's v5 envs
they are neither loadable nor exactly comparable, so we regenerate them (and Reacher2d's, which
the paper also recorded with a PPO policy):

* ``medium``: a policy trained until its evaluated return reaches ~1/3 of D4RL's expert score,
  then rolled out for ``num_steps`` steps;
* ``medium-replay``: every complete episode the training run of that policy collected;
* ``expert``: the best policy of a longer training run, rolled out;
* ``medium-expert``: medium rollouts followed by expert rollouts (twice the steps).

Trained policies are cached (``--cache-dir``) so ``medium-expert`` or a second ``medium`` run reuse
them; training and rollouts are seeded and single-threaded, so the same command on the same
machine and library versions writes the same episodes.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from rllib_lamo.data.names import TASK_ENVS, dataset_name, default_num_steps, kinds_of
from rllib_lamo.data.writer import EpisodeDatasetWriter, copy_episodes
from rllib_lamo.scores import reference_scores
from rllib_lamo.storage import cache_dir as default_cache_dir

DEFAULT_CACHE_DIR = default_cache_dir()

# Mean return of uniform random actions: measure_random_return(env_id), 100 episodes from reset
# seed 123, measured on this project's machine (gymnasium 1.2.2, mujoco 4.0.0).
V5_RANDOM_RETURNS: dict[str, float] = {
    "Hopper-v5": 17.50,
    "Walker2d-v5": 1.44,
    "HalfCheetah-v5": -303.17,
    "Reacher2d-v0": 0.26,
}
# Mean return of our own expert datasets (`lamo-data generate TASK --kind expert`, seed 0, 1M
# steps), measured on this project's machine; tasks whose expert was not generated are absent.
V5_EXPERT_RETURNS: dict[str, float] = {
    "Hopper-v5": 3249.54,
    "Reacher2d-v0": 64.50,
}


@dataclass(frozen=True)
class TaskRecipe:
    """How to train behaviour policies for one task; values chosen and measured on 2 CPU cores."""

    env_id: str
    algorithm: str
    hyperparameters: dict[str, Any]
    medium_fraction: float = 1.0 / 3.0
    medium_max_steps: int = 1_000_000
    expert_train_steps: int = 1_000_000
    eval_every: int = 8192
    eval_episodes: int = 10
    # Levels recorded with the deterministic policy (their evaluation also picks the checkpoint);
    # the others are recorded stochastically, as D4RL recorded its SAC policies.
    deterministic_levels: tuple[str, ...] = ()
    # Training envs stepped together: more of them spread the agent's per-step overhead.
    num_envs: int = 1
    # Options of the env the agent trains on (e.g. a shaped reward); evaluations, which pick and
    # stop policies, and recorded datasets always use the task's own env.
    train_env_kwargs: dict[str, Any] = field(default_factory=dict)
    # The info key holding the task's own reward when the training env's reward differs from
    # it: the medium-replay set records that one.
    task_reward_info_key: str | None = None

    def rollout_mode(self, level: str) -> str:
        return "deterministic" if level in self.deterministic_levels else "stochastic"


TASKS: dict[str, TaskRecipe] = {
    # PPO's stochastic policy keeps a state-independent std: fine for medium data, but a noisy
    # expert (measured on Hopper: stochastic 1800 vs deterministic 3160 for the same policy), so
    # PPO experts are recorded (and chosen) deterministically.
    "hopper": TaskRecipe(
        env_id=TASK_ENVS["hopper"],
        algorithm="PPO",
        hyperparameters={"policy_kwargs": {"log_std_init": -1.0}},
        deterministic_levels=("expert",),
    ),
    "walker2d": TaskRecipe(
        env_id=TASK_ENVS["walker2d"],
        algorithm="PPO",
        hyperparameters={"policy_kwargs": {"log_std_init": -1.0}},
        expert_train_steps=2_000_000,
        deterministic_levels=("expert",),
    ),
    # PPO plateaus far below 1/3 of expert on HalfCheetah (a known SB3 benchmark result); SAC,
    # D4RL's own agent, gets there, at ~10x PPO's cost per step on CPU.
    "halfcheetah": TaskRecipe(
        env_id=TASK_ENVS["halfcheetah"],
        algorithm="SAC",
        hyperparameters={},
        medium_max_steps=400_000,
        expert_train_steps=1_000_000,
        eval_every=10_000,
    ),
    # Reacher2d's reward is sparse (1 on the target, else 0): PPO trains on the dense option
    # (minus the L1 distance added), while evaluations and every recorded set use the sparse
    # reward. "Medium" is 1/3 of the paper's expert reference (100), as for the MuJoCo tasks.
    # 8 envs x 256 steps per update (the same 2048 as one env's default) and gamma 0.95 for
    # 100-step episodes; one env with gamma 0.99 still returned 0 after 82k steps here, 8 envs
    # also ran more steps/s (datasets/README.md).
    "reacher2d": TaskRecipe(
        env_id=TASK_ENVS["reacher2d"],
        algorithm="PPO",
        hyperparameters={
            "policy_kwargs": {"log_std_init": -1.0},
            "n_steps": 256,
            "batch_size": 64,
            "gamma": 0.95,
        },
        num_envs=8,
        medium_max_steps=400_000,
        expert_train_steps=600_000,
        eval_episodes=20,
        deterministic_levels=("expert",),
        train_env_kwargs={"reward_type": "dense"},
        task_reward_info_key="sparse_reward",
    ),
}


# --------------------------------------------------------------------------------- progress
class Progress:
    """A tqdm bar on a terminal, plain periodic lines otherwise (logs, CI)."""

    def __init__(self, total: int, description: str, enabled: bool = True):
        from tqdm import tqdm

        self._bar = tqdm(
            total=total,
            desc=description,
            unit="step",
            unit_scale=True,
            disable=not enabled,
            mininterval=1.0 if os.isatty(2) else 15.0,
            dynamic_ncols=True,
        )

    def update(self, steps: int) -> None:
        self._bar.update(steps)

    def note(self, text: str) -> None:
        self._bar.set_postfix_str(text, refresh=False)

    def close(self) -> None:
        self._bar.close()


# ------------------------------------------------------------------------ episode assembly
class _EpisodeAssembler:
    """Per-env step buffers for a vector of envs; yields whole episodes as envs finish.

    Stores one vectorised row per env step (no per-env Python work except at episode ends).
    """

    def __init__(self, num_envs: int, obs_dim: int, action_shape: tuple[int, ...], max_len: int):
        self._obs = np.zeros((num_envs, max_len, obs_dim), np.float32)
        self._actions = np.zeros((num_envs, max_len, *action_shape), np.float32)
        self._rewards = np.zeros((num_envs, max_len), np.float32)
        self._t = np.zeros(num_envs, np.int64)
        self._envs = np.arange(num_envs)

    def record(self, obs: np.ndarray, actions: np.ndarray, rewards: np.ndarray) -> None:
        if self._t.max() >= self._obs.shape[1]:
            self._grow()
        self._obs[self._envs, self._t] = obs
        self._actions[self._envs, self._t] = actions
        self._rewards[self._envs, self._t] = rewards
        self._t += 1

    def finish(
        self, done: np.ndarray, terminated: np.ndarray
    ) -> Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray, bool]]:
        """(env index, obs, actions, rewards, terminated) for each env whose episode ended."""
        for env in np.flatnonzero(done):
            length = self._t[env]
            yield (
                int(env),
                self._obs[env, :length].copy(),
                self._actions[env, :length].copy(),
                self._rewards[env, :length].copy(),
                bool(terminated[env]),
            )
            self._t[env] = 0

    def _grow(self) -> None:
        self._obs = np.concatenate([self._obs, np.zeros_like(self._obs)], axis=1)
        self._actions = np.concatenate([self._actions, np.zeros_like(self._actions)], axis=1)
        self._rewards = np.concatenate([self._rewards, np.zeros_like(self._rewards)], axis=1)


def _make_vector_env(env_id: str, num_envs: int) -> gym.vector.SyncVectorEnv:
    # SAME_STEP autoreset: every step returned is a real transition, so no masking of the
    # dummy step NEXT_STEP inserts after each episode end.
    return gym.vector.SyncVectorEnv(
        [partial(gym.make, env_id) for _ in range(num_envs)],
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
    )


def run_policy_episodes(
    act: Callable[[np.ndarray], np.ndarray],
    env_id: str,
    *,
    num_envs: int,
    seed: int,
    keep_starting: Callable[[], bool],
    on_episode: Callable[[np.ndarray, np.ndarray, np.ndarray, bool], None],
    on_steps: Callable[[int], None] | None = None,
) -> None:
    """Step ``num_envs`` envs with ``act`` until no kept episode is still running.

    An episode is kept when ``keep_starting()`` was true at its start; waiting for the kept ones
    to finish (instead of cutting at a step budget) avoids biasing datasets to short episodes.
    """
    envs = _make_vector_env(env_id, num_envs)
    space = envs.single_action_space
    assembler = _EpisodeAssembler(
        num_envs,
        int(np.prod(envs.single_observation_space.shape)),
        space.shape,
        gym.spec(env_id).max_episode_steps or 1000,
    )
    obs, _ = envs.reset(seed=seed)
    kept = np.ones(num_envs, dtype=bool)
    try:
        while kept.any():
            actions = np.clip(act(obs), space.low, space.high).astype(np.float32)
            next_obs, rewards, terminated, truncated, _ = envs.step(actions)
            assembler.record(obs.reshape(num_envs, -1), actions, rewards)
            for env, ep_obs, ep_actions, ep_rewards, ep_terminated in assembler.finish(
                terminated | truncated, terminated
            ):
                if kept[env]:
                    on_episode(ep_obs, ep_actions, ep_rewards, ep_terminated)
                kept[env] = keep_starting()
            if on_steps is not None:
                on_steps(int(kept.sum()))
            obs = next_obs
    finally:
        envs.close()


def evaluate_policy(
    model: Any, env_id: str, *, episodes: int, seed: int, deterministic: bool
) -> dict[str, float]:
    """Mean/std return of ``episodes`` episodes, one per env, from seeds seed..seed+episodes-1."""
    returns: list[float] = []
    run_policy_episodes(
        lambda obs: model.predict(obs, deterministic=deterministic)[0],
        env_id,
        num_envs=episodes,
        seed=seed,
        keep_starting=lambda: False,
        on_episode=lambda _o, _a, rewards, _t: returns.append(float(rewards.sum(dtype=np.float64))),
    )
    values = np.array(returns)
    return {
        "mean": float(values.mean()),
        "std": float(values.std()),
        "episodes": len(values),
        "deterministic": deterministic,
    }


# ------------------------------------------------------------------------------- training
@dataclass
class PolicyRecord:
    """What metadata.json says about a behaviour policy (``policy`` key)."""

    algorithm: str
    library: str
    hyperparameters: dict[str, Any]
    level: str
    train_steps: int
    train_seconds: float
    evaluated_return: dict[str, Any]
    stochastic_return: dict[str, Any]
    deterministic_return: dict[str, Any]
    rollouts: str
    target_return: float | None
    seed: int
    evaluations: list[dict[str, Any]] = field(default_factory=list)
    train_env_kwargs: dict[str, Any] = field(default_factory=dict)  # e.g. a shaped reward


def _new_model(recipe: TaskRecipe, seed: int) -> Any:
    import stable_baselines3 as sb3
    from stable_baselines3.common.env_util import make_vec_env

    algorithm = getattr(sb3, recipe.algorithm)
    env = make_vec_env(
        recipe.env_id, n_envs=recipe.num_envs, seed=seed, env_kwargs=recipe.train_env_kwargs
    )
    return algorithm("MlpPolicy", env, seed=seed, device="cpu", verbose=0, **recipe.hyperparameters)


def _evaluate_both(model: Any, recipe: TaskRecipe, seed: int) -> dict[str, dict[str, Any]]:
    """Stochastic and deterministic returns on the same evaluation seeds."""
    return {
        mode: evaluate_policy(
            model,
            recipe.env_id,
            episodes=recipe.eval_episodes,
            seed=seed + 10_000,
            deterministic=mode == "deterministic",
        )
        for mode in ("stochastic", "deterministic")
    }


def _make_callback(
    recipe: TaskRecipe,
    seed: int,
    *,
    recorded_mode: str,
    stop_at_return: float | None,
    save_best_to: Path | None,
    replay_writer: EpisodeDatasetWriter | None,
    progress: Progress,
) -> Any:
    from stable_baselines3.common.callbacks import BaseCallback

    class TrainingCallback(BaseCallback):
        """Evaluates periodically, keeps the best policy, stops at a target, records training."""

        def __init__(self) -> None:
            super().__init__()
            self.evaluations: list[dict[str, Any]] = []
            self.best: dict[str, Any] | None = None
            self._next_eval = recipe.eval_every
            self._assembler: _EpisodeAssembler | None = None

        def _on_training_start(self) -> None:
            env = self.training_env
            self._assembler = _EpisodeAssembler(
                env.num_envs,
                int(np.prod(env.observation_space.shape)),
                env.action_space.shape,
                1000,
            )

        def _on_step(self) -> bool:
            progress.update(self.training_env.num_envs)
            if replay_writer is not None:
                self._record_transition()
            if self.num_timesteps < self._next_eval:
                return True
            self._next_eval += recipe.eval_every
            latest = self.evaluate()
            return stop_at_return is None or latest[recorded_mode]["mean"] < stop_at_return

        def _record_transition(self) -> None:
            # SB3 adds a bootstrap value to truncated rewards right after this callback: copy.
            actions = self.locals.get("clipped_actions", self.locals["actions"])
            infos = self.locals["infos"]
            key = recipe.task_reward_info_key
            step_rewards = (
                np.array([info[key] for info in infos])
                if key is not None
                else np.array(self.locals["rewards"])
            )
            self._assembler.record(np.asarray(self.model._last_obs), actions, step_rewards)
            dones = np.asarray(self.locals["dones"], dtype=bool)
            truncated = np.array([info.get("TimeLimit.truncated", False) for info in infos])
            for _env, obs, ep_actions, rewards, terminated in self._assembler.finish(
                dones, dones & ~truncated
            ):
                replay_writer.add_episode(obs, ep_actions, rewards, terminated)

        def evaluate(self) -> dict[str, Any]:
            results = _evaluate_both(self.model, recipe, seed)
            entry = {"train_steps": int(self.num_timesteps), **results}
            self.evaluations.append(entry)
            progress.note(
                f"return {results['stochastic']['mean']:.0f} "
                f"(deterministic {results['deterministic']['mean']:.0f})"
            )
            if (
                self.best is None
                or results[recorded_mode]["mean"] > (self.best[recorded_mode]["mean"])
            ):
                self.best = entry
                if save_best_to is not None:
                    self.model.save(save_best_to)
            return entry

    return TrainingCallback()


def _cache_paths(cache_dir: Path, task: str, level: str, seed: int) -> tuple[Path, Path, Path]:
    """(policy zip, policy record json, medium-replay dataset) in the cache."""
    folder = cache_dir / f"{task}-seed{seed}"
    return folder / f"{level}-policy.zip", folder / f"{level}-policy.json", folder / "replay"


def train_policy(
    task: str, level: str, *, seed: int, cache_dir: Path, show_progress: bool = True
) -> tuple[Any, PolicyRecord]:
    """Train (or load from the cache) the ``medium`` or ``expert`` behaviour policy.

    ``medium`` stops at the first evaluation reaching ``medium_fraction`` of D4RL's expert score
    and records every complete training episode into the cache (the medium-replay set).
    ``expert`` trains ``expert_train_steps`` and keeps the best evaluated policy.
    """
    import stable_baselines3 as sb3
    import torch
    from stable_baselines3.common.utils import set_random_seed

    recipe = TASKS[task]
    algorithm = getattr(sb3, recipe.algorithm)
    model_path, record_path, replay_path = _cache_paths(cache_dir, task, level, seed)
    cached = model_path.exists() and record_path.exists()
    if cached and (level != "medium" or replay_path.exists()):
        record = PolicyRecord(**json.loads(record_path.read_text()))
        return algorithm.load(model_path, device="cpu"), record

    torch.set_num_threads(1)  # reproducible on CPU, and polite on a shared machine
    set_random_seed(seed)
    model_path.parent.mkdir(parents=True, exist_ok=True)
    refs = reference_scores(recipe.env_id)
    target = recipe.medium_fraction * refs.expert if level == "medium" and refs else None
    budget = recipe.medium_max_steps if level == "medium" else recipe.expert_train_steps
    goal = f"until return >= {target:.0f}, at most" if target else "keeping the best of"
    print(
        f"no cached {level} policy for {task} (seed {seed}) in {model_path.parent}: training "
        f"{recipe.algorithm} on {recipe.env_id} {goal} {budget} steps (see datasets/README.md "
        "for measured times)",
        file=sys.stderr,
    )
    model = _new_model(recipe, seed)
    progress = Progress(budget, f"train {task} {level} {recipe.algorithm}", show_progress)
    replay_writer = None
    if level == "medium":
        replay_source = {
            "generator": "rllib_lamo.data.generate",
            "task": task,
            "kind": "medium-replay",
            "seed": seed,
            "note": "every complete episode of the medium policy's training run",
        }
        replay_writer = _dataset_writer(
            replay_path,
            task,
            seed,
            source=replay_source,
            overwrite=True,
            name=f"{task}-medium-replay-s{seed}",
        )
    recorded_mode = recipe.rollout_mode(level)
    callback = _make_callback(
        recipe,
        seed,
        recorded_mode=recorded_mode,
        stop_at_return=target,
        save_best_to=model_path if level == "expert" else None,
        replay_writer=replay_writer,
        progress=progress,
    )
    started = time.perf_counter()
    try:
        model.learn(budget, callback=callback)
    except BaseException:
        if replay_writer is not None:
            replay_writer.abort()
        raise
    finally:
        progress.close()
    seconds = time.perf_counter() - started
    if level == "medium":
        chosen = callback.evaluations[-1] if callback.evaluations else None
        if chosen is None or chosen["train_steps"] != model.num_timesteps:
            chosen = callback.evaluate()  # budget ran out between evaluations: judge the last
        if target is not None and chosen[recorded_mode]["mean"] < target:
            print(
                f"warning: {task} medium policy reached {chosen[recorded_mode]['mean']:.0f}, "
                f"below the target {target:.0f}, within {budget} steps",
                file=sys.stderr,
            )
        model.save(model_path)
    else:
        if callback.best is None:
            callback.evaluate()  # the budget was shorter than one evaluation interval
        chosen = callback.best
        model = algorithm.load(model_path, device="cpu")
    record = PolicyRecord(
        algorithm=recipe.algorithm,
        library=f"stable-baselines3 {sb3.__version__}",
        hyperparameters=recipe.hyperparameters,
        level=level,
        train_steps=chosen["train_steps"],
        train_seconds=round(seconds, 1),
        evaluated_return=chosen[recorded_mode],
        stochastic_return=chosen["stochastic"],
        deterministic_return=chosen["deterministic"],
        rollouts=recorded_mode,
        target_return=target,
        seed=seed,
        evaluations=callback.evaluations,
        train_env_kwargs=recipe.train_env_kwargs,
    )
    if replay_writer is not None:
        replay_writer.policy = asdict(record)
        replay_writer.close()
    record_path.write_text(json.dumps(asdict(record), indent=1))
    return model, record


# -------------------------------------------------------------------------------- datasets
def _dataset_writer(
    out: Path,
    task: str,
    seed: int,
    *,
    source: dict[str, Any],
    overwrite: bool = False,
    policy: dict[str, Any] | None = None,
    name: str | None = None,
) -> EpisodeDatasetWriter:
    recipe = TASKS[task]
    env = gym.make(recipe.env_id)
    try:
        return EpisodeDatasetWriter(
            out,
            observation_space=env.observation_space,
            action_space=env.action_space,
            env_id=recipe.env_id,
            name=name or out.name,
            source=source,
            policy=policy,
            seed=seed,
            v5_random_score=V5_RANDOM_RETURNS.get(recipe.env_id),
            v5_expert_score=V5_EXPERT_RETURNS.get(recipe.env_id),
            overwrite=overwrite,
        )
    finally:
        env.close()


# Each policy's rollouts have their own seeds, so medium-expert is exactly medium + expert.
_ROLLOUT_SEED_OFFSET = {"medium": 1000, "expert": 2000}


def record_rollouts(
    model: Any,
    writer: EpisodeDatasetWriter,
    *,
    env_id: str,
    num_steps: int,
    seed: int,
    deterministic: bool,
    id_prefix: str,
    num_envs: int = 16,
    show_progress: bool = True,
) -> None:
    """Roll ``model`` out until ``num_steps`` steps of whole episodes are in ``writer``."""
    import torch
    from stable_baselines3.common.utils import set_random_seed

    torch.set_num_threads(1)
    set_random_seed(seed)
    start_steps = writer.num_steps
    progress = Progress(num_steps, f"record {id_prefix}", show_progress)
    episode_index = {"count": 0}

    def keep_starting() -> bool:
        # Depends only on finished episodes, never on the length of the one being started, so
        # the overshoot (< num_envs episodes) does not bias the set towards short episodes.
        return writer.num_steps - start_steps < num_steps

    def on_episode(obs: np.ndarray, actions: np.ndarray, rewards: np.ndarray, term: bool) -> None:
        writer.add_episode(
            obs, actions, rewards, term, eps_id=f"{id_prefix}-{episode_index['count']:06d}"
        )
        episode_index["count"] += 1
        progress.update(len(rewards))

    # Fewer envs than 16 when the budget is a handful of episodes: each env runs at least one.
    max_len = gym.spec(env_id).max_episode_steps or 1000
    run_policy_episodes(
        lambda obs: model.predict(obs, deterministic=deterministic)[0],
        env_id,
        num_envs=max(1, min(num_envs, -(-num_steps // max_len))),
        seed=seed,
        keep_starting=keep_starting,
        on_episode=on_episode,
    )
    progress.close()


def generate(
    task: str,
    kind: str,
    out: str | os.PathLike | None = None,
    *,
    num_steps: int | None = None,
    seed: int = 0,
    cache_dir: str | os.PathLike = DEFAULT_CACHE_DIR,
    overwrite: bool = False,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Write one D4RL-style dataset for ``task`` (hopper, walker2d, halfcheetah, reacher2d,
    kitchen); ``num_steps`` defaults to the task's (``names.default_num_steps``)."""
    if task not in TASK_ENVS:
        raise ValueError(f"unknown task {task!r}; choose from {sorted(TASK_ENVS)}")
    if kind not in kinds_of(task):
        raise ValueError(f"unknown kind {kind!r} for task {task}; choose from {kinds_of(task)}")
    num_steps = num_steps or default_num_steps(task)
    out_path = Path(out) if out is not None else Path(dataset_name(task, kind))
    if task == "kitchen":  # scripted demonstrations, no behaviour policy to train
        from rllib_lamo.data.kitchen_demos import generate_kitchen

        progress = Progress(num_steps, f"record kitchen {kind}", show_progress)
        try:
            return generate_kitchen(
                kind,
                out_path,
                num_steps=num_steps,
                seed=seed,
                overwrite=overwrite,
                on_steps=progress.update,
            )
        finally:
            progress.close()
    recipe = TASKS[task]
    cache_dir = Path(cache_dir)
    if out_path.exists() and not overwrite:
        raise FileExistsError(f"{out_path} already exists (pass --overwrite to replace it)")
    started = time.perf_counter()
    if kind == "medium-replay":
        train_policy(task, "medium", seed=seed, cache_dir=cache_dir, show_progress=show_progress)
        replay_cache = _cache_paths(cache_dir, task, "medium", seed)[2]
        source = {
            "generator": "rllib_lamo.data.generate",
            "task": task,
            "kind": kind,
            "seed": seed,
            "replay_of": "medium policy training run",
        }
        meta = copy_episodes(
            [replay_cache],
            out_path,
            overwrite=overwrite,
            name=out_path.name,
            source=source,
            v5_random_score=V5_RANDOM_RETURNS.get(recipe.env_id),
            v5_expert_score=V5_EXPERT_RETURNS.get(recipe.env_id),
        )
        _print_done(out_path, meta, time.perf_counter() - started)
        return meta

    levels = {"medium": ["medium"], "expert": ["expert"], "medium-expert": ["medium", "expert"]}
    policies = [
        (
            level,
            *train_policy(task, level, seed=seed, cache_dir=cache_dir, show_progress=show_progress),
        )
        for level in levels[kind]
    ]
    source = {
        "generator": "rllib_lamo.data.generate",
        "task": task,
        "kind": kind,
        "num_steps_per_policy": num_steps,
        "seed": seed,
        "rollouts": {level: recipe.rollout_mode(level) for level in levels[kind]},
        "command": f"lamo-data generate {task} --kind {kind} --steps {num_steps} --seed {seed}",
    }
    policy_meta: dict[str, Any] = asdict(policies[0][2])
    if len(policies) > 1:
        policy_meta = {
            "algorithm": recipe.algorithm,
            "train_steps": None,
            "evaluated_return": None,
            "mixture": [asdict(p[2]) for p in policies],
        }
    writer = _dataset_writer(
        out_path, task, seed, source=source, policy=policy_meta, overwrite=overwrite
    )
    with writer:
        for level, model, _record in policies:
            record_rollouts(
                model,
                writer,
                env_id=recipe.env_id,
                num_steps=num_steps,
                seed=seed + _ROLLOUT_SEED_OFFSET[level],
                deterministic=recipe.rollout_mode(level) == "deterministic",
                id_prefix=f"{task}-{level}-s{seed}",
                show_progress=show_progress,
            )
        meta = writer.close()
    _print_done(out_path, meta, time.perf_counter() - started)
    return meta


def _print_done(out: Path, meta: dict[str, Any], seconds: float) -> None:
    norm = meta["normalised_return"] or {}
    print(
        f"wrote {out}: {meta['num_episodes']} episodes, {meta['num_steps']} steps, return "
        f"{meta['return']['mean']:.1f} +- {meta['return']['std']:.1f}"
        + (f" (normalised {norm['mean']:.1f})" if norm else "")
        + f" in {seconds:.0f} s"
    )


def measure_random_return(env_id: str, *, episodes: int = 100, seed: int = 123) -> float:
    """Mean return of uniformly random actions (our v5 'random' reference)."""
    rng = np.random.default_rng(seed)
    space = gym.make(env_id).action_space
    num_envs = min(episodes, 16)
    to_start = {"count": episodes - num_envs}
    returns: list[float] = []

    def keep_starting() -> bool:
        to_start["count"] -= 1
        return to_start["count"] >= 0

    run_policy_episodes(
        lambda obs: rng.uniform(space.low, space.high, size=(len(obs), *space.shape)),
        env_id,
        num_envs=num_envs,
        seed=seed,
        keep_starting=keep_starting,
        on_episode=lambda _o, _a, rewards, _t: returns.append(float(rewards.sum(dtype=np.float64))),
    )
    return float(np.mean(returns))
