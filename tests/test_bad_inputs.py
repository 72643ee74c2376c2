"""Bad inputs, each refused before Ray starts with one line naming the setting or file.

Every case has an id; docs/bad_inputs.md lists each id with its input and message (a test
below keeps the two in step). None of these tests starts a Ray cluster.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_rllib, tiny_lamo_experiment, write_workdir

from rllib_lamo.data.testing import write_toy_dataset

HOPPER = Path(__file__).resolve().parents[1] / "datasets" / "hopper-medium-v5"
BAD_INPUTS_DOC = Path(__file__).resolve().parents[1] / "docs" / "bad_inputs.md"


def hopper_config(**training: object):
    from rllib_lamo.lamo import LaMoConfig

    return (
        LaMoConfig()
        .environment("Hopper-v5")
        .offline_data(input_=str(HOPPER))
        .training(**{"language_model": "tiny-gpt2", **training})
    )


# -------------------------------------------------------------- LaMoConfig.validate(): settings
# (case id, training() settings, expected message)
SETTING_CASES = [
    (
        "lora_rank-text",
        {"lora_rank": "sixteen"},
        "`lora_rank` must be an integer >= 1, got 'sixteen' (str).",
    ),
    (
        "lora_rank-negative",
        {"lora_rank": -4},
        "`lora_rank` must be an integer >= 1, got -4 (int).",
    ),
    (
        "lora_alpha-zero",
        {"lora_alpha": 0},
        "`lora_alpha` must be a number > 0, got 0 (int).",
    ),
    (
        "lora_dropout-one",
        {"lora_dropout": 1.0},
        "`lora_dropout` must be a number in [0, 1), got 1.0 (float).",
    ),
    (
        "validation_fraction-one",
        {"validation_fraction": 1.0},
        "`validation_fraction` must be a number in [0, 1), got 1.0 (float).",
    ),
    (
        "train_batch_size-zero",
        {"train_batch_size_per_learner": 0},
        "`train_batch_size_per_learner` must be an integer >= 1, got 0 (int).",
    ),
    (
        "context_len-zero",
        {"context_len": 0},
        "`context_len` must be an integer >= 1, got 0 (int).",
    ),
    (
        "data_ratio-zero",
        {"data_ratio": 0.0},
        "`data_ratio` must be a number in (0, 1], got 0.0 (float).",
    ),
    (
        "data_ratio-text",
        {"data_ratio": "0.1"},
        "`data_ratio` must be a number in (0, 1], got '0.1' (str).",
    ),
    (
        "text_block_len-zero",
        {"text_block_len": 0},
        "`text_block_len` must be an integer >= 1, got 0 (int).",
    ),
    (
        "text_batch_size-float",
        {"text_batch_size": 2.5},
        "`text_batch_size` must be an integer >= 1, got 2.5 (float).",
    ),
    (
        "warmup_steps-negative",
        {"warmup_steps": -1},
        "`warmup_steps` must be an integer >= 0, got -1 (int).",
    ),
    (
        "lr-zero",
        {"lr": 0.0},
        "`lr` must be a number > 0 (LaMo takes no lr schedule), got 0.0 (float).",
    ),
    (
        "lm_lr-negative",
        {"lm_lr": -0.0001},
        "`lm_lr` must be a number > 0, got -0.0001 (float).",
    ),
    (
        "target_returns-text",
        {"target_returns": ["high"]},
        "`target_returns` must be a non-empty list of numbers, e.g. [3600, 1800], got "
        "['high'] (list).",
    ),
    (
        "lm_num_layers-beyond-model",
        {"lm_num_layers": 5},
        "`lm_num_layers` is 5, but language model 'tiny-gpt2' has only 2 transformer blocks: "
        "expected an integer in [1, 2] or None (all).",
    ),
    (
        "language_model-missing-folder",
        {"language_model": "./models/missing-lm"},
        "`language_model` './models/missing-lm': './models/missing-lm' is not a model "
        "directory or .gguf file; accepted:",
    ),
    (
        "language_model-unknown-name",
        {"language_model": "smollm2 135m"},
        "`language_model` 'smollm2 135m': Unknown language model 'smollm2 135m'; accepted:",
    ),
    (
        "language_model-missing-gguf",
        {"language_model": "models/lm.gguf"},
        "`language_model` 'models/lm.gguf': GGUF file 'models/lm.gguf' does not exist.",
    ),
]


@pytest.mark.parametrize(
    ("training", "expected"),
    [pytest.param(training, expected, id=case) for case, training, expected in SETTING_CASES],
)
def test_lamo_settings_are_checked_in_validate(training: dict, expected: str) -> None:
    config = hopper_config(**training)
    with pytest.raises(ValueError) as caught:
        config.validate()
    first_line = str(caught.value).splitlines()[0]
    assert first_line.startswith(expected)


# ------------------------------------------------------------------ env and dataset agreement
def _dataset_with(folder: Path, **metadata: object) -> Path:
    """A copy of the Hopper dataset's metadata.json with fields replaced (no shards needed)."""
    folder.mkdir(parents=True)
    document = json.loads((HOPPER / "metadata.json").read_text()) | metadata
    (folder / "metadata.json").write_text(json.dumps(document))
    return folder


