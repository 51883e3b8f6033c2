"""Benchmark: how fast `lab` answers the commands a user types to find their way (target: the
median of `lab --help` and `lab keys` under 0.3 s).

Each command is started as a whole process, as a shell starts it (interpreter start-up and
imports included, which is what the target is about: matplotlib, scapy and docker are imported
only by the commands that use them). Runs alternate between the commands, so a machine whose
speed drifts affects all alike; the median of each is printed, with min and max.

    .venv/bin/python benchmarks/bench_cli.py [--runs N] [--checkout DIR]

--checkout DIR measures another checkout of the lab with this interpreter (PYTHONPATH=DIR),
e.g. `git worktree add /tmp/before HEAD~1` for a before/after comparison.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET_S = 0.3
COMMANDS = {  # name -> lab arguments; the first two carry the target
    "lab --help": ["--help"],
    "lab keys": ["keys"],
    "lab --version": ["--version"],
    "lab run --dry-run": ["run", "seed-lvs-mysql", "--dry-run"],
}


def once(args: list[str], env: dict[str, str], cwd: Path) -> float | None:
    """One run's wall time; None if the command fails (an older checkout may lack it)."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "lab.cli", *args], cwd=cwd, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)
    elapsed = time.perf_counter() - start
    return elapsed if proc.returncode == 0 else None


def measure(runs: int, checkout: Path) -> dict[str, list[float]]:
    env = {**os.environ, "PYTHONPATH": str(checkout), "PYTHONDONTWRITEBYTECODE": "1"}
    # warm-up (the page cache, not counted); a command that fails here is left out
    commands = {n: a for n, a in COMMANDS.items() if once(a, env, checkout) is not None}
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(runs):
        for name, args in commands.items():
            elapsed = once(args, env, checkout)
            if elapsed is not None:
                times[name].append(elapsed)
    return times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=15, help="runs of each command (default 15)")
    ap.add_argument("--checkout", type=Path, default=ROOT,
                    help="the checkout to measure (default: this one)")
    args = ap.parse_args()
    times = measure(args.runs, args.checkout.resolve())
    print(f"{args.checkout.resolve()}, {args.runs} runs each, wall seconds "
          f"(median [min - max]):")
    over = []
    for i, name in enumerate(COMMANDS):
        ts = times.get(name)
        if not ts:
            print(f"  {name:22s}    n/a (fails in this checkout)")
            continue
        median = statistics.median(ts)
        gated = i < 2
        verdict = ("ok" if median < TARGET_S else "OVER TARGET") if gated else ""
        target = f"(target < {TARGET_S} s) {verdict}" if gated else ""
        print(f"  {name:22s} {median:6.3f} [{min(ts):.3f} - {max(ts):.3f}] {target}")
        if gated and median >= TARGET_S:
            over.append(name)
    return 1 if over else 0


if __name__ == "__main__":
    raise SystemExit(main())
