"""Window sampling: the vectorised sampler against a per-step Python loop, measured in one run.

    python bench/bench_windows.py [--steps 200000] [--windows 10000] [--context-len 20]

Prints throughput of both and their ratio (no absolute claims: machines differ).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from rllib_lamo.windows import BOX_ACTION_PAD, EpisodeBlock, returns_to_go, sample_windows


def loop_windows(block: EpisodeBlock, starts: np.ndarray, K: int, rtg_scale: float) -> None:
    """The textbook Decision Transformer sampler: one window, one step at a time.

    Returns-to-go are precomputed for it (vectorised), so only the windowing is compared.
    """
    obs_dim, act_dim = block.obs.shape[1], block.actions.shape[1]
    all_rtg = returns_to_go(block.rewards, block.lengths)
    for start in starts:
        e = int(np.searchsorted(block.starts, start, side="right") - 1)
        end = int(block.starts[e] + block.lengths[e])
        obs = np.zeros((K, obs_dim), np.float32)
        actions = np.full((K, act_dim), BOX_ACTION_PAD, np.float32)
        rtg = np.zeros(K, np.float32)
        steps = range(int(start), min(int(start) + K, end))
        for slot, t in enumerate(steps, start=K - len(steps)):
            obs[slot] = block.obs[t]
            actions[slot] = block.actions[t]
            rtg[slot] = all_rtg[t] / rtg_scale


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200_000)
    parser.add_argument("--windows", type=int, default=10_000)
    parser.add_argument("--context-len", type=int, default=20)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    lengths = rng.integers(50, 1000, size=args.steps // 500)
    n = int(lengths.sum())
    block = EpisodeBlock(
        obs=rng.normal(size=(n, 11)).astype(np.float32),
        actions=rng.uniform(-1, 1, size=(n, 3)).astype(np.float32),
        rewards=rng.normal(size=n).astype(np.float32),
        starts=np.r_[0, np.cumsum(lengths)[:-1]],
        lengths=lengths,
    )
    K = args.context_len
    t0 = time.perf_counter()
    sample_windows(
        block,
        num_windows=args.windows,
        context_len=K,
        rtg_scale=1000.0,
        max_ep_len=1000,
        rng=np.random.default_rng(1),
    )
    vectorised = time.perf_counter() - t0
    loop_count = max(1, args.windows // 10)
    t0 = time.perf_counter()
    loop_windows(block, rng.integers(0, n, size=loop_count), K, 1000.0)
    loop = (time.perf_counter() - t0) * args.windows / loop_count
    print(f"episodes={len(lengths)} steps={n} windows={args.windows} K={K}")
    print(f"vectorised: {args.windows / vectorised:12.0f} windows/s")
    print(
        f"per-step loop (baseline): {args.windows / loop:12.0f} windows/s "
        f"(timed on {loop_count} windows)"
    )
    print(f"speed-up: {loop / vectorised:.1f}x")


if __name__ == "__main__":
    main()