def _walker_labelled_hopper_shaped(tmp_path: Path) -> Path:
    folder = tmp_path / "walker-labelled"
    write_toy_dataset(folder, 4, obs_dim=11, act_dim=3, env_id="Walker2d-v5")
    return folder


def _kitchen_v0_layout(tmp_path: Path) -> Path:
    """D4RL's kitchen-*-v0 layout (60 floats: positions and goal), e.g. through from-d4rl."""
    folder = tmp_path / "kitchen-partial-d4rl-v0"
    write_toy_dataset(folder, 4, obs_dim=60, act_dim=9, env_id="kitchen-partial-v0")
    return folder


def _pong_frames_dataset(tmp_path: Path) -> Path:
    """A small Pong dataset in the frame layout (one uint8 84x84 frame per step)."""
    import gymnasium as gym
    import numpy as np

    from rllib_lamo.data.format import Episode
    from rllib_lamo.data.writer import write_dataset

    env = gym.make("PongDT-v0")
    episode = Episode(
        obs=np.zeros((5, 84, 84), np.uint8),
        actions=np.zeros(5, np.int64),
        rewards=np.zeros(5, np.float32),
        terminated=True,
    )
    folder = tmp_path / "pong-frames"
    write_dataset(
        folder,
        [episode],
        observation_space=env.observation_space,
        action_space=env.action_space,
        env_id="PongDT-v0",
    )
    return folder


def _dqn_replay_files(tmp_path: Path, *, frames_dtype: str, num_actions: int) -> Path:
    """One checkpoint in the DQN Replay layout: 3 games of 40 steps."""
    import numpy as np

    from rllib_lamo.data.dqn_replay import write_store_files

    terminal = np.zeros(120, np.uint8)
    terminal[[39, 79, 119]] = 1
    write_store_files(
        tmp_path / "replay_logs",
        1,
        {
            "observation": np.zeros((120, 84, 84), frames_dtype),
            "action": np.arange(120, dtype=np.int32) % num_actions,
            "reward": np.zeros(120, np.float32),
            "terminal": terminal,
        },
    )
    return tmp_path / "replay_logs"


