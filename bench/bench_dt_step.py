"""Gradient-step time of LaMo against bare loops and peers, paired and interleaved in one run.

    python bench/bench_dt_step.py [--shapes dt,default,gpt2] [--rounds 3] [--steps 12]
        [--baseline-path /work/main] [--d3rlpy-python /path/to/venv/bin/python]

Shapes (random weights, Hopper-sized observations 11 / actions 3, K = 20):
- ``dt``: Decision-Transformer size, GPT-2 3 layers x 128, 1 head, batch 64, linear embeddings,
  full training, dropout 0.1. Candidates: ``project`` (one `LaMoTorchLearner.update` per step,
  RLlib's full path), ``bare`` (forward/loss/backward/clip/AdamW on the same module),
  ``minimal`` (`MinimalDecisionTransformer` below, written here as a CORL-style peer) and
  ``d3rlpy`` (its DecisionTransformer via `fit`, including its own batch sampling; needs an
  interpreter with d3rlpy 2.8.1, whose gymnasium 1.0.0 pin conflicts with Ray 2.60's 1.2.2).
- ``default``: the CPU example (SmolLM2-135M cut to 2 blocks, LoRA r16, MLP embeddings,
  batch 16): ``project`` with the threads Ray now grants against 1 thread (what a Tune trial
  ran on before), and against ``--baseline-path``'s code at 1 thread (before).
- ``gpt2``: GPT-2 small shape (12 x 768, LoRA r16, batch 16) at 1 thread, as measured against
  the paper's code; with ``--baseline-path`` also the code before.

Every measurement runs in its own subprocess; rounds interleave the candidates (A, B, A, B) and
ratios are medians of per-round ratios against the first candidate. Load averages are printed.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

OBS_DIM, ACT_DIM, CONTEXT_LEN, MAX_EP_LEN = 11, 3, 20, 1000
# Gradient steps per `update()` call of the project's candidate (training: 100 or more).
UPDATE_STEPS = 6
SHAPES = {
    "dt": {"layers": 3, "hidden": 128, "heads": 1, "batch": 64, "finetune": "full"},
    "gpt2": {"layers": 12, "hidden": 768, "heads": 12, "batch": 16, "finetune": "lora"},
    "default": {"batch": 16, "finetune": "lora"},
}
WARMUP_STEPS = 2
# The paper's code at the `gpt2` shape, 1 thread, measured earlier on this workplace's machine
# (shared/REFERENCE.md); it is not installable here, so ratios against it are derived figures.
PAPER_CODE_GPT2_MS = 5542


def _gpt2_dir(layers: int, hidden: int, heads: int) -> str:
    """A save_pretrained GPT-2 of this shape (random weights; LaMo re-initialises it anyway)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from rllib_lamo.language_models import _byte_level_tokenizer

    folder = Path(tempfile.gettempdir()) / f"rllib_lamo_bench_gpt2_{layers}x{hidden}x{heads}"
    if not folder.is_dir():
        tokenizer = _byte_level_tokenizer()
        config = GPT2Config(
            vocab_size=len(tokenizer), n_positions=1024, n_embd=hidden, n_layer=layers, n_head=heads
        )
        GPT2LMHeadModel(config).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    return str(folder)


def _lamo_settings(shape: str) -> dict:
    spec = SHAPES[shape]
    if shape == "default":
        model = {"language_model": "smollm2-135m", "lm_num_layers": 2, "embedding": "mlp"}
    else:
        model = {
            "language_model": _gpt2_dir(spec["layers"], spec["hidden"], spec["heads"]),
            "lm_pretrained": False,
            "embedding": "linear" if shape == "dt" else "mlp",
        }
    return model | {
        "finetune": spec["finetune"],
        "context_len": CONTEXT_LEN,
        "max_ep_len": MAX_EP_LEN,
        "dropout": 0.1,
        "language_loss_coeff": 0.0,
        "warmup_steps": 1,
        "train_batch_size_per_learner": spec["batch"],
    }


