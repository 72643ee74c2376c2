"""Image windows through the driver (before) vs frame indices gathered on the learner (after).

    python bench/bench_atari_data_path.py [--repeats 5] [--batch-size 128] [--context-len 30]

Both paths cut the very same windows (same seed) from the shipped Atari dataset
(`datasets/breakout-medium-expert-v0`, 50K frames) with the paper's Atari batch (128 windows of
K = 30 steps):

- before: the driver stacks each window's frames (uint8 [B, K, 4, 84, 84]) and ships them to the
  learner, as every batch did before frames were kept on the learners;
- after: the driver ships `FRAME_INDEX` (int64 [B, K, 4]); the learner actor, which got the
  frames once through the object store, gathers the stacks (what `LaMoTorchLearner` does).

Per batch it times driver sampling + transfer + the learner's tensor of stacked frames, on a real
Ray actor (one learner process), and counts the bytes the driver serialises. By default the
learner runs on a second Ray node (`ray.cluster_utils.Cluster`, two nodes on this machine, so
batches cross the object manager as they would to a learner on another machine); `--nodes 1`
puts it next to the driver (shared memory). Runs alternate
(before, after, ...); it prints per-run figures, the medians of the paired ratios and the load
average. MuJoCo windows (the shipped hopper-medium-v5, batch 64, K 20) take one path in both
versions: their bytes per batch are printed for scale.
"""

from __future__ import annotations

import argparse
import os
import pickle
import statistics
import time
from pathlib import Path

import numpy as np
import ray
import torch
from ray.cluster_utils import Cluster

REPO = Path(__file__).resolve().parents[1]
ATARI = REPO / "datasets" / "breakout-medium-expert-v0"
HOPPER = REPO / "datasets" / "hopper-medium-v5"


@ray.remote(num_cpus=1, resources={"learner_node": 0.01})
class LearnerSide:
    """What a learner does with a batch's observations before the forward pass."""

    def __init__(self, frames_ref: list[ray.ObjectRef]):
        torch.set_num_threads(1)
        self.frames = ray.get(frames_ref[0])  # a read-only view of the object store

    def node_id(self) -> str:
        return ray.get_runtime_context().get_node_id()

    def consume(self, batch: dict[str, np.ndarray]) -> int:
        from rllib_lamo.windows import ATTENTION_MASK, FRAME_INDEX, OBS

        if FRAME_INDEX in batch:
            # As LaMoTorchLearner gathers on a CPU (numpy's take; torch's gather on a GPU).
            stacks = torch.from_numpy(np.take(self.frames, batch[FRAME_INDEX], axis=0))
            real = torch.as_tensor(batch[ATTENTION_MASK]) > 0
            stacks[~real] = 0
        else:
            stacks = torch.as_tensor(batch[OBS])
        return int(stacks.shape[0])


def offline_data(path: Path, context_len: int):
    from rllib_lamo.lamo import LaMoConfig
    from rllib_lamo.offline_data import LaMoOfflineData

    config = (
        LaMoConfig()
        .offline_data(input_=str(path))
        .training(context_len=context_len, max_ep_len=3000, rtg_scale=1)
        .debugging(seed=0)
    )
    config.validate()
    return LaMoOfflineData(config)


def run(data, learner, *, gather: bool, batches: int, batch_size: int) -> dict[str, float]:
    """Driver samples + ships + learner stacks `batches` batches; bytes and rates."""
    from rllib_lamo.windows import sample_windows

    config = data.config
    sent_bytes = 0
    started = time.perf_counter()
    for index in range(batches):
        windows = sample_windows(
            data.episodes,
            num_windows=batch_size,
            context_len=config.context_len,
            rtg_scale=config.rtg_scale,
            max_ep_len=config.max_ep_len,
            rng=np.random.default_rng([0, index]),
            gather_frames=gather,
        )
        sent_bytes += len(pickle.dumps(windows, protocol=5))
        ray.get(learner.consume.remote(windows))
    seconds = time.perf_counter() - started
    return {
        "windows_per_s": batches * batch_size / seconds,
        "driver_MB_per_s": sent_bytes / seconds / 1e6,
        "MB_per_batch": sent_bytes / batches / 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="paired (before, after) runs")
    parser.add_argument("--batches", type=int, default=8, help="batches per run")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--context-len", type=int, default=30)
    parser.add_argument("--nodes", type=int, choices=(1, 2), default=2, help="learner's node")
    args = parser.parse_args()
    cluster = start_ray(args.nodes)
    try:
        data = offline_data(ATARI, args.context_len)
        learner = LearnerSide.remote([data.frames_ref])
        driver_node = ray.get_runtime_context().get_node_id()
        learner_node = ray.get(learner.node_id.remote())
        print(f"driver on node {driver_node[:8]}, learner on node {learner_node[:8]}")
        ray.get(learner.consume.remote(data.sample(2).policy_batches["default_policy"]))
        options = {"batches": args.batches, "batch_size": args.batch_size}
        pairs = []
        for _ in range(args.repeats):
            before = run(data, learner, gather=True, **options)
            after = run(data, learner, gather=False, **options)
            pairs.append((before, after))
            print(f"load {os.getloadavg()[0]:.2f}: before {before}\n          after  {after}")
        print(
            f"\nAtari ({data.summary.num_steps} frames), learner on "
            f"{'another' if args.nodes == 2 else 'the driver’s'} node, batch {args.batch_size} x K "
            f"{args.context_len}, {args.repeats} paired runs, load average now "
            f"{os.getloadavg()}:"
        )
        for key in ("MB_per_batch", "driver_MB_per_s", "windows_per_s"):
            ratios = [after[key] / before[key] for before, after in pairs]
            print(
                f"  {key:16s} before {statistics.median(b[key] for b, _ in pairs):10.3f}  "
                f"after {statistics.median(a[key] for _, a in pairs):10.3f}  "
                f"median ratio after/before {statistics.median(ratios):.4f}"
            )
        hopper = offline_data(HOPPER, 20).sample(64).policy_batches["default_policy"]
        print(
            f"MuJoCo (hopper-medium-v5), batch 64 x K 20: "
            f"{len(pickle.dumps(dict(hopper), protocol=5)) / 1e6:.3f} MB per batch, the same "
            "before and after (vector windows still pass through the driver)"
        )
    finally:
        ray.shutdown()
        if cluster is not None:
            cluster.shutdown()


def start_ray(nodes: int) -> Cluster | None:
    """Ray with the learner's node: the driver's own, or a second simulated node."""
    store = 900 * 1024**2
    if nodes == 1:
        ray.init(
            num_cpus=4,
            resources={"learner_node": 1},
            object_store_memory=store,
            include_dashboard=False,
            log_to_driver=False,
        )
        return None
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 3, "object_store_memory": store},
    )
    cluster.add_node(num_cpus=2, resources={"learner_node": 1}, object_store_memory=store)
    ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False)
    return cluster


if __name__ == "__main__":
    main()
