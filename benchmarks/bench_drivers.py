"""Benchmark: the oltp driver against the real sysbench on the same scenario.

Runs each trial of scenarios/sysbench-switchover.toml (sysbench, then oltp; 1 thread, the
LVS-NAT switchover with tcp_retries2=5) one at a time, so neither competes with the other for
the 2 vCPUs, and prints for each: the mean qps before the fault (the driver's own client
cost over a same-host link), the outage, and the two checks of the issue:
  * the outages agree within 5 %,
  * oltp reaches >= 0.7 x sysbench's qps at 1 thread: the ratio of each run (its two trials
    back to back), its median, min and max over --runs runs (qps on this VM wanders from run
    to run with what else runs on it).
Packet capture is off unless --capture (tcpdump costs CPU that both drivers would share); the
fault comes after --warm-s seconds of load (the scenario's 5 s is too short a qps window:
sysbench's qps wanders by 2x from second to second on this VM).

Both loads are unlimited (load.rate 0, whatever the scenario says): this is a throughput test.

    .venv/bin/python benchmarks/bench_drivers.py [--runs 3] [--warm-s 15] [--capture]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from lab.config import scenario
from lab.config.settings import TrialSettings
from lab.experiment.trial import TrialResult, run_trial

ROOT = Path(__file__).resolve().parents[1]
SCENARIO = ROOT / "scenarios" / "sysbench-switchover.toml"
OUTAGE_TOLERANCE = 0.05
QPS_RATIO = 0.7


def steady_qps(result: TrialResult) -> float:
    """Mean qps of the full samples before the fault (the first two seconds are warm-up)."""
    fault = result.fault_t if result.fault_t is not None else float("inf")
    qps = [s["qps"] for s in result.samples if s["t"] <= fault and s.get("interval_s") == 1.0]
    return statistics.fmean(qps[2:] or qps) if qps else 0.0


def run(trial: TrialSettings, out: Path) -> tuple[float, float | None]:
    result = run_trial(trial, out / trial.name)
    return steady_qps(result), result.recover_s


def spread(values: list[float], fmt: str = ".0f") -> str:
    """median (min..max)."""
    if not values:
        return "-"
    return (f"{statistics.median(values):{fmt}} "
            f"({min(values):{fmt}}..{max(values):{fmt}})")


def trials_to_run(args: argparse.Namespace) -> dict[str, TrialSettings]:
    """The scenario's trials by driver, with the benchmark's capture, warm-up and an
    unlimited load (load.rate 0: this measures throughput)."""
    trials = {}
    for t in scenario.load(SCENARIO).trials:
        data = t.model_dump()
        data["capture"] = args.capture
        data["fault"]["at_s"] = args.warm_s
        data["load"]["rate"] = 0.0
        trials[t.load.driver] = TrialSettings.model_validate(data)
    return trials


def report(measured: dict[str, list[tuple[float, float | None]]]) -> None:
    """Per driver: qps and outage, median (min..max) over the runs; then the two checks."""
    print(f"\n{'driver':10s}{'qps (1 thread), median (min..max)':>36s}"
          f"{'outage s, median (min..max)':>32s}")
    outages = {d: [o for _, o in m if o is not None] for d, m in measured.items()}
    for d, m in measured.items():
        print(f"{d:10s}{spread([q for q, _ in m]):>36s}{spread(outages[d], '.3f'):>32s}")
    sb, ol = outages.get("sysbench"), outages.get("oltp")
    if sb and ol:
        diff = abs(statistics.median(sb) - statistics.median(ol)) / statistics.median(ol)
        print(f"outage difference {100 * diff:.1f} % of the medians "
              f"({'ok' if diff <= OUTAGE_TOLERANCE else 'FAIL'}: <= {100 * OUTAGE_TOLERANCE:g} %)")
    # the ratio of each run (its two trials ran back to back), then over the runs
    ratios = [o / s for (o, _), (s, _) in zip(measured["oltp"], measured["sysbench"],
                                              strict=True) if s > 0]
    median = statistics.median(ratios) if ratios else 0.0
    print(f"oltp / sysbench qps over {len(ratios)} run(s): median {median:.2f}, min "
          f"{min(ratios, default=0):.2f}, max {max(ratios, default=0):.2f} "
          f"({'ok' if median >= QPS_RATIO else 'BELOW TARGET'}: median >= {QPS_RATIO})")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", "--repeat", dest="runs", type=int, default=3,
                        help="runs of both trials (the ratio is taken per run)")
    parser.add_argument("--warm-s", type=float, default=15.0, help="load before the fault")
    parser.add_argument("--capture", action="store_true", help="keep the packet capture on")
    args = parser.parse_args()
    trials = trials_to_run(args)
    measured: dict[str, list[tuple[float, float | None]]] = {d: [] for d in trials}
    with tempfile.TemporaryDirectory(prefix="bench-drivers-") as tmp:
        for i in range(args.runs):
            for driver, trial in trials.items():
                qps, outage = run(trial, Path(tmp) / str(i))
                measured[driver].append((qps, outage))
                print(f"run {i + 1}: {driver:8s} qps {qps:8.0f}  outage "
                      f"{'-' if outage is None else f'{outage:.3f} s'}", flush=True)
    report(measured)


if __name__ == "__main__":
    main()