def _window_columns(batch: int, seed: int = 0) -> dict:
    import numpy as np

    from rllib_lamo.windows import ATTENTION_MASK, RETURNS_TO_GO, TIMESTEPS

    rng = np.random.default_rng(seed)
    mask = np.ones((batch, CONTEXT_LEN), np.float32)
    mask[: batch // 8, : CONTEXT_LEN // 4] = 0  # some left-padded windows, as at episode starts
    return {
        "obs": rng.normal(size=(batch, CONTEXT_LEN, OBS_DIM)).astype(np.float32),
        "actions": rng.uniform(-1, 1, (batch, CONTEXT_LEN, ACT_DIM)).astype(np.float32),
        RETURNS_TO_GO: rng.uniform(0, 3, (batch, CONTEXT_LEN)).astype(np.float32),
        TIMESTEPS: rng.integers(0, MAX_EP_LEN - CONTEXT_LEN, (batch, 1)) + np.arange(CONTEXT_LEN),
        ATTENTION_MASK: mask,
    }


def _time_steps(step, steps: int) -> float:
    """Median ms per gradient step; a `step` may take several (its `gradient_steps`)."""
    per_call = getattr(step, "gradient_steps", 1)
    for _ in range(max(1, WARMUP_STEPS // per_call)):
        step()
    times = []
    for _ in range(max(1, steps // per_call)):
        started = time.perf_counter()
        step()
        times.append((time.perf_counter() - started) / per_call)
    return 1000 * statistics.median(times)


def _project_step(shape: str, compiled: bool = False):
    """RLlib's whole update path as training takes it: one `LaMoTorchLearner.update` of
    `UPDATE_STEPS` minibatches (LaMo's `training_step` passes an iteration's batches in one
    call, so RLlib's per-call work is shared by all of them)."""
    import gymnasium as gym
    import numpy as np
    from ray.rllib.policy.sample_batch import MultiAgentBatch, SampleBatch

    from rllib_lamo.lamo import LaMoConfig

    obs_space = gym.spaces.Box(-np.inf, np.inf, (OBS_DIM,), np.float32)
    act_space = gym.spaces.Box(-1.0, 1.0, (ACT_DIM,), np.float32)
    config = LaMoConfig().training(**_lamo_settings(shape)).debugging(seed=0)
    if compiled:  # RLlib's option: the module's forward_train through torch.compile (inductor)
        config.framework(torch_compile_learner=True)
    learner = config.build_learner(spaces={"default_policy": (obs_space, act_space)})
    size = SHAPES[shape]["batch"]
    columns = _window_columns(size * UPDATE_STEPS)
    batch = MultiAgentBatch({"default_policy": SampleBatch(columns)}, env_steps=size * UPDATE_STEPS)

    def step() -> None:
        learner.update(
            batch=batch, minibatch_size=size, num_epochs=1, shuffle_batch_per_epoch=False
        )

    step.gradient_steps = UPDATE_STEPS
    return step


def _bare_step(shape: str):
    """The same module trained by a plain PyTorch loop (no RLlib in the step)."""
    import gymnasium as gym
    import numpy as np
    import torch
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec

    from rllib_lamo.lamo import LaMoConfig
    from rllib_lamo.windows import ATTENTION_MASK

    config = LaMoConfig().training(**_lamo_settings(shape))
    module = RLModuleSpec(
        module_class=config.get_default_rl_module_spec().module_class,
        observation_space=gym.spaces.Box(-np.inf, np.inf, (OBS_DIM,), np.float32),
        action_space=gym.spaces.Box(-1.0, 1.0, (ACT_DIM,), np.float32),
        model_config=config._model_config_auto_includes,
    ).build()
    batch = {k: torch.as_tensor(v) for k, v in _window_columns(SHAPES[shape]["batch"]).items()}
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-5)
    real = batch[ATTENTION_MASK] > 0

    def step() -> None:
        predictions = module.forward_train(batch)["action_dist_inputs"]
        loss = torch.nn.functional.mse_loss(predictions[real], batch["actions"][real])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 0.25)
        optimizer.step()

    return step


def _minimal_step(shape: str):
    """A Decision Transformer written from the paper's description, trained by a plain loop."""
    import torch

    spec = SHAPES[shape]
    model = MinimalDecisionTransformer(spec["hidden"], spec["layers"], spec["heads"])
    columns = _window_columns(spec["batch"])
    batch = {k: torch.as_tensor(v) for k, v in columns.items()}
    real = batch["attention_mask"] > 0
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-4)

    def step() -> None:
        predictions = model(
            batch["returns_to_go"], batch["obs"], batch["actions"], batch["timesteps"], real
        )
        loss = torch.nn.functional.mse_loss(predictions[real], batch["actions"][real])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.25)
        optimizer.step()

    return step


def _d3rlpy_ms_per_step(shape: str, steps: int) -> float:
    """d3rlpy's DecisionTransformer at the same size; `fit` includes its own batch sampling."""
    import d3rlpy
    import numpy as np

    spec = SHAPES[shape]
    rng = np.random.default_rng(0)
    episodes, length = 50, 200
    dataset = d3rlpy.dataset.MDPDataset(
        observations=rng.normal(size=(episodes * length, OBS_DIM)).astype(np.float32),
        actions=rng.uniform(-1, 1, (episodes * length, ACT_DIM)).astype(np.float32),
        rewards=rng.normal(size=episodes * length).astype(np.float32),
        terminals=np.tile(np.r_[np.zeros(length - 1), 1.0], episodes).astype(np.float32),
    )
    algo = d3rlpy.algos.DecisionTransformerConfig(
        batch_size=spec["batch"],
        context_size=CONTEXT_LEN,
        max_timestep=MAX_EP_LEN,
        num_layers=spec["layers"],
        num_heads=spec["heads"],
        encoder_factory=d3rlpy.models.VectorEncoderFactory(hidden_units=[spec["hidden"]]),
        learning_rate=1e-4,
    ).create(device="cpu:0")

    def fit(n: int) -> None:
        algo.fit(
            dataset,
            n_steps=n,
            n_steps_per_epoch=n,
            show_progress=False,
            save_interval=10**9,
            logger_adapter=d3rlpy.logging.NoopAdapterFactory(),
        )

    fit(WARMUP_STEPS)
    started = time.perf_counter()
    fit(steps)
    return 1000 * (time.perf_counter() - started) / steps


def _minimal_model_class():
    """Built on first use, so that importing this file needs no torch."""
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self, hidden: int, heads: int, dropout: float) -> None:
            super().__init__()
            self.norm1, self.norm2 = nn.LayerNorm(hidden), nn.LayerNorm(hidden)
            self.attention = nn.MultiheadAttention(hidden, heads, dropout, batch_first=True)
            self.mlp = nn.Sequential(
                nn.Linear(hidden, 4 * hidden),
                nn.GELU(),
                nn.Linear(4 * hidden, hidden),
                nn.Dropout(dropout),
            )
            self.dropout = nn.Dropout(dropout)

        def forward(self, x, causal, padding):
            h = self.norm1(x)
            h, _ = self.attention(
                h, h, h, attn_mask=causal, key_padding_mask=padding, need_weights=False
            )
            x = x + self.dropout(h)
            return x + self.mlp(self.norm2(x))

    class Model(nn.Module):
        def __init__(self, hidden: int, layers: int, heads: int, dropout: float = 0.1) -> None:
            super().__init__()
            self.rtg, self.state = nn.Linear(1, hidden), nn.Linear(OBS_DIM, hidden)
            self.action, self.time = nn.Linear(ACT_DIM, hidden), nn.Embedding(MAX_EP_LEN, hidden)
            self.norm, self.out_norm = nn.LayerNorm(hidden), nn.LayerNorm(hidden)
            self.dropout = nn.Dropout(dropout)
            self.blocks = nn.ModuleList(Block(hidden, heads, dropout) for _ in range(layers))
            self.head = nn.Sequential(nn.Linear(hidden, ACT_DIM), nn.Tanh())

        def forward(self, rtg, obs, actions, timesteps, real):
            batch, steps = real.shape
            tokens = torch.stack(
                [self.rtg(rtg.unsqueeze(-1)), self.state(obs), self.action(actions)], dim=2
            ).reshape(batch, 3 * steps, -1)
            x = self.norm(tokens) + self.time(timesteps).repeat_interleave(3, dim=1)
            x = self.dropout(x)
            causal = torch.triu(torch.ones(3 * steps, 3 * steps, dtype=torch.bool), 1)
            padding = ~real.repeat_interleave(3, dim=1)
            for block in self.blocks:
                x = block(x, causal, padding)
            return self.head(self.out_norm(x)[:, 1::3])

    return Model


