"""Placement on a multi-node cluster: learners and evaluation runners go where their custom
resources are, as on the cloud clusters of `cluster/` (GPU learner nodes, CPU evaluation nodes).

`ray.cluster_utils.Cluster` starts a head and two worker nodes on this machine. One Ray per
process, so the cluster and the LaMo run live in a fresh interpreter, with a Ray temp dir of
their own: a cluster's address file would otherwise make a plain `ray.init()` elsewhere on
the machine join it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HOPPER = REPO / "datasets" / "hopper-medium-v5"

SCRIPT = r"""
import json, sys
import ray
from ray.cluster_utils import Cluster

MiB = 1024**2
# The head keeps spare CPUs for the driver's Ray Data tasks; the worker nodes hold exactly
# what their learner or evaluation runners ask for.
cluster = Cluster(
    initialize_head=True,
    head_node_args={"num_cpus": 3, "object_store_memory": 200 * MiB, "include_dashboard": False},
)
learner_node = cluster.add_node(num_cpus=1, resources={"learner": 1}, object_store_memory=100 * MiB)
evaluation_node = cluster.add_node(
    num_cpus=2, resources={"evaluation": 2}, object_store_memory=100 * MiB
)
cluster.wait_for_nodes()
try:
    ray.init(address=cluster.address, log_to_driver=False)
    from rllib_lamo.lamo import LaMoConfig

    config = (
        LaMoConfig()
        .environment("Hopper-v5")
        .offline_data(input_=sys.argv[1], dataset_num_iters_per_learner=2)
        .training(
            language_model="tiny-gpt2", train_batch_size_per_learner=8, context_len=5,
            text_block_len=16, data_ratio=0.02, target_returns=[1800.0],
        )
        .learners(num_learners=1, custom_resources_per_learner={"learner": 1})
        .env_runners(custom_resources_per_env_runner={"evaluation": 1})
        .evaluation(evaluation_interval=1, evaluation_duration=2, evaluation_num_env_runners=2)
        .debugging(seed=3)
    )
    algo = config.build_algo()
    try:
        result = algo.train()
        node_of = lambda _: ray.get_runtime_context().get_node_id()
        placement = {
            "head": cluster.head_node.node_id,
            "learner_node": learner_node.node_id,
            "evaluation_node": evaluation_node.node_id,
            "learners": [r.get() for r in algo.learner_group.foreach_learner(node_of)],
            "evaluation_runners": algo.eval_env_runner_group.foreach_env_runner(
                node_of, local_env_runner=False
            ),
            "driver": ray.get_runtime_context().get_node_id(),
            "action_loss": result["learners"]["default_policy"]["action_loss"],
            "episodes": result["evaluation"]["target_1800"]["num_episodes"],
        }
    finally:
        algo.stop()
    print("PLACEMENT=" + json.dumps(placement))
finally:
    ray.shutdown()
    cluster.shutdown()
"""


def test_learners_and_evaluation_runners_land_on_their_nodes():
    # A short path: Ray's socket paths under it must stay within the 107-byte limit.
    ray_tmp = tempfile.mkdtemp(prefix="lamo-mn-", dir="/tmp")
    try:
        result = subprocess.run(
            [sys.executable, "-c", SCRIPT, str(HOPPER)],
            capture_output=True,
            text=True,
            timeout=600,
            cwd=REPO,
            env={**os.environ, "PYTHONUNBUFFERED": "1", "RAY_TMPDIR": ray_tmp},
        )
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert result.returncode == 0, result.stderr[-4000:]
    line = next(x for x in result.stdout.splitlines() if x.startswith("PLACEMENT="))
    placement = json.loads(line.removeprefix("PLACEMENT="))

    assert len({placement["head"], placement["learner_node"], placement["evaluation_node"]}) == 3
    assert placement["driver"] == placement["head"]
    assert placement["learners"] == [placement["learner_node"]]
    assert placement["evaluation_runners"] == [placement["evaluation_node"]] * 2
    assert placement["action_loss"] > 0
    assert placement["episodes"] == 2