ENV_CASES = [
    (
        "env-unknown-id",
        lambda tmp_path: (str(HOPPER), "Hoper-v5"),
        "`env` 'Hoper-v5' is not a registered environment (did you mean 'Hopper-v5'",
    ),
    (
        "dataset-other-env-spaces",
        lambda tmp_path: (str(HOPPER), "Walker2d-v5"),
        f"{HOPPER}/metadata.json: observation_space is Box(-inf, inf, (11,), float32), but env "
        "'Walker2d-v5' has Box(-inf, inf, (17,), float64).",
    ),
    (
        "dataset-other-env-id",
        lambda tmp_path: (str(_walker_labelled_hopper_shaped(tmp_path)), "Hopper-v5"),
        "/walker-labelled/metadata.json: env_id is 'Walker2d-v5', but `env` is 'Hopper-v5': "
        "expected a dataset recorded on hopper (any version), or set `env` to 'Walker2d-v5'.",
    ),
    (
        "kitchen-dataset-obs-size",
        lambda tmp_path: (str(_kitchen_v0_layout(tmp_path)), "LaMoKitchen-v0"),
        "/kitchen-partial-d4rl-v0/metadata.json: observation_space is Box(-inf, inf, (60,), "
        "float32), but env 'LaMoKitchen-v0' has Box(-inf, inf, (59,), float64).",
    ),
    (
        "dataset-no-episodes",
        lambda tmp_path: (str(_dataset_with(tmp_path / "empty", num_episodes=0)), "Hopper-v5"),
        "/empty/metadata.json: num_episodes is 0: the dataset holds no episode to train on.",
    ),
    (
        "dataset-other-atari-game",
        lambda tmp_path: (str(_pong_frames_dataset(tmp_path)), "QbertDT-v0"),
        "/pong-frames/metadata.json: env_id is 'PongDT-v0', but `env` is 'QbertDT-v0': expected "
        "a dataset recorded on qbertdt (any version), or set `env` to 'PongDT-v0'.",
    ),
]


@pytest.mark.parametrize(
    ("make_inputs", "expected"),
    [pytest.param(make, expected, id=case) for case, make, expected in ENV_CASES],
)
@pytest.mark.parametrize("evaluation", [False, True], ids=["no-eval", "eval"])
def test_env_and_dataset_must_agree_with_or_without_evaluation(
    tmp_path: Path, make_inputs, expected: str, evaluation: bool
) -> None:
    input_, env = make_inputs(tmp_path)
    config = hopper_config().environment(env).offline_data(input_=input_)
    if evaluation:
        config = config.evaluation(evaluation_interval=1, evaluation_num_env_runners=1)
    with pytest.raises(ValueError) as caught:
        config.validate()
    assert expected in str(caught.value).splitlines()[0]


def test_an_older_version_of_the_same_env_is_accepted() -> None:
    hopper_config().environment("Hopper-v4").validate()


# ------------------------------------------------------ the `rllib` command: before Ray starts
CLI_CASES = [
    (
        "cli-lora_rank-text",
        ["--config", '{"lora_rank": "sixteen"}'],
        "invalid config: `lora_rank` must be an integer >= 1, got 'sixteen' (str).",
    ),
    (
        "cli-lr-text",
        ["--config", '{"lr": "fast"}'],
        "invalid config: `lr` must be a number > 0 (LaMo takes no lr schedule), got 'fast' (str).",
    ),
    (
        "cli-env-unknown",
        ["--config", '{"env": "Hopper-v55"}'],
        "invalid config: `env` 'Hopper-v55' is not a registered environment",
    ),
    (
        "cli-dataset-other-env",
        ["--config", '{"env": "Walker2d-v5", "evaluation_interval": null}'],
        "metadata.json: observation_space is Box(-inf, inf, (11,), float32), but env "
        "'Walker2d-v5' has",
    ),
]


