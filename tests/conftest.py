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
