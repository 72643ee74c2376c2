"""What an algorithm checkpoint folder holds, and how to read it back.

Written by `Algorithm.save_to_path` (or Tune): ``algorithm_state.pkl``,
``class_and_ctor_args.pkl`` (the algorithm class and its config) and
``learner_group/learner/{state.pkl, rl_module/default_policy/}`` (for LaMo, only the
trainable weights). The algorithm restores from it (`restore_offline`), the `rllib` command
evaluates it, tracking logs and renders it and the MLflow policy model wraps it.
"""

from __future__ import annotations

import io
import os
import pathlib
import pickle
import shutil
import tempfile
from collections.abc import Callable
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
# Classes a checkpoint may hold (exact names, or a module prefix ending in "."): LaMo and
# RLlib's own algorithms, which `rllib train` also runs. Tune pickles its subclass of the
# trainable by value (cloudpickle), so such a class is judged by its bases.
TRUSTED_ALGORITHM_CLASSES = ("rllib_lamo.lamo.LaMo", "ray.rllib.algorithms.")
LAMO_CLASS = "rllib_lamo.lamo.LaMo"
LAMO_MODULE_CLASS = "rllib_lamo.torch.lamo_torch_rl_module.LaMoTorchRLModule"
MODULE_STATE_FILE = "module_state.pkl"
# All a module's saved weights may refer to: numpy arrays (RLlib stores them as numpy).
ARRAY_GLOBALS = (
    "numpy.dtype",
    "numpy.ndarray",
    "numpy._core.numeric._frombuffer",
    "numpy.core.numeric._frombuffer",
    "numpy._core.multiarray._reconstruct",
    "numpy.core.multiarray._reconstruct",
    "numpy._core.multiarray.scalar",
    "numpy.core.multiarray.scalar",
    "collections.OrderedDict",
)
_CLOUDPICKLE_CLASS_BUILDERS = (
    "ray.cloudpickle.cloudpickle._make_skeleton_class",
    "cloudpickle.cloudpickle._make_skeleton_class",
)
# What a complete checkpoint folder holds.
CHECKPOINT_FILES = (
    "algorithm_state.pkl",
    CLASS_AND_CTOR_ARGS_FILE,
    f"{LEARNER_GROUP}/{LEARNER}/state.pkl",
)


def write_folder_atomically(path: str | pathlib.Path, write: Callable[[pathlib.Path], Any]) -> Any:
    """Runs `write` into a staging folder beside `path`, then renames it to `path`.

    A process killed or failing mid-write leaves `path` as it was (absent, or the previous
    complete checkpoint) and at most a hidden ``.<name>.partial-*`` folder; a reader never
    sees half a checkpoint. The rename is atomic on one local filesystem. Returns what
    `write` returns.
    """
    path = pathlib.Path(path).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{path.name}.partial-", dir=path.parent))
    try:
        written = write(staging)
        if path.is_dir() and any(path.iterdir()):
            # rename() cannot replace a non-empty folder: move the old one aside first.
            previous = pathlib.Path(
                tempfile.mkdtemp(prefix=f".{path.name}.previous-", dir=path.parent)
            )
            os.replace(path, previous)
            os.replace(staging, path)
            shutil.rmtree(previous, ignore_errors=True)
        else:
            os.replace(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return written


def missing_checkpoint_files(path: str | pathlib.Path) -> list[str]:
    """The `CHECKPOINT_FILES` a local folder lacks (all of them when it is no checkpoint)."""
    return [name for name in CHECKPOINT_FILES if not (pathlib.Path(path) / name).is_file()]


def check_checkpoint_folder(path: str | pathlib.Path) -> None:
    """Fails with the missing files named unless ``path`` is a complete local LaMo checkpoint.

    Also refuses, before anything is unpickled, a checkpoint whose class is not LaMo, whose
    policy module is not LaMo's, or whose module weights hold anything but numpy arrays.
    """
    missing = missing_checkpoint_files(path)
    if missing:
        raise FileNotFoundError(
            f"{path} is not a LaMo checkpoint: missing {', '.join(missing)}. Pass a "
            "checkpoint_NNNNNN folder written by `rllib train` or `algo.save_to_path()`."
        )
    class_file = pathlib.Path(path) / CLASS_AND_CTOR_ARGS_FILE
    check_checkpoint_class(class_file, class_file.read_bytes(), trusted=(LAMO_CLASS,))
    module_dir = pathlib.Path(module_location(path))
    module_class_file = module_dir / CLASS_AND_CTOR_ARGS_FILE
    if module_class_file.is_file():
        check_checkpoint_class(
            module_class_file, module_class_file.read_bytes(), trusted=(LAMO_MODULE_CLASS,)
        )
    module_state_file = module_dir / MODULE_STATE_FILE
    if module_state_file.is_file():
        check_pickle_globals(module_state_file, module_state_file.read_bytes(), ARRAY_GLOBALS)


def checkpoint_algorithm_classes(data: bytes) -> list[str]:
    """The algorithm class names a ``class_and_ctor_args.pkl`` holds, without unpickling it.

    A restricted unpickler resolves every global to an inert stand-in (importing nothing and
    running none of the pickle's calls), so a crafted file cannot run code here. A plainly
    pickled class gives its own name; a class pickled by value (Tune's wrapper) gives the
    names of its bases.
    """
    document = _NamesOnlyUnpickler(io.BytesIO(data)).load()
    found = document.get("class") if isinstance(document, dict) else None
    return _class_names(found) or [_describe(found)]


def check_checkpoint_class(
    path: str | pathlib.Path, data: bytes, trusted: tuple[str, ...] = TRUSTED_ALGORITHM_CLASSES
) -> None:
    """Refuses, before anything is unpickled, a checkpoint whose class is not one of ours.

    `path` names the ``class_and_ctor_args.pkl`` in messages; `data` is its content.
    """
    try:
        names = checkpoint_algorithm_classes(data)
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError) as error:
        raise ValueError(
            f"{path}: not a readable checkpoint class file, truncated or corrupt "
            f"({type(error).__name__}: {error})"
        ) from error
    if not any(_is_trusted(name, trusted) for name in names):
        raise ValueError(
            f"{path}: the checkpoint's algorithm class is {' / '.join(names)}; "
            f"expected {' or '.join(trusted)}. Refusing to unpickle it: checkpoints are "
            "pickles and can run code, so load only checkpoints from a trusted source."
        )