@pytest.mark.parametrize(
    ("extra_args", "expected"),
    [pytest.param(args, expected, id=case) for case, args, expected in CLI_CASES],
)
def test_the_command_refuses_bad_settings_before_starting_ray(
    tmp_path: Path, extra_args: list[str], expected: str
) -> None:
    write_workdir(tmp_path, {"x": tiny_lamo_experiment()})
    # Any Ray session the command started would be created under RAY_TMPDIR.
    ray_tmp = tmp_path / "ray"
    ray_tmp.mkdir()
    completed = run_rllib(
        "train", "file", "experiments.yaml", *extra_args, cwd=tmp_path, RAY_TMPDIR=str(ray_tmp)
    )
    assert completed.returncode == 2, completed.stderr
    last_line = completed.stderr.strip().splitlines()[-1]
    assert last_line.startswith("rllib: error: experiments.yaml, experiment 'x': ")
    assert expected in last_line
    assert "must be a list of tuples" not in completed.stderr
    assert not list(ray_tmp.rglob("session_*")), "the command started Ray"


def test_only_must_name_experiments_of_the_file(tmp_path: Path) -> None:
    write_workdir(tmp_path, {"x": tiny_lamo_experiment(), "y": tiny_lamo_experiment()})
    completed = run_rllib("train", "file", "experiments.yaml", "--only", "x,z", cwd=tmp_path)
    assert completed.returncode == 2
    assert completed.stderr.strip().splitlines()[-1] == (
        "rllib: error: experiments.yaml: --only names no experiment 'z'; the file has 'x', 'y'"
    )


# --------------------------------------------------------------- checkpoints and `rllib evaluate`
MARKER = "crafted-checkpoint-ran-code"


