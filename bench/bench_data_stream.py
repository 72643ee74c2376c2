"""The training data stream before and after one-read, whole-dataset window sampling.

    python bench/bench_data_stream.py [--before-ref dda30fa] [--repeats 2]

"Before" is the package as it was at `--before-ref` (the per-epoch Ray Data pipeline), exported
with `git archive` into a temporary folder and imported from there by a fresh interpreter;
"after" is this checkout. Runs alternate (before, after, before, after) and each prints:
- the epoch-boundary stall: how long the first batch of epochs 2 and 3 took to arrive (median),
  on the shipped hopper-medium-v5 at `data_ratio` 0.1 (the README example's setting);
- data-stream steps/s (batches of 64 windows, K 20, per second, boundaries included) at
  `data_ratio` 0.005 of a 1M-step Hopper set, and the time to set the data up;
- training steps/s there (a whole `train()` iteration after a first one, with the tiny
  random GPT-2, so that the data path is what differs).
Ratios are after/before (or before/after for times) of paired runs, with the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "datasets" / "hopper-medium-v5"
LARGE = REPO / "datasets" / "hopper-medium-v5-1m"

# Runs in a fresh interpreter with PYTHONPATH at one version of the package; prints JSON.
MEASURE = r"""
import json, sys, time
import ray
import rllib_lamo
print("PACKAGE=" + rllib_lamo.__file__, file=sys.stderr)
ray.init(num_cpus=4, object_store_memory=400 * 1024**2, include_dashboard=False,
         log_to_driver=False)
from rllib_lamo.lamo import LaMoConfig
from rllib_lamo.offline_data import LaMoOfflineData

def offline_data(path, ratio):
    config = (LaMoConfig().offline_data(input_=path)
              .training(context_len=20, data_ratio=ratio).debugging(seed=0))
    config.validate()
    started = time.perf_counter()
    data = LaMoOfflineData(config)
    return data, time.perf_counter() - started

def timed_batch(data):
    started = time.perf_counter()
    data.sample(64)
    return time.perf_counter() - started

stall_path, large_path, batches, train_steps = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:5])
data, _ = offline_data(stall_path, 0.1)
first_batch_s = {}
while data.epoch < 4:
    epoch = data.epoch
    seconds = timed_batch(data)
    # A batch that opens an epoch: the pipeline restart (if any) happened inside this call.
    if data.epoch not in first_batch_s and data.epoch >= 2:
        first_batch_s[data.epoch] = seconds
data.close()
data, setup_s = offline_data(large_path, 0.005)
started = time.perf_counter()
epochs_before = data.epoch
for _ in range(batches):
    data.sample(64)
stream_s = time.perf_counter() - started
data.close()
# Whole training iterations with a tiny LM, so that the data path is what differs.
algo = (LaMoConfig().offline_data(input_=large_path, dataset_num_iters_per_learner=train_steps)
        .training(language_model="tiny-gpt2", context_len=20, train_batch_size_per_learner=64,
                  data_ratio=0.005, language_loss_coeff=0.0)
        .debugging(seed=0)).build_algo()
algo.train()  # the first iteration also pays for one-time warm-up
started = time.perf_counter()
algo.train()
train_s = time.perf_counter() - started
algo.stop()
print("RESULT=" + json.dumps({
    "train_steps_per_s": train_steps / train_s,
    "first_batch_s": [first_batch_s[e] for e in sorted(first_batch_s)],
    "setup_s": setup_s,
    "steps_per_s": batches / stream_s,
    "epochs": data.epoch - epochs_before,
    "num_steps": data.summary.num_steps,
}))
ray.shutdown()
"""


def export_package(ref: str, into: Path) -> Path:
    """The `rllib_lamo` package as committed at `ref`, without touching the checkout."""
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", ref, "rllib_lamo"], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def measure(pythonpath: Path, large: Path, batches: int, train_steps: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(pythonpath), "RAY_DEDUP_LOGS": "0"}
    with tempfile.TemporaryDirectory() as neutral:  # `python -c` imports from its cwd first
        result = subprocess.run(
            [
                sys.executable,
                "-c",
                MEASURE,
                str(SHIPPED),
                str(large.resolve()),
                str(batches),
                str(train_steps),
            ],
            capture_output=True,
            text=True,
            env=env,
            cwd=neutral,
            timeout=1800,
        )
    if result.returncode != 0:
        raise RuntimeError(f"measurement with PYTHONPATH={pythonpath} failed:\n{result.stderr}")
    package = next(x for x in result.stderr.splitlines() if x.startswith("PACKAGE="))
    if not package.removeprefix("PACKAGE=").startswith(str(pythonpath)):
        raise RuntimeError(f"imported {package}, expected the package under {pythonpath}")
    line = next(x for x in result.stdout.splitlines() if x.startswith("RESULT="))
    return json.loads(line.removeprefix("RESULT="))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before-ref", default="dda30fa", help="commit of the old stream")
    parser.add_argument("--repeats", type=int, default=2, help="paired (before, after) runs")
    parser.add_argument("--batches", type=int, default=12, help="batches timed at ratio 0.005")
    parser.add_argument("--train-steps", type=int, default=10, help="timed gradient steps")
    parser.add_argument("--large", type=Path, default=LARGE, help="the 1M-step dataset folder")
    args = parser.parse_args()
    large = args.large if (args.large / "metadata.json").exists() else SHIPPED
    if large == SHIPPED:
        print(f"NOTE: {args.large} is missing; ratio-0.005 runs use the 207K-step {SHIPPED.name}.")
    with tempfile.TemporaryDirectory() as tmp:
        before_path = export_package(args.before_ref, Path(tmp))
        runs = []
        for _ in range(args.repeats):
            before = measure(before_path, large, args.batches, args.train_steps)
            after = measure(REPO, large, args.batches, args.train_steps)
            runs.append((before, after))
            print(f"load average {os.getloadavg()}: before {before}\n  after {after}")

    def median_ratio(key: str, higher_is_better: bool) -> float:
        ratios = [(a[key] / b[key]) if higher_is_better else (b[key] / a[key]) for b, a in runs]
        return statistics.median(ratios)

    for before, after in runs:
        for run in (before, after):
            run["first_batch_s"] = statistics.median(run["first_batch_s"])
    print(f"\nbefore = {args.before_ref} (per-epoch Ray Data pipeline), after = this checkout")
    print(f"ratio-0.005 set: {large.name}, {runs[0][1]['num_steps']} steps kept")
    for key, label, better in (
        ("first_batch_s", "first batch of epochs 2 and 3, median s", False),
        ("setup_s", "data setup (read, subset, statistics) s", False),
        ("steps_per_s", "data-stream steps/s at data_ratio 0.005", True),
        ("train_steps_per_s", "training steps/s, tiny-gpt2, data_ratio 0.005", True),
    ):
        befores = statistics.median(b[key] for b, _ in runs)
        afters = statistics.median(a[key] for _, a in runs)
        kind = "speed-up" if better else "times faster"
        print(
            f"{label:45s} before {befores:10.4f}  after {afters:10.4f}  "
            f"{kind} (median of paired ratios) {median_ratio(key, better):8.1f}x"
        )
    print(f"load average now: {os.getloadavg()}")


if __name__ == "__main__":
    main()