def MinimalDecisionTransformer(hidden: int, layers: int, heads: int):  # noqa: N802
    """Pre-LN GPT blocks with `nn.MultiheadAttention` (causal + key-padding masks), GELU MLPs,
    linear return/state/action embeddings and a learned timestep embedding."""
    return _minimal_model_class()(hidden, layers, heads)


STEP_BUILDERS = {
    "project": _project_step,
    "project-compiled": functools.partial(_project_step, compiled=True),
    "bare": _bare_step,
    "minimal": _minimal_step,
}


def _worker(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.worker == "d3rlpy":
        ms = _d3rlpy_ms_per_step(args.shape, args.steps)
    else:
        ms = _time_steps(STEP_BUILDERS[args.worker](args.shape), args.steps)
    print(json.dumps({"ms_per_step": ms, "threads": torch.get_num_threads()}))


def _measure(candidate: dict, shape: str, steps: int) -> float:
    env = dict(os.environ, PYTHONPATH=candidate.get("path", os.environ.get("PYTHONPATH", "")))
    env["OMP_NUM_THREADS"] = str(candidate["threads"])
    command = [
        candidate.get("python", sys.executable),
        __file__,
        "--worker",
        candidate["mode"],
        "--shape",
        shape,
        "--steps",
        str(steps),
        "--threads",
        str(candidate["threads"]),
    ]
    output = subprocess.run(command, env=env, capture_output=True, text=True, timeout=3600)
    if output.returncode != 0:
        raise RuntimeError(f"{candidate['name']} failed:\n{output.stderr[-3000:]}")
    return json.loads(output.stdout.strip().splitlines()[-1])["ms_per_step"]


def _candidates(shape: str, args: argparse.Namespace) -> list[dict]:
    cores = os.cpu_count() or 1
    project = {"name": "project", "mode": "project", "threads": cores}
    if shape == "dt":
        found = [
            project,
            {
                "name": "project + torch.compile",
                "mode": "project-compiled",
                "threads": cores,
            },
            {"name": "bare loop (same module)", "mode": "bare", "threads": cores},
            {"name": "minimal DT loop (here)", "mode": "minimal", "threads": cores},
        ]
        if args.baseline_path:
            found.append({**project, "name": "before (baseline code)", "path": args.baseline_path})
        if args.d3rlpy_python:
            found.append(
                {
                    "name": "d3rlpy 2.8.1 DT",
                    "mode": "d3rlpy",
                    "threads": cores,
                    "python": args.d3rlpy_python,
                }
            )
        return found
    one_thread = {**project, "threads": 1}
    if shape == "gpt2":
        found = [{**one_thread, "name": "project, 1 thread"}]
    else:
        found = [
            {**project, "name": f"project, {cores} threads (granted)"},
            {**one_thread, "name": "project, 1 thread (Tune trial before)"},
        ]
    if args.baseline_path:
        found.append(
            {**one_thread, "name": "before (baseline code), 1 thread", "path": args.baseline_path}
        )
    return found


def _load() -> str:
    return "load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def run_shape(shape: str, args: argparse.Namespace) -> None:
    candidates = _candidates(shape, args)
    steps = args.steps if shape != "gpt2" else max(2, args.steps // 4)
    times: dict[str, list[float]] = {c["name"]: [] for c in candidates}
    print(f"\n## {shape}: {SHAPES[shape]} ({_load()} at start)")
    for round_index in range(args.rounds):
        order = candidates if round_index % 2 == 0 else candidates[::-1]
        for candidate in order:
            times[candidate["name"]].append(_measure(candidate, shape, steps))
        print(
            f"round {round_index + 1}: "
            + ", ".join(f"{name} {values[-1]:.0f} ms" for name, values in times.items())
            + f" ({_load()})",
            flush=True,
        )
    reference = candidates[0]["name"]
    print(f"{'candidate':45s} {'median ms/step':>14s} {'x ' + reference:>24s}")
    for name, values in times.items():
        ratios = [v / r for v, r in zip(values, times[reference], strict=True)]
        print(f"{name:45s} {statistics.median(values):14.0f} {statistics.median(ratios):24.2f}")
    if shape == "gpt2":
        ours = statistics.median(times[reference])
        print(
            f"derived: paper code {PAPER_CODE_GPT2_MS} ms/step (measured earlier, not rerun) / "
            f"project {ours:.0f} ms = {PAPER_CODE_GPT2_MS / ours:.2f}x the paper code's "
            "throughput (valid only at a load like that measurement's)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="dt,default,gpt2")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--baseline-path", default=os.environ.get("LAMO_BENCH_BASELINE_PATH"))
    parser.add_argument("--d3rlpy-python", default=os.environ.get("LAMO_BENCH_D3RLPY_PYTHON"))
    parser.add_argument("--worker", choices=[*STEP_BUILDERS, "d3rlpy"], help=argparse.SUPPRESS)
    parser.add_argument("--shape", choices=list(SHAPES), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(args)
        return
    print(
        f"Gradient-step time, {os.cpu_count()} cores; ratios are x the first candidate "
        "(< 1 = faster), medians over interleaved rounds."
    )
    if not args.d3rlpy_python:
        print(
            "d3rlpy: skipped (its gymnasium==1.0.0 pin conflicts with ray[rllib]==2.60's "
            "gymnasium==1.2.2; install it in a separate venv and pass --d3rlpy-python)."
        )
    for shape in args.shapes.split(","):
        run_shape(shape, args)


if __name__ == "__main__":
    main()