class _RunsCodeWhenUnpickled:
    """A crafted checkpoint class: unpickling it would create the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def write_checkpoint(folder: Path, class_file: bytes) -> Path:
    """A checkpoint-shaped folder: every file present, only the class file means anything."""
    from rllib_lamo.checkpoints import CHECKPOINT_FILES, CLASS_AND_CTOR_ARGS_FILE

    for name in CHECKPOINT_FILES:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"")
    (folder / CLASS_AND_CTOR_ARGS_FILE).write_bytes(class_file)
    return folder


def lamo_class_file() -> bytes:
    import pickle

    from rllib_lamo.lamo import LaMo, LaMoConfig

    state = LaMoConfig().get_state()
    return pickle.dumps({"class": LaMo, "ctor_args_and_kwargs": ((state,), {})})


def crafted_class_file(folder: Path) -> bytes:
    import pickle

    return pickle.dumps({"class": _RunsCodeWhenUnpickled(folder / MARKER)})


def with_module_files(folder: Path, module_class: bytes, module_state: bytes) -> Path:
    """A LaMo checkpoint folder whose policy module has the given class and weights files."""
    from rllib_lamo.checkpoints import CLASS_AND_CTOR_ARGS_FILE, MODULE_STATE_FILE, module_location

    write_checkpoint(folder, lamo_class_file())
    module_dir = Path(module_location(folder))
    module_dir.mkdir(parents=True)
    (module_dir / CLASS_AND_CTOR_ARGS_FILE).write_bytes(module_class)
    (module_dir / MODULE_STATE_FILE).write_bytes(module_state)
    return folder


def module_class_file() -> bytes:
    import pickle

    from rllib_lamo.torch.lamo_torch_rl_module import LaMoTorchRLModule

    return pickle.dumps({"class": LaMoTorchRLModule, "ctor_args_and_kwargs": ((), {})})


def module_state_file() -> bytes:
    import pickle

    import numpy as np

    return pickle.dumps({"weight": np.ones((4, 3), np.float32), "step": 3})


def other_class_file() -> bytes:
    import pickle
    import subprocess

    return pickle.dumps({"class": subprocess.Popen, "ctor_args_and_kwargs": ((["true"],), {})})


CHECKPOINT_CASES = [
    (
        "evaluate-empty-folder",
        lambda folder: folder,
        "is not a LaMo checkpoint: missing algorithm_state.pkl, class_and_ctor_args.pkl, "
        "learner_group/learner/state.pkl.",
    ),
    (
        "evaluate-not-a-checkpoint",
        lambda folder: (folder / "notes.txt").write_text("hello") and folder,
        "is not a LaMo checkpoint: missing algorithm_state.pkl, class_and_ctor_args.pkl,",
    ),
    (
        "evaluate-truncated-class-file",
        lambda folder: write_checkpoint(folder, lamo_class_file()[:60]),
        "/class_and_ctor_args.pkl: not a readable checkpoint class file, truncated or corrupt",
    ),
    (
        "evaluate-foreign-class",
        lambda folder: write_checkpoint(folder, crafted_class_file(folder)),
        "/class_and_ctor_args.pkl: the checkpoint's algorithm class is not a class but a call "
        "of pathlib.Path.touch; expected rllib_lamo.lamo.LaMo. Refusing to unpickle it: "
        "checkpoints are pickles",
    ),
    (
        "evaluate-other-class",
        lambda folder: write_checkpoint(folder, other_class_file()),
        "/class_and_ctor_args.pkl: the checkpoint's algorithm class is subprocess.Popen; "
        "expected rllib_lamo.lamo.LaMo.",
    ),
    (
        "evaluate-truncated-module-weights",
        lambda folder: with_module_files(folder, module_class_file(), module_state_file()[:90]),
        "/learner_group/learner/rl_module/default_policy/module_state.pkl: truncated or corrupt",
    ),
    (
        "evaluate-module-weights-run-code",
        lambda folder: with_module_files(folder, module_class_file(), crafted_class_file(folder)),
        "/learner_group/learner/rl_module/default_policy/module_state.pkl: refers to "
        "pathlib.Path.touch, pathlib.PosixPath; expected only numpy.dtype,",
    ),
    (
        "evaluate-foreign-module-class",
        lambda folder: with_module_files(folder, other_class_file(), module_state_file()),
        "/learner_group/learner/rl_module/default_policy/class_and_ctor_args.pkl: the "
        "checkpoint's algorithm class is subprocess.Popen; expected "
        "rllib_lamo.torch.lamo_torch_rl_module.LaMoTorchRLModule.",
    ),
]


@pytest.mark.parametrize(
    ("make_folder", "expected"),
    [pytest.param(make, expected, id=case) for case, make, expected in CHECKPOINT_CASES],
)
def test_evaluate_refuses_bad_checkpoints_before_starting_ray(
    tmp_path: Path, make_folder, expected: str
) -> None:
    folder = tmp_path / "checkpoint_000001"
    folder.mkdir()
    make_folder(folder)
    ray_tmp = tmp_path / "ray"
    ray_tmp.mkdir()
    completed = run_rllib("evaluate", str(folder), cwd=tmp_path, RAY_TMPDIR=str(ray_tmp))
    assert completed.returncode == 2, completed.stderr
    last_line = completed.stderr.strip().splitlines()[-1]
    assert last_line.startswith(f"rllib: error: {folder}")
    assert expected in last_line
    assert not (folder / MARKER).exists(), "the crafted checkpoint ran code"
    assert not list(ray_tmp.rglob("session_*")), "the command started Ray"


def test_our_class_passes_and_a_subclass_pickled_by_value_is_judged_by_its_bases() -> None:
    from ray import cloudpickle

    from rllib_lamo.checkpoints import check_checkpoint_class, checkpoint_algorithm_classes
    from rllib_lamo.lamo import LaMo

    check_checkpoint_class("class_and_ctor_args.pkl", lamo_class_file())

    class TuneWrapped(LaMo):  # a local class: cloudpickle writes it by value, as Tune's is
        pass

    by_value = cloudpickle.dumps({"class": TuneWrapped})
    assert checkpoint_algorithm_classes(by_value) == ["rllib_lamo.lamo.LaMo"]
    check_checkpoint_class("class_and_ctor_args.pkl", by_value)


def test_evaluate_finds_the_store_train_wrote_by_default(tmp_path: Path) -> None:
    """The run's checkpoint is fetched from ./ray_results/mlflow.db, then refused (crafted)."""
    import mlflow

    from rllib_lamo.experiments import store

    database = tmp_path / store.DEFAULT_STORAGE_PATH / store.DEFAULT_DB_FILE
    database.parent.mkdir()
    checkpoint = write_checkpoint(tmp_path / "checkpoint_000000", crafted_class_file(tmp_path))
    mlflow.set_tracking_uri(f"{store.SQLITE_PREFIX}{database}")
    try:
        with mlflow.start_run() as run:
            mlflow.log_artifacts(str(checkpoint), "checkpoints/checkpoint_000000")
    finally:
        mlflow.set_tracking_uri(None)
    uri = f"runs:/{run.info.run_id}/checkpoints/checkpoint_000000"
    completed = run_rllib("evaluate", uri, cwd=tmp_path)
    assert completed.returncode == 2, completed.stderr
    assert "the checkpoint's algorithm class is not a class" in completed.stderr
    assert not (tmp_path / MARKER).exists()


