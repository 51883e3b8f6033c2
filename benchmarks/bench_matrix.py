"""Benchmark: a matrix's wall time against its longest trial (target <= 1.15).

Trials of a matrix run side by side, each in its own namespaces and subnet, so a matrix should
cost about its longest trial, not the sum. This runs a scenario as `lab run` does and prints,
from the run itself: the matrix wall time, each trial's own wall time (build to torn down,
trial.json facts.wall_s), the longest, their sum and the ratio wall / longest.

    .venv/bin/python benchmarks/bench_matrix.py [SCENARIO] [--parallel N]

Default scenario: scenarios/mitigations-short.toml (16 trials, longest ~35 s), all of them
side by side (with fewer slots than trials they queue, and the ratio measures the queue). `make
reproduce` is the same measurement on the article's matrix with its ~940 s baseline; this
prints it too for a finished run: `bench_matrix.py --run-dir results/<run>` (wall time from
run.json's started/ended).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from datetime import datetime
from pathlib import Path

from lab.config import scenario
from lab.experiment.matrix import DEFAULT_PARALLEL, MatrixRun

ROOT = Path(__file__).resolve().parents[1]
TARGET = 1.15


def trial_walls(run_dir: Path) -> dict[str, float]:
    out = {}
    for f in sorted(run_dir.glob("*/trial.json")):
        wall = json.loads(f.read_text()).get("facts", {}).get("wall_s")
        if wall is not None:
            out[f.parent.name] = float(wall)
    return out


def report(wall: float, walls: dict[str, float]) -> int:
    if not walls:
        print("no trial recorded its wall time (facts.wall_s): nothing to compare")
        return 1
    for name, w in sorted(walls.items(), key=lambda kv: -kv[1]):
        print(f"  {name:40s} {w:8.1f} s")
    longest = max(walls.values())
    ratio = wall / longest
    print(f"trials: {len(walls)}, sum of trial times {sum(walls.values()):.1f} s, "
          f"longest {longest:.1f} s")
    print(f"matrix wall time {wall:.1f} s; wall / longest trial = {ratio:.3f} "
          f"(target <= {TARGET}): {'ok' if ratio <= TARGET else 'OVER TARGET'}")
    return 0 if ratio <= TARGET else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("scenario", nargs="?", type=Path,
                    default=ROOT / "scenarios" / "mitigations-short.toml")
    ap.add_argument("--parallel", type=int, default=0,
                    help="trials side by side (default: all of them; lab run's default is "
                         f"{DEFAULT_PARALLEL})")
    ap.add_argument("--run-dir", type=Path, help="measure a finished run instead of running")
    args = ap.parse_args()
    if args.run_dir:
        run = json.loads((args.run_dir / "run.json").read_text())
        wall = (datetime.fromisoformat(run["ended"])
                - datetime.fromisoformat(run["started"])).total_seconds()
        return report(wall, trial_walls(args.run_dir))
    scen = scenario.load(args.scenario)
    args.parallel = args.parallel or len(scen.trials)
    with tempfile.TemporaryDirectory(prefix="bench-matrix-") as tmp:
        t0 = time.monotonic()
        MatrixRun(scen, Path(tmp), parallel=args.parallel).run()
        wall = time.monotonic() - t0
        print(f"{args.scenario.name}: {len(scen.trials)} trials, --parallel {args.parallel}")
        return report(wall, trial_walls(Path(tmp)))


if __name__ == "__main__":
    raise SystemExit(main())
