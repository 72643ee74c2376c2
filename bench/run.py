"""The one benchmark command: runs every ``bench/bench_*.py`` and writes bench/RESULTS.md.

    python bench/run.py [--only dt_step,windows] [--results bench/RESULTS.md] [-- ARGS...]

Each module's `main()` runs in its own subprocess with its default arguments (those after
``--`` go to every module), one after the other so they do not compete for the cores; its output
is printed live and collected. RESULTS.md records the machine, date, load averages before and
after each module, and the commit measured, followed by every module's output.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent


def discover() -> list[Path]:
    """Every benchmark module, in name order."""
    return sorted(BENCH_DIR.glob("bench_*.py"))


def _load() -> str:
    return "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def _git(*args: str) -> str:
    result = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True)
    return result.stdout.strip()


def _machine() -> str:
    memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    cpu = platform.processor() or platform.machine()
    try:
        import torch

        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
        versions = f"torch {torch.__version__}"
    except ImportError:
        gpu, versions = "unknown GPU", "no torch"
    return (
        f"{platform.node()}: {os.cpu_count()} CPU cores ({cpu}), {memory_gib:.0f} GiB, {gpu}; "
        f"Python {platform.python_version()}, {versions}"
    )


def run_module(path: Path, extra_args: list[str]) -> tuple[int, str, float, str, str]:
    """Runs one module's `main()`; returns its exit code, output, seconds and loads."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    load_before = _load()
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, str(path), *extra_args],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines = []
    for line in process.stdout:
        print(line, end="", flush=True)
        lines.append(line)
    code = process.wait()
    return code, "".join(lines), time.perf_counter() - started, load_before, _load()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated module names without 'bench_'")
    parser.add_argument("--results", default=str(BENCH_DIR / "RESULTS.md"))
    args, extra_args = parser.parse_known_args()
    extra_args = [arg for arg in extra_args if arg != "--"]
    modules = discover()
    if args.only:
        wanted = {f"bench_{name}.py" for name in args.only.split(",")}
        modules = [m for m in modules if m.name in wanted]
        if missing := wanted - {m.name for m in modules}:
            raise SystemExit(f"--only: no such modules in {BENCH_DIR}: {sorted(missing)}")

    changed = _git("status", "--porcelain", "--untracked-files=no")
    dirty = " (with uncommitted changes)" if changed else ""
    header = [
        "# Benchmark results",
        "",
        f"- Command: `python bench/run.py {' '.join(sys.argv[1:])}`".rstrip(),
        f"- Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}",
        f"- Machine: {_machine()}",
        f"- Commit: {_git('rev-parse', '--short', 'HEAD')} ({_git('branch', '--show-current')})"
        + dirty,
        f"- Load average (1, 5, 15 min) at start: {_load()}",
        "",
        "Timings are wall-clock on a shared machine: read the paired ratios, not absolute times.",
    ]
    sections, failures = [], []
    for module in modules:
        print(f"\n===== {module.name} =====", flush=True)
        code, output, seconds, load_before, load_after = run_module(module, extra_args)
        status = "ok" if code == 0 else f"FAILED (exit {code})"
        if code != 0:
            failures.append(module.name)
        sections += [
            "",
            f"## {module.name}: {status}, {seconds:.0f} s",
            "",
            f"Load average before {load_before}, after {load_after}.",
            "",
            "```text",
            output.rstrip(),
            "```",
        ]
    Path(args.results).write_text("\n".join(header + sections) + "\n")
    print(f"\nWrote {args.results}" + (f"; failed: {', '.join(failures)}" if failures else ""))
    if failures:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