MLFLOW_CASES = [
    (
        "evaluate-no-default-store",
        [],
        "rllib: error: no MLflow store at {tmp}/ray_results/mlflow.db (where `rllib train` writes "
        "by default): run from the folder you trained in, or pass --mlflow-uri",
    ),
    (
        "evaluate-mistyped-store",
        ["--mlflow-uri", "sqlite:///{tmp}/ray_reslts/mlflow.db"],
        "rllib: error: no MLflow store at {tmp}/ray_reslts/mlflow.db (from sqlite:///",
    ),
]


@pytest.mark.parametrize(
    ("extra_args", "expected"),
    [pytest.param(args, expected, id=case) for case, args, expected in MLFLOW_CASES],
)
def test_evaluate_names_the_mlflow_store_it_looked_in(
    tmp_path: Path, extra_args: list[str], expected: str
) -> None:
    args = [arg.format(tmp=tmp_path) for arg in extra_args]
    completed = run_rllib("evaluate", "runs:/0123456789abcdef/policy", *args, cwd=tmp_path)
    assert completed.returncode == 2, completed.stderr
    assert expected.format(tmp=tmp_path) in completed.stderr
    assert not (tmp_path / "ray_results").exists() and not (tmp_path / "ray_reslts").exists()


def test_evaluate_help_says_checkpoints_are_pickles(tmp_path: Path) -> None:
    completed = run_rllib("evaluate", "--help", cwd=tmp_path)
    assert "checkpoints and MLflow models are pickles" in " ".join(completed.stdout.split())
    assert "--mlflow-uri" in completed.stdout


# ----------------------------------------------------------------- `lamo-data` and `lamo-report`
def console_script(name: str) -> str:
    script = Path(sys.executable).with_name(name)
    return str(script) if script.exists() else shutil.which(name) or name


def _dataset_missing_a_shard(tmp_path: Path) -> list[str]:
    folder = tmp_path / "toy"
    write_toy_dataset(folder, 12, max_steps_per_shard=60)
    shards = sorted(folder.glob("episodes-*.parquet"))
    shards[1].unlink()
    return ["lamo-data", "info", str(folder)]


def _subset_onto_existing(tmp_path: Path) -> list[str]:
    write_toy_dataset(tmp_path / "toy", 6)
    (tmp_path / "small").mkdir()
    return ["lamo-data", "subset", str(tmp_path / "toy"), str(tmp_path / "small"), "--ratio", "0.5"]


def _report_from_mistyped_store(tmp_path: Path) -> list[str]:
    store_uri = f"sqlite:///{tmp_path}/ray_reslts/mlflow.db"
    return ["lamo-report", "--experiment", "x", "--tracking-uri", store_uri, "--out", "report"]


def _dqn_replay_float_frames(tmp_path: Path) -> list[str]:
    replay = _dqn_replay_files(tmp_path, frames_dtype="float32", num_actions=6)
    return ["lamo-data", "from-dqn-replay", str(replay), "--game", "pong", "--checkpoints", "1"]


