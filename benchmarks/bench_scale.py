"""Benchmark: N identical tcp_retries2=5 switchover trials side by side, every verdict right.

Issue 15's targets, printed from one run: every verdict ok, the fault applied within 5 ms at
the 99th percentile (summary.csv `fault_apply_ms`), wall / longest trial <= 1.15, and the
peak memory the matrix took (the machine's used memory above what it used before, sampled
every 0.5 s, and this process's own peak RSS).

    .venv/bin/python benchmarks/bench_scale.py [--trials N] [--parallel P] [--set KEY=VALUE]...

Default: 64 trials (the lab's slot limit), all side by side. `--set` passes scenario keys to
every trial, e.g. `--set load.rate=50`. `--mix` cycles the trials through every fault kind
(switchover, crash, kill, hang, partition drop and reject) on both engines that run here (nft,
proxy = HAProxy) and prints fault_apply_ms per kind and engine; the wall ratio is then not a
target (the kinds' trials differ in length). `--article` puts the article's scenario
(scenarios/seed-lvs-mysql.toml: the 938 s baseline and its six fixes, with their own settings)
among the N trials (it then lasts ~16 min). Exit 0 when every target is met.
"""

from __future__ import annotations

import argparse
import csv
import json
import resource
import statistics
import tempfile
import threading
import time
import tomllib
from pathlib import Path
from typing import Any

from lab.config import scenario
from lab.experiment.matrix import MatrixRun

APPLY_P99_TARGET_MS = 5.0
WALL_TARGET = 1.15
SCENARIO = 'description = "bench_scale: tcp_retries2=5 switchovers side by side"\n'
# each bench trial's own keys (not [defaults]: the article's trials keep the lab's defaults)
BENCH_KEYS: dict[str, Any] = {"deadline_s": 40, "after_s": 4, "fault.kind": "switchover",
                              "fault.at_s": 5, "client.tcp_retries2": 5}
# --mix: each fault kind with the short settings of scenarios/mitigations-short.toml
MIX_KINDS: dict[str, dict[str, Any]] = {
    "switchover": {},
    "crash": {"fault.kind": "crash", "fault.failover_after_s": 2},
    "kill": {"fault.kind": "kill", "fault.failover_after_s": 2},
    "hang": {"fault.kind": "hang", "fault.failover_after_s": 1, "client.read_timeout_s": 3},
    "partition-drop": {"fault.kind": "partition", "fault.partition_mode": "drop",
                       "fault.failover_after_s": 2},
    "partition-reject": {"fault.kind": "partition", "fault.partition_mode": "reject",
                         "fault.failover_after_s": 2},
}
MIX_ENGINES = ("nft", "proxy")


def block(keys: dict[str, Any]) -> str:
    return "\n[[trial]]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in keys.items())


def trial_block(i: int, mix: bool) -> str:
    if not mix:
        return block({"name": f"switchover-{i:02d}", **BENCH_KEYS})
    combos = [(k, e) for e in MIX_ENGINES for k in MIX_KINDS]
    kind, engine = combos[i % len(combos)]
    return block({"name": f"{kind}-{engine}-{i:02d}", **BENCH_KEYS, "lb.engine": engine,
                  **MIX_KINDS[kind]})


ARTICLE = Path(__file__).resolve().parents[1] / "scenarios" / "seed-lvs-mysql.toml"


