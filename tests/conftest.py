"""Shared fixtures: one real local Ray cluster per test session, sized for a 2-core machine."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")


@pytest.fixture(scope="session")
def ray_cluster():
    """A local Ray with more logical CPUs than cores: Ray Data needs spare ones or it stalls."""
    import ray

    if not ray.is_initialized():
        ray.init(
            num_cpus=6,
            object_store_memory=400 * 1024**2,
            include_dashboard=False,
            log_to_driver=False,
        )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def toy_dataset(tmp_path_factory: pytest.TempPathFactory):
    """25 toy episodes in shards of at most 120 steps, labelled as Hopper data."""
    from rllib_lamo.data.testing import write_toy_dataset

    out = tmp_path_factory.mktemp("shards") / "toy-v0"
    write_toy_dataset(out, num_episodes=25, max_steps_per_shard=120, env_id="Hopper-v5")
    return out