def _dqn_replay_of_another_game(tmp_path: Path) -> list[str]:
    replay = _dqn_replay_files(tmp_path, frames_dtype="uint8", num_actions=6)
    return ["lamo-data", "from-dqn-replay", str(replay), "--game", "breakout", "--checkpoints", "1"]


TOOL_CASES = [
    (
        "data-info-missing-shard",
        _dataset_missing_a_shard,
        1,
        "/toy/metadata.json: field 'shards': lists 1 shard(s) missing from the folder: "
        "episodes-00001.parquet",
    ),
    (
        "data-subset-existing-output",
        _subset_onto_existing,
        1,
        "/small already exists (pass --overwrite to replace it)",
    ),
    (
        "data-generate-kitchen-unknown-kind",
        lambda tmp_path: ["lamo-data", "generate", "kitchen", "--kind", "medium", "--out", "k"],
        1,
        "lamo-data generate: error: unknown kind 'medium' for task kitchen; choose from "
        "('complete', 'partial', 'mixed')",
    ),
    (
        "data-dqn-replay-float-frames",
        _dqn_replay_float_frames,
        1,
        "/replay_logs/$store$_observation_ckpt.1.gz: field 'observation': holds float32 frames "
        "of shape (84, 84), expected uint8 (84, 84)",
    ),
    (
        "data-dqn-replay-other-game",
        _dqn_replay_of_another_game,
        1,
        "/replay_logs/$store$_action_ckpt.1.gz: field 'action': row 4 holds action 4, outside "
        "breakout's 4 actions (0..3): is this another game's replay?",
    ),
    (
        "report-mistyped-store",
        _report_from_mistyped_store,
        2,
        "lamo-report: error: no MLflow store at {tmp}/ray_reslts/mlflow.db (from sqlite:///",
    ),
]