def flat(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A TOML table's dotted keys: {"client": {"tcp_retries2": 5}} -> {"client.tcp_retries2": 5}."""
    out: dict[str, Any] = {}
    for k, v in table.items():
        if isinstance(v, dict):
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def article_blocks() -> list[str]:
    """The article's trials, each carrying its scenario's defaults (the bench's differ)."""
    data = tomllib.loads(ARTICLE.read_text())
    defaults = flat(data["defaults"])
    blocks = []
    for t in data["trial"]:
        keys = {**defaults, **flat(t)}
        keys["name"] = f"article-{keys['name']}"
        blocks.append(block(keys))
    return blocks


def write_scenario(folder: Path, trials: int, mix: bool = False, article: bool = False) -> Path:
    path = folder / "bench-scale.toml"
    head = article_blocks() if article else []
    rest = [trial_block(i, mix) for i in range(trials - len(head))]
    path.write_text(SCENARIO + "".join(head + rest))
    return path


def apply_by_kind(rows: list[dict[str, str]]) -> None:
    """fault_apply_ms per kind and engine (the trial name without its index)."""
    groups: dict[str, list[float]] = {}
    for r in rows:
        if r.get("fault_apply_ms"):
            groups.setdefault(r["trial"].rsplit("-", 1)[0], []).append(float(r["fault_apply_ms"]))
    for name, ms in sorted(groups.items()):
        print(f"  {name:24} n={len(ms):2}  median {statistics.median(ms):.3f}  "
              f"max {max(ms):.3f} ms")


def used_mib() -> float:
    """The machine's used memory (MemTotal - MemAvailable), MiB."""
    info = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, value = line.split(":", 1)
        info[key] = int(value.split()[0])
    return (info["MemTotal"] - info["MemAvailable"]) / 1024


class PeakMemory:
    """Samples used memory every 0.5 s while a block runs."""

    def __init__(self) -> None:
        self.before = used_mib()
        self.peak = self.before
        self._done = threading.Event()
        self._t = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._done.wait(0.5):
            self.peak = max(self.peak, used_mib())

    def __enter__(self) -> PeakMemory:
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._t.join()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def report(rows: list[dict[str, str]], wall: float, walls: list[float], mem: PeakMemory,
           mix: bool = False) -> bool:
    verdicts = [r["verdict"] for r in rows]
    apply_ms = [float(r["fault_apply_ms"]) for r in rows if r.get("fault_apply_ms")]
    outages = [float(r["measured_outage_s"]) for r in rows if r.get("measured_outage_s")]
    ok = sum(v.startswith("ok") for v in verdicts)
    print(f"verdicts: {ok} ok of {len(rows)}")
    for r in rows:
        if not r["verdict"].startswith("ok"):
            print(f"  {r['trial']}: {r['verdict']}")
    if outages:
        print(f"measured outage: median {statistics.median(outages):.3f} s, "
              f"{min(outages):.3f}-{max(outages):.3f} s; model {rows[0]['predicted_outage_s']} s"
              + (" (of the first trial; the kinds differ)" if mix else ""))
    for r in rows:
        if r["trial"].startswith("article-"):
            print(f"  {r['trial']:28} measured {r['measured_outage_s'] or '-':>8} s, model "
                  f"{r['predicted_outage_s']:>8} s: {r['verdict']}")
    p99 = percentile(apply_ms, 0.99) if apply_ms else float("inf")
    if apply_ms:
        print(f"fault_apply_ms: median {statistics.median(apply_ms):.3f}, p99 {p99:.3f}, "
              f"max {max(apply_ms):.3f} (target p99 <= {APPLY_P99_TARGET_MS})")
        if mix:
            apply_by_kind(rows)
    ratio = wall / max(walls) if walls else float("inf")
    if walls:
        print(f"wall {wall:.1f} s, longest trial {max(walls):.1f} s: ratio {ratio:.3f} "
              f"(target <= {WALL_TARGET})")
    usage = resource.getrusage(resource.RUSAGE_SELF)
    own = usage.ru_maxrss / 1024
    print(f"this process (the trials' threads) used {usage.ru_utime + usage.ru_stime:.1f} s "
          f"of CPU in {wall:.1f} s")
    print(f"peak memory: machine {mem.peak - mem.before:.0f} MiB above the {mem.before:.0f} MiB "
          f"used before; this process {own:.0f} MiB RSS")
    return ok == len(rows) and p99 <= APPLY_P99_TARGET_MS and (mix or ratio <= WALL_TARGET)


def trial_walls(run_dir: Path) -> list[float]:
    return [float(json.loads(f.read_text())["facts"]["wall_s"])
            for f in run_dir.glob("*/trial.json")]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=64)
    ap.add_argument("--parallel", type=int, default=0, help="side by side (default: all)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--mix", action="store_true", help="every fault kind on nft and proxy")
    ap.add_argument("--article", action="store_true",
                    help="the article's 7 trials (the 938 s baseline) among the N")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        path = write_scenario(Path(tmp), args.trials, args.mix, args.article)
        scen = scenario.load(path, args.set)
        run_dir = Path(tmp) / "run"
        parallel = args.parallel or args.trials
        print(f"{args.trials} trials{' (mixed kinds)' if args.mix else ''}"
              f"{' (the article among them)' if args.article else ''}, --parallel "
              f"{parallel}, set {args.set or 'nothing'}")
        with PeakMemory() as mem:
            t0 = time.monotonic()
            MatrixRun(scen, run_dir, parallel=parallel).run()
            wall = time.monotonic() - t0
        with (run_dir / "summary.csv").open() as f:
            rows = list(csv.DictReader(f))
        return 0 if report(rows, wall, trial_walls(run_dir), mem, args.mix) else 1


if __name__ == "__main__":
    raise SystemExit(main())