def check_pickle_globals(path: str | pathlib.Path, data: bytes, allowed: tuple[str, ...]) -> None:
    """Refuses a pickle that is truncated or refers to anything outside `allowed`.

    Reads names only (nothing imported, nothing called), so the file can then be unpickled
    knowing it can only build the allowed objects.
    """
    unpickler = _NamesOnlyUnpickler(io.BytesIO(data))
    try:
        unpickler.load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError) as error:
        raise ValueError(
            f"{path}: truncated or corrupt ({type(error).__name__}: {error})"
        ) from error
    foreign = sorted(name for name in unpickler.globals_seen if name not in allowed)
    if foreign:
        raise ValueError(
            f"{path}: refers to {', '.join(foreign)}; expected only {', '.join(allowed)}. "
            "Refusing to unpickle it: checkpoints are pickles and can run code, so load only "
            "checkpoints from a trusted source."
        )


def read_checkpoint_class_file(
    checkpoint: str | pathlib.Path, trusted: tuple[str, ...] = TRUSTED_ALGORITHM_CLASSES
) -> dict[str, Any]:
    """A checkpoint's ``class_and_ctor_args.pkl``, unpickled only once its class is checked."""
    import pyarrow.fs

    filesystem, fs_path = pyarrow.fs.FileSystem.from_uri(absolute_location(checkpoint))
    ctor_file = (pathlib.PurePosixPath(fs_path) / CLASS_AND_CTOR_ARGS_FILE).as_posix()
    where = f"{str(checkpoint).rstrip('/')}/{CLASS_AND_CTOR_ARGS_FILE}"
    try:
        with filesystem.open_input_stream(ctor_file) as stream:
            data = stream.read()
    except OSError as error:
        raise FileNotFoundError(
            f"{where}: cannot read the checkpoint's class file ({error})"
        ) from error
    check_checkpoint_class(where, data, trusted)
    try:
        return pickle.loads(data)
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError) as error:
        raise ValueError(
            f"{where}: cannot unpickle the checkpoint's class and config "
            f"({type(error).__name__}: {error})"
        ) from error


def has_learner_state(path: str | pathlib.Path) -> bool:
    """Whether a local folder holds a learner group (and so a policy to restore)."""
    return (pathlib.Path(path) / LEARNER_GROUP).is_dir()


def module_location(checkpoint: str | pathlib.Path, module_id: str = DEFAULT_MODULE_ID) -> str:
    """Where the policy's RLModule state lies inside a checkpoint (local path or URI)."""
    root = str(checkpoint) if is_uri(checkpoint) else str(pathlib.Path(checkpoint))
    return "/".join([root.rstrip("/"), LEARNER_GROUP, LEARNER, RL_MODULE, module_id])


def config_from_checkpoint(path: str | pathlib.Path) -> AlgorithmConfig:
    """The algorithm config a checkpoint was saved with (local path or cloud URI)."""
    from ray.rllib.algorithms.algorithm_config import AlgorithmConfig

    ctor_info = read_checkpoint_class_file(path, trusted=(LAMO_CLASS,))
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


class _StandIn:
    """What the names-only unpickler puts where a global or the result of a call would be."""

    global_name: str | None = None

    def __new__(cls, *args: Any, **kwargs: Any) -> _StandIn:
        return object.__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.call_args = args

    def __call__(self, *args: Any, **kwargs: Any) -> _StandIn:
        return _StandIn(*args)

    def __setstate__(*args: Any) -> None:
        """Accepts BUILD on instances and on stand-in classes alike."""

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def append(self, value: Any) -> None:
        pass

    def extend(self, values: Any) -> None:
        pass


class _NamesOnlyUnpickler(pickle.Unpickler):
    def __init__(self, file: io.BytesIO) -> None:
        super().__init__(file)
        self.globals_seen: set[str] = set()

    def find_class(self, module: str, name: str) -> type[_StandIn]:
        self.globals_seen.add(f"{module}.{name}")
        return type(name, (_StandIn,), {"global_name": f"{module}.{name}"})


def _class_names(found: Any) -> list[str]:
    """A stand-in class's own name; for a cloudpickled class, those of its bases."""
    if isinstance(found, type) and issubclass(found, _StandIn):
        return [found.global_name] if found.global_name else []
    if isinstance(found, _StandIn) and type(found).global_name in _CLOUDPICKLE_CLASS_BUILDERS:
        bases = found.call_args[2] if len(found.call_args) > 2 else ()
        if isinstance(bases, tuple):
            return [name for base in bases for name in _class_names(base)]
    return []


def _describe(found: Any) -> str:
    """What stands where the class should be, for a message."""
    if isinstance(found, _StandIn):
        return f"not a class but a call of {type(found).global_name}"
    return "missing" if found is None else f"not a class but a {type(found).__name__}"


def _is_trusted(name: str, trusted: tuple[str, ...]) -> bool:
    return any(
        name == entry or (entry.endswith(".") and name.startswith(entry)) for entry in trusted
    )