@pytest.mark.parametrize(
    ("make_command", "exit_code", "expected"),
    [pytest.param(make, code, expected, id=case) for case, make, code, expected in TOOL_CASES],
)
def test_data_and_report_tools_name_what_is_wrong(
    tmp_path: Path, make_command, exit_code: int, expected: str
) -> None:
    name, *args = make_command(tmp_path)
    completed = subprocess.run(
        [console_script(name), *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == exit_code, completed.stderr
    assert expected.format(tmp=tmp_path) in completed.stderr.strip().splitlines()[-1]
    assert "Traceback" not in completed.stderr
    assert not (tmp_path / "ray_reslts").exists()


def test_data_info_into_a_closed_pipe_exits_quietly(tmp_path: Path) -> None:
    """`lamo-data info | head`: the reader is gone before anything is written."""
    write_toy_dataset(tmp_path / "toy", 6)
    process = subprocess.Popen(
        [console_script("lamo-data"), "info", str(tmp_path / "toy")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    process.stdout.close()
    stderr = process.stderr.read()
    assert process.wait(timeout=300) == 0, stderr
    assert "BrokenPipeError" not in stderr and "Traceback" not in stderr


# -------------------------------------------------------------------------- docs/bad_inputs.md
# What each case that is not a `training()` setting feeds in, for the table.
CASE_INPUTS = {
    "env-unknown-id": "`env: Hoper-v5`",
    "dataset-other-env-spaces": "`env: Walker2d-v5` on hopper-medium-v5 (obs 11 vs 17)",
    "dataset-other-env-id": "`env: Hopper-v5` on data whose metadata says Walker2d-v5 "
    "(same shapes)",
    "dataset-no-episodes": "a dataset whose metadata.json has `num_episodes: 0`",
    "kitchen-dataset-obs-size": "`env: LaMoKitchen-v0` on data in D4RL's kitchen-v0 layout "
    "(obs 60 vs 59)",
    "data-generate-kitchen-unknown-kind": "`lamo-data generate kitchen --kind medium`",
    "dataset-other-atari-game": "`env: QbertDT-v0` on Pong frames (same spaces)",
    "data-dqn-replay-float-frames": "`lamo-data from-dqn-replay DIR --game pong --checkpoints 1` "
    "whose observation file holds float32 frames",
    "data-dqn-replay-other-game": "`lamo-data from-dqn-replay DIR --game breakout ...` on a "
    "replay with 6 actions",
    "cli-lora_rank-text": '`rllib train file ... --config \'{"lora_rank": "sixteen"}\'`',
    "cli-lr-text": '`rllib train file ... --config \'{"lr": "fast"}\'`',
    "cli-env-unknown": '`rllib train file ... --config \'{"env": "Hopper-v55"}\'`',
    "cli-dataset-other-env": "`rllib train file` of Hopper data with `env: Walker2d-v5`, "
    "evaluation off",
    "evaluate-empty-folder": "`rllib evaluate EMPTY_FOLDER`",
    "evaluate-not-a-checkpoint": "`rllib evaluate FOLDER` holding only notes.txt",
    "evaluate-truncated-class-file": "`rllib evaluate` of a checkpoint whose "
    "class_and_ctor_args.pkl is cut short",
    "evaluate-foreign-class": "`rllib evaluate` of a crafted checkpoint whose class entry "
    "runs code when unpickled",
    "evaluate-other-class": "`rllib evaluate` of a checkpoint whose class is subprocess.Popen",
    "evaluate-truncated-module-weights": "`rllib evaluate` of a checkpoint whose policy "
    "weights (module_state.pkl) are cut short",
    "evaluate-module-weights-run-code": "`rllib evaluate` of a checkpoint whose "
    "module_state.pkl would run code when unpickled",
    "evaluate-foreign-module-class": "`rllib evaluate` of a checkpoint whose policy module "
    "class is subprocess.Popen",
    "evaluate-no-default-store": "`rllib evaluate runs:/ID/policy` where no "
    "./ray_results/mlflow.db exists",
    "evaluate-mistyped-store": "`rllib evaluate runs:/ID/policy --mlflow-uri "
    "sqlite:///.../ray_reslts/mlflow.db`",
    "data-info-missing-shard": "`lamo-data info FOLDER` after a shard was deleted",
    "data-subset-existing-output": "`lamo-data subset IN OUT --ratio 0.5` onto an existing OUT",
    "report-mistyped-store": "`lamo-report --tracking-uri sqlite:///.../ray_reslts/mlflow.db`",
}


def table_rows() -> list[tuple[str, str, str]]:
    """(case id, input, message) of every case above."""
    rows = [
        (case, "`training(" + ", ".join(f"{k}={v!r}" for k, v in training.items()) + ")`", msg)
        for case, training, msg in SETTING_CASES
    ]
    others = ENV_CASES + CLI_CASES + CHECKPOINT_CASES + MLFLOW_CASES
    rows += [(case, CASE_INPUTS[case], message) for case, _, message in others]
    rows += [(case, CASE_INPUTS[case], message) for case, _, _, message in TOOL_CASES]
    return rows


def markdown_table() -> str:
    checkout = str(HOPPER.parents[1]) + "/"

    def cell(text: str) -> str:
        # Paths inside this checkout are shown relative to it: the table is the same anywhere.
        return text.replace("{tmp}", "…").replace(checkout, "").replace("|", "\\|")

    lines = ["| case | input | message (starts with, or contains) |", "|---|---|---|"]
    lines += [f"| `{case}` | {cell(given)} | {cell(msg)} |" for case, given, msg in table_rows()]
    return "\n".join(lines)


def test_the_bad_inputs_table_lists_every_case_with_its_message() -> None:
    table = BAD_INPUTS_DOC.read_text()
    missing = [row for row in markdown_table().splitlines() if row not in table.splitlines()]
    assert not missing, (
        "docs/bad_inputs.md is out of date; regenerate its table with "
        f"`python tests/test_bad_inputs.py`. Missing rows: {missing}"
    )


if __name__ == "__main__":
    print(markdown_table())
