"""What an algorithm checkpoint folder holds, and how to read it back.

Written by `Algorithm.save_to_path` (or Tune): ``algorithm_state.pkl``,
``class_and_ctor_args.pkl`` (the algorithm class and its config) and
``learner_group/learner/{state.pkl, rl_module/default_policy/}`` (for LaMo, only the
trainable weights). The algorithm restores from it (`restore_offline`), the `rllib` command
evaluates it, tracking logs and renders it and the MLflow policy model wraps it.
"""

from __future__ import annotations

import pathlib
import pickle
from typing import TYPE_CHECKING, Any

from rllib_lamo.storage import absolute_location, is_uri

if TYPE_CHECKING:
    from ray.rllib.algorithms.algorithm import Algorithm
    from ray.rllib.algorithms.algorithm_config import AlgorithmConfig
    from ray.rllib.core.rl_module.rl_module import RLModule

# RLlib's component names (ray.rllib.core): spelled out so that reading a layout imports no Ray.
LEARNER_GROUP = "learner_group"
LEARNER = "learner"
RL_MODULE = "rl_module"
DEFAULT_MODULE_ID = "default_policy"
CLASS_AND_CTOR_ARGS_FILE = "class_and_ctor_args.pkl"
# What a complete checkpoint folder holds.
CHECKPOINT_FILES = (
    "algorithm_state.pkl",
    CLASS_AND_CTOR_ARGS_FILE,
    f"{LEARNER_GROUP}/{LEARNER}/state.pkl",
)


def missing_checkpoint_files(path: str | pathlib.Path) -> list[str]:
    """The `CHECKPOINT_FILES` a local folder lacks (all of them when it is no checkpoint)."""
    return [name for name in CHECKPOINT_FILES if not (pathlib.Path(path) / name).is_file()]


def check_checkpoint_folder(path: str | pathlib.Path) -> None:
    """Fails with the missing files named unless ``path`` is a complete local checkpoint."""
    missing = missing_checkpoint_files(path)
    if missing:
        raise FileNotFoundError(
            f"{path} is not a LaMo checkpoint: missing {', '.join(missing)}. Pass a "
            "checkpoint_NNNNNN folder written by `rllib train` or `algo.save_to_path()`."
        )


def has_learner_state(path: str | pathlib.Path) -> bool:
    """Whether a local folder holds a learner group (and so a policy to restore)."""
    return (pathlib.Path(path) / LEARNER_GROUP).is_dir()


def module_location(checkpoint: str | pathlib.Path, module_id: str = DEFAULT_MODULE_ID) -> str:
    """Where the policy's RLModule state lies inside a checkpoint (local path or URI)."""
    root = str(checkpoint) if is_uri(checkpoint) else str(pathlib.Path(checkpoint))
    return "/".join([root.rstrip("/"), LEARNER_GROUP, LEARNER, RL_MODULE, module_id])


def config_from_checkpoint(path: str | pathlib.Path) -> AlgorithmConfig:
    """The algorithm config a checkpoint was saved with (local path or cloud URI)."""
    import pyarrow.fs
    from ray.rllib.algorithms.algorithm_config import AlgorithmConfig

    filesystem, fs_path = pyarrow.fs.FileSystem.from_uri(absolute_location(path))
    ctor_file = pathlib.PurePosixPath(fs_path) / CLASS_AND_CTOR_ARGS_FILE
    with filesystem.open_input_stream(ctor_file.as_posix()) as stream:
        ctor_info = pickle.load(stream)
    (config_state,), _ = ctor_info["ctor_args_and_kwargs"]
    return AlgorithmConfig.from_state(config_state)


def restore_policy(checkpoint_dir: str | pathlib.Path) -> tuple[RLModule, AlgorithmConfig]:
    """The RLModule of a local checkpoint, in eval mode, and the config it was trained with."""
    from ray.rllib.core.rl_module.rl_module import RLModule

    checkpoint_dir = pathlib.Path(checkpoint_dir).resolve()
    config = config_from_checkpoint(checkpoint_dir)
    module = RLModule.from_checkpoint(module_location(checkpoint_dir))
    module.eval()
    return module, config


def restore_offline(algorithm: Algorithm, path: str | pathlib.Path, *args: Any, **kwargs: Any):
    """`restore_from_path` for an algorithm without training env runners (Ray 2.60 workaround).

    Ray 2.60's `Algorithm.restore_from_path` syncs weights to the training env runners, which
    offline algorithms do not have (`'NoneType' object has no attribute 'sync_weights'`):
    restore the components, then sync only the evaluation runners.
    """
    from ray.rllib.utils.checkpoints import Checkpointable

    Checkpointable.restore_from_path(algorithm, path, *args, **kwargs)
    if algorithm.eval_env_runner_group is not None:
        algorithm.eval_env_runner_group.sync_weights(
            from_worker_or_learner_group=algorithm.learner_group, inference_only=True
        )


class OfflineRestoreMixin:
    """Gives RLlib's own offline algorithms (BC, MARWIL, CQL, IQL) `restore_offline`."""

    def restore_from_path(self, path: str | pathlib.Path, *args: Any, **kwargs: Any) -> None:
        if self.env_runner_group is not None:
            super().restore_from_path(path, *args, **kwargs)
            return
        restore_offline(self, path, *args, **kwargs)
