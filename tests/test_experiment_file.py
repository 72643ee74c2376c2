"""Experiment files (YAML and Python): parsing, overrides, paths, checks, the `mlflow:` block."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from conftest import bc_experiment, tiny_lamo_experiment, write_workdir, write_yaml

from rllib_lamo.checkpoints import OfflineRestoreMixin
from rllib_lamo.experiments.experiment_file import (
    ExperimentError,
    MLflowSettings,
    listed_config_keys,
    load_experiments,
    valid_config_keys,
)


def test_yaml_experiment_resolves_paths_and_applies_overrides(bc_workdir: Path) -> None:
    experiment = bc_experiment()
    experiment["cartpole-bc"]["stop"]["evaluation"] = {"env_runners": {"episode_return_mean": 150}}
    path = write_yaml(bc_workdir / "bc.yaml", experiment)

    (spec,) = load_experiments(
        path, config_overrides={"lr": 0.01, "input": "data/cartpole"}, stop_overrides={"x": 3}
    )

    assert spec.name == "cartpole-bc" and spec.algo_name == "BC" and spec.env == "CartPole-v1"
    assert spec.config.input_ == str(bc_workdir / "data" / "cartpole")
    assert spec.config.lr == 0.01
    assert spec.stop == {
        "training_iteration": 2,
        "evaluation/env_runners/episode_return_mean": 150,
        "x": 3,
    }
    from ray.rllib.algorithms.bc import BC

    assert spec.trainable.__name__ == "BC"
    assert issubclass(spec.trainable, BC) and issubclass(spec.trainable, OfflineRestoreMixin)


def test_inputs_in_a_grid_search_are_each_made_absolute(bc_workdir: Path) -> None:
    # Tune runs each trial in its own folder: a relative dataset path in a grid must not stay
    # relative (a study over data ratios failed with FileNotFoundError inside every trial).
    path = write_yaml(
        bc_workdir / "bc.yaml", bc_experiment(input_={"grid_search": ["data/cartpole", "data"]})
    )
    (spec,) = load_experiments(path)
    assert spec.config.input_ == {
        "grid_search": [str(bc_workdir / "data" / "cartpole"), str(bc_workdir / "data")]
    }
    missing = write_yaml(bc_workdir / "m.yaml", bc_experiment(input_={"grid_search": ["nope"]}))
    with pytest.raises(ExperimentError, match="input_ path not found: nope"):
        load_experiments(missing)


def test_one_file_may_hold_several_experiments(bc_workdir: Path) -> None:
    first = bc_experiment()["cartpole-bc"]
    second = first | {"config": first["config"] | {"lr": 1e-3}}
    write_yaml(bc_workdir / "two.yaml", {"bc-a": first, "bc-b": second})
    specs = load_experiments("two.yaml")
    assert [(spec.name, spec.config.lr) for spec in specs] == [("bc-a", 1e-4), ("bc-b", 1e-3)]


def test_python_experiment_file(bc_workdir: Path) -> None:
    path = bc_workdir / "bc_experiment.py"
    path.write_text(
        "from ray.rllib.algorithms.bc import BCConfig\n"
        "config = (\n"
        "    BCConfig().environment('CartPole-v1')\n"
        "    .offline_data(input_='data/cartpole', dataset_num_iters_per_learner=2)\n"
        "    .evaluation(evaluation_interval=1, evaluation_num_env_runners=1)\n"
        ")\n"
        "stop = {'training_iteration': 3}\n"
        "checkpoint_config = {'num_to_keep': 2}\n"
        "if __name__ == '__main__':\n"
        "    raise SystemExit('must not run')\n"
    )

    (spec,) = load_experiments(path, config_overrides={"seed": 7})

    assert spec.name == "bc_experiment" and spec.algo_name == "BC"
    assert spec.stop == {"training_iteration": 3}
    assert spec.checkpoint_config == {"num_to_keep": 2}
    assert spec.config.seed == 7
    assert spec.config.input_ == str(bc_workdir / "data" / "cartpole")


def test_unknown_key_in_override_names_the_flag_and_a_close_match(bc_workdir: Path) -> None:
    write_yaml(bc_workdir / "bc.yaml", bc_experiment())
    with pytest.raises(ExperimentError) as caught:
        load_experiments("bc.yaml", config_overrides={"evaluation_interva": 2})
    message = str(caught.value)
    assert message.startswith("--config (for bc.yaml, experiment 'cartpole-bc')")
    assert "did you mean 'evaluation_interval'" in message
    assert "BC keys: bc_logstd_coeff" in message


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"config": {"input_": "data/missing"}}, "input_ path not found: data/missing"),
        ({"config": {"env": "Pendulum-v1"}}, "`env` given twice"),
        ({"checkpoint_config": {"num_to_kep": 2}}, "did you mean 'num_to_keep'"),
        ({"stop": {"training_iteration": "ten"}}, "must be a number"),
        ({"num_sample": 2}, "unknown key(s) 'num_sample' (did you mean 'num_samples'?)"),
        # RLlib's own validation, before any trial starts: BC needs spaces or an env to evaluate.
        (
            {"config": {"evaluation_interval": None, "evaluation_num_env_runners": 0}},
            "invalid config: If no evaluation should be run",
        ),
    ],
)
def test_experiment_mistakes_are_reported_before_ray_starts(
    bc_workdir: Path, change: dict, expected: str
) -> None:
    experiment = bc_experiment()
    body = experiment["cartpole-bc"]
    for key, value in change.items():
        body[key] = body[key] | value if isinstance(body.get(key), dict) else value
    path = write_yaml(bc_workdir / "bc.yaml", experiment)
    with pytest.raises(ExperimentError, match=re.escape(expected)):
        load_experiments(path)


def test_search_spaces_are_left_to_tune(bc_workdir: Path) -> None:
    path = write_yaml(bc_workdir / "bc.yaml", bc_experiment(lr={"grid_search": [1e-4, 1e-3]}))
    (spec,) = load_experiments(path)
    assert spec.config.to_dict()["lr"] == {"grid_search": [1e-4, 1e-3]}


def test_config_keys_accept_old_spellings_but_list_only_current_settings() -> None:
    from rllib_lamo.lamo import LaMoConfig

    config = LaMoConfig()
    listed = listed_config_keys(config)
    assert {"lm_num_layers", "target_returns", "train_batch_size_per_learner", "input_"} <= listed
    assert not {"num_rollout_workers", "input", "lambda"} & listed
    assert {"input", "num_rollout_workers", "_validate_config"} <= valid_config_keys(config)


def test_mlflow_block_is_read_and_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    document = {"x": tiny_lamo_experiment()}
    document["x"]["mlflow"] = {"experiment_name": "paper", "tags": {"seed_group": 1}}
    path = write_workdir(tmp_path, document)
    (spec,) = load_experiments(path)
    assert spec.mlflow == MLflowSettings(experiment_name="paper", tags={"seed_group": "1"})

    document["x"]["mlflow"] = {"tracking_url": "sqlite:///x.db"}
    path.write_text(yaml.safe_dump(document))
    with pytest.raises(ExperimentError, match="unknown mlflow key 'tracking_url'; valid: "):
        load_experiments(path)


def test_a_missing_dataset_that_cannot_be_generated_is_an_error(tmp_path):
    experiment = tmp_path / "x.yaml"
    experiment.write_text(
        "x:\n  run: LaMo\n  env: Hopper-v5\n  config:\n    input_: no/such/dataset\n"
    )
    with pytest.raises(ExperimentError, match="input_ path not found: no/such/dataset"):
        load_experiments(experiment)
