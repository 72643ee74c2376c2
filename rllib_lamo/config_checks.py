"""Checks of a LaMo config that need no Ray: kinds and ranges, the env, the LM, the dataset.

`LaMoConfig.validate()` runs them first, so that the `rllib` command (which validates every
experiment before it starts Ray) refuses a wrong setting in one line that names the setting,
what it got and what is expected, instead of a trial failing minutes later inside Ray.
Each function returns that line, or None when all is well.
"""

from __future__ import annotations

import difflib
import functools
import math
from collections.abc import Callable
from numbers import Integral, Real
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import gymnasium as gym

    from rllib_lamo.data.dataset import TrajectoryDataset
    from rllib_lamo.lamo import LaMoConfig


def _integer(value: Any) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def _number(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)


# setting -> (is the value acceptable, what is expected)
_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "lora_rank": (lambda v: _integer(v) and v >= 1, "an integer >= 1"),
    "lora_alpha": (lambda v: _number(v) and v > 0, "a number > 0"),
    "lora_dropout": (lambda v: _number(v) and 0 <= v < 1, "a number in [0, 1)"),
    "dropout": (lambda v: _number(v) and 0 <= v < 1, "a number in [0, 1)"),
    "lm_num_layers": (lambda v: v is None or (_integer(v) and v >= 1), "None or an integer >= 1"),
    "train_batch_size_per_learner": (lambda v: _integer(v) and v >= 1, "an integer >= 1"),
    "context_len": (lambda v: _integer(v) and v >= 1, "an integer >= 1"),
    "max_ep_len": (lambda v: _integer(v) and v >= 1, "an integer >= 1"),
    "rtg_scale": (lambda v: _number(v) and v > 0, "a number > 0"),
    "data_ratio": (lambda v: _number(v) and 0 < v <= 1, "a number in (0, 1]"),
    "data_subset_seed": (_integer, "an integer"),
    "validation_fraction": (lambda v: _number(v) and 0 <= v < 1, "a number in [0, 1)"),
    "validation_num_windows": (lambda v: _integer(v) and v >= 1, "an integer >= 1"),
    "language_loss_coeff": (lambda v: _number(v) and v >= 0, "a number >= 0"),
    "text_block_len": (lambda v: _integer(v) and v >= 1, "an integer >= 1"),
    "text_batch_size": (lambda v: _integer(v) and v >= 1, "an integer >= 1"),
    "warmup_steps": (lambda v: _integer(v) and v >= 0, "an integer >= 0"),
    "lr": (lambda v: _number(v) and v > 0, "a number > 0 (LaMo takes no lr schedule)"),
    "lm_lr": (lambda v: _number(v) and v > 0, "a number > 0"),
    "weight_decay": (lambda v: _number(v) and v >= 0, "a number >= 0"),
    "adam_eps": (lambda v: _number(v) and v > 0, "a number > 0"),
    "paper_score_last_n_evals": (lambda v: _integer(v) and v >= 1, "an integer >= 1"),
    "target_returns": (
        lambda v: isinstance(v, list | tuple) and len(v) > 0 and all(_number(x) for x in v),
        "a non-empty list of numbers, e.g. [3600, 1800]",
    ),
}


def setting_problem(config: LaMoConfig) -> str | None:
    """The first LaMo setting of the wrong kind or out of range."""
    for name, (acceptable, expected) in _RULES.items():
        value = getattr(config, name)
        if not acceptable(value):
            return f"`{name}` must be {expected}, got {value!r} ({type(value).__name__})."
    return None


def env_problem(env: Any) -> str | None:
    """An env id neither gymnasium nor Tune (`tune.register_env`) knows."""
    if not isinstance(env, str) or ":" in env:  # "module:Env-v0" is imported by gym.make
        return None
    import gymnasium as gym
    from ray.tune.registry import ENV_CREATOR, _global_registry

    if env in gym.registry or _global_registry.contains(ENV_CREATOR, env):
        return None
    matches = difflib.get_close_matches(env, list(gym.registry), n=3, cutoff=0.6)
    hint = f" (did you mean {' or '.join(map(repr, matches))}?)" if matches else ""
    return (
        f"`env` {env!r} is not a registered environment{hint}: expected a gymnasium id such as "
        "'Hopper-v5', or a name registered with `ray.tune.register_env`."
    )


def language_model_problem(name: Any, num_layers: int | None) -> str | None:
    """An unknown or missing language model, or `lm_num_layers` beyond its depth.

    Reads the model's config only, never its weights. Hub ids not in the local Hugging Face
    cache are left to the trial: checking them would need the network here.
    """
    from rllib_lamo.language_models import language_model_depth

    if not isinstance(name, str) or not name:
        return f"`language_model` must be a model name or path, got {name!r}."
    try:
        depth = language_model_depth(name)
    except (OSError, ValueError) as error:
        return f"`language_model` {name!r}: {_one_line(error)}"
    if depth is None or num_layers is None or num_layers <= depth:
        return None
    return (
        f"`lm_num_layers` is {num_layers}, but language model {name!r} has only {depth} "
        f"transformer blocks: expected an integer in [1, {depth}] or None (all)."
    )


def dataset_problem(dataset: TrajectoryDataset, env: Any) -> str | None:
    """A dataset without episodes, or one recorded on another env than `env`."""
    where = f"{dataset.folder}/metadata.json"
    if dataset.metadata.get("num_episodes") == 0:
        return f"{where}: num_episodes is 0: the dataset holds no episode to train on."
    if not isinstance(env, str):
        return None
    spaces = _env_spaces(env)
    if spaces is not None:
        for field, dataset_space, env_space in (
            ("observation_space", dataset.observation_space, spaces[0]),
            ("action_space", dataset.action_space, spaces[1]),
        ):
            if not same_kind_and_shape(dataset_space, env_space):
                return (
                    f"{where}: {field} is {dataset_space}, but env {env!r} has {env_space}. "
                    "Train on a dataset recorded on this env, or set `env` to the dataset's env "
                    f"({dataset.env_id!r})."
                )
    recorded, family = dataset.env_id, _env_family(env)
    if recorded and None not in (family, _env_family(recorded)) and _env_family(recorded) != family:
        return (
            f"{where}: env_id is {recorded!r}, but `env` is {env!r}: expected a dataset recorded "
            f"on {family} (any version), or set `env` to {recorded!r}."
        )
    return None


@functools.lru_cache(maxsize=16)
def _env_spaces(env: str) -> tuple[gym.Space, gym.Space] | None:
    """`env_spaces`, made once per process: `validate()` runs several times per run."""
    from rllib_lamo.data.format import env_spaces

    return env_spaces(env)


def same_kind_and_shape(first: gym.Space, second: gym.Space) -> bool:
    return type(first) is type(second) and first.shape == second.shape


def _env_family(env_id: str) -> str | None:
    """'Hopper-v5' and 'hopper-medium-v2' -> 'hopper': what must agree across versions.

    None for namespaced ids ('mujoco/hopper/medium-v0', 'ALE/Pong-v5'), whose layouts differ.
    """
    if "/" in env_id or ":" in env_id:
        return None
    return env_id.split("-", 1)[0].lower()


def _one_line(error: BaseException) -> str:
    return " ".join(line.strip() for line in str(error).splitlines() if line.strip())
