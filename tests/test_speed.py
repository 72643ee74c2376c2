"""Training speed settings: CPU threads granted by Ray, mixed precision, torch.compile,
the resource request of a local learner and the throughput keys."""

from __future__ import annotations

import math
import os

import pytest
import torch
from test_learner import (
    BATCH_SIZE,
    BOX,
    CONTEXT_LEN,
    MODULE_ID,
    OBS_SPACE,
    build_learner,
    module_results,
    window_batch,
)

from rllib_lamo.lamo import LaMo, LaMoConfig
from rllib_lamo.lamo_learner import ACTION_LOSS_KEY, GRADIENT_STEPS_KEY
from rllib_lamo.language_models import language_model_body, load_language_model
from rllib_lamo.torch.performance import (
    ACHIEVED_TFLOPS_KEY,
    GRADIENT_STEPS_PER_S_KEY,
    MFU_KEY,
    TOKENS_PER_S_KEY,
    matmul_weight_count,
)


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("Plain English text, repeated so that it fills a few token blocks. " * 40)
    return str(path)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_on_cpu(text_file, precision):
    learner = build_learner(text_file, mixed_precision=precision)
    batch = window_batch()
    history = [module_results(learner, batch) for _ in range(6)]

    assert history[-1][ACTION_LOSS_KEY] < history[0][ACTION_LOSS_KEY]
    assert history[-1][GRADIENT_STEPS_KEY] == 6  # fp16: the scaler skipped no step
    assert all(math.isfinite(r[ACTION_LOSS_KEY]) for r in history)
    module = learner.module[MODULE_ID].unwrapped()
    # Weights stay float32; only the forward passes run in the low precision.
    assert {p.dtype for p in module.parameters()} == {torch.float32}
    assert (learner._grad_scaler is not None) == (precision == "fp16")


def test_mixed_precision_rejects_unknown_values():
    with pytest.raises(ValueError, match="mixed_precision"):
        LaMoConfig().training(mixed_precision="fp8").validate()


def test_throughput_keys_follow_the_step_time(text_file):
    learner = build_learner(text_file)
    results = module_results(learner, window_batch())

    steps_per_s = results[GRADIENT_STEPS_PER_S_KEY]
    assert steps_per_s > 0
    trajectory_tokens = 3 * BATCH_SIZE * CONTEXT_LEN
    text_tokens = 2 * 16  # text_batch_size x text_block_len of `build_learner`
    assert results[TOKENS_PER_S_KEY] == pytest.approx(
        steps_per_s * (trajectory_tokens + text_tokens), rel=1e-6
    )
    assert results[ACHIEVED_TFLOPS_KEY] == pytest.approx(
        steps_per_s * learner._flops_per_step[MODULE_ID] / 1e12, rel=1e-6
    )
    assert MFU_KEY not in results  # no known peak on a CPU


def test_matmul_weights_of_gpt2_are_twelve_hidden_squared_per_layer():
    model, _ = load_language_model("tiny-gpt2")
    body = language_model_body(model)
    hidden, layers = body.config.hidden_size, body.config.num_hidden_layers
    assert matmul_weight_count(body) == 12 * hidden**2 * layers


@pytest.mark.slow
def test_torch_compile_learner_matches_eager(text_file):
    eager = build_learner(text_file)
    compiled_config = (
        LaMoConfig().update_from_dict(eager.config.to_dict()).framework(torch_compile_learner=True)
    )
    compiled = compiled_config.build_learner(spaces={MODULE_ID: (OBS_SPACE, BOX)})
    compiled.module[MODULE_ID].set_state(eager.module[MODULE_ID].get_state())
    batch = window_batch()
    for _ in range(2):
        eager_loss = module_results(eager, batch)[ACTION_LOSS_KEY]
        compiled_loss = module_results(compiled, batch)[ACTION_LOSS_KEY]
        assert compiled_loss == pytest.approx(eager_loss, rel=1e-4)


def _main_process_cpus(config: LaMoConfig) -> float:
    return LaMo.default_resource_request(config).bundles[0]["CPU"]


def test_local_learner_requests_the_nodes_cores(ray_cluster):
    config = (
        LaMoConfig()
        .environment(observation_space=OBS_SPACE, action_space=BOX)
        .evaluation(evaluation_interval=1, evaluation_num_env_runners=2)
    )
    cluster_cpus = ray_cluster.cluster_resources()["CPU"]
    assert _main_process_cpus(config) == max(1, min(os.cpu_count(), cluster_cpus - 2))
    # Placements the user set stay as RLlib makes them.
    assert _main_process_cpus(config.copy(copy_frozen=False).learners(num_cpus_per_learner=1)) == 1
    remote = config.copy(copy_frozen=False).learners(num_learners=1)
    assert LaMo.default_resource_request(remote).bundles[0]["CPU"] == 1


@pytest.mark.parametrize("granted", [1, 2])
def test_learner_threads_follow_the_cpus_ray_grants(ray_cluster, text_file, granted):
    """A learner in a Ray worker uses the CPUs granted to it, even where the process was
    started with another thread count (here OMP_NUM_THREADS=1 set for it)."""

    # The worker imports these test helpers by name, as pytest did.
    python_path = os.pathsep.join([os.path.dirname(__file__), os.environ.get("PYTHONPATH", "")])
    env_vars = {"OMP_NUM_THREADS": "1", "PYTHONPATH": python_path}

    @ray_cluster.remote(num_cpus=granted, runtime_env={"env_vars": env_vars})
    def learner_threads() -> tuple[int, float]:
        build_learner(text_file)
        assigned = ray_cluster.get_runtime_context().get_assigned_resources()["CPU"]
        return torch.get_num_threads(), assigned

    threads, assigned = ray_cluster.get(learner_threads.remote())
    assert assigned == granted
    assert threads == min(granted, os.cpu_count())
