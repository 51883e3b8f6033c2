"""Benchmark: what load.rate costs and saves (issue 15, item 2).

For each rate (0 = unlimited, back to back) one oltp driver runs against a MariaDB on a
direct link (no load balancer, no capture), one thread, and the benchmark prints:
  * cpu: the driver's CPU over --cpu-s seconds of steady load (utime + stime of all its
    threads, in cores), and the server's (mariadbd), with the tps reached;
  * the outage's edges, over --faults short resets: the db host answers every packet to the
    MariaDB port with a TCP reset for --hold-s, then lets it through again. Each fault is
    marked like a trial marks it, at a random instant, so it falls at any phase of the
    schedule. `detect` = the first error after the mark, `recover` = the `recovered` event
    after the reset was lifted: pacing must add to neither (a failed transaction is retried
    at once, the mark starts a transaction at once); unpaced both are about one reconnect
    (RECONNECT_PAUSE_S) plus one transaction.

    .venv/bin/python benchmarks/bench_rate.py [--rates 0,10,50,100,200] [--cpu-s 10]
        [--faults 10] [--hold-s 0.3]
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lab.backends.mariadb import MariaDBServer
from lab.config.settings import ClientSettings, LoadSettings
from lab.load import driver_config
from lab.load.base import DriverProcess
from lab.net.runtime import new_run
from lab.net.topology import Network, Topology

RESET_TO_DB = """table inet bench_rate_reset {
    chain input { type filter hook input priority 0; policy accept;
        tcp dport 3306 reject with tcp reset; }
}
"""
TICK_S = 0.01  # /proc/PID/stat counts CPU time in USER_HZ ticks (100 Hz)


@contextmanager
def lab() -> Iterator[tuple[Network, MariaDBServer]]:
    """A client and a db host on one link, and a seeded MariaDB on db."""
    run = new_run()
    try:
        topo = Topology()
        topo.add_host("client")
        topo.add_host("db")
        topo.add_link("client", "db")
        with Network(topo, run) as net:
            server = MariaDBServer(net["db"], net["db"].address_towards("client"))
            server.start()
            try:
                yield net, server
            finally:
                server.stop()
    finally:
        run.release()


def cpu_s(pid: int) -> float:
    """utime + stime of a process, all its threads, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * TICK_S


def first(driver: DriverProcess, event: str, after: float, timeout: float = 5.0) -> float:
    """The time of the first `event` at or after `after`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [e["t"] for e in list(driver.output.events)
                 if e["event"] == event and e["t"] >= after]
        if found:
            return min(found)
        time.sleep(0.005)
    raise RuntimeError(f"no {event} event within {timeout} s")


def steady(driver: DriverProcess, server: MariaDBServer, seconds: float) -> dict[str, float]:
    pid, spid = driver.child.pid, server.pid
    assert pid is not None and spid is not None
    t0, c0, s0 = time.monotonic(), cpu_s(pid), cpu_s(spid)
    time.sleep(seconds)
    t1, c1, s1 = time.monotonic(), cpu_s(pid), cpu_s(spid)
    tps = [s["tps"] for s in driver.output.samples if t0 < s["t"] <= t1]
    return {"cpu": (c1 - c0) / (t1 - t0), "server_cpu": (s1 - s0) / (t1 - t0),
            "tps": statistics.fmean(tps) if tps else 0.0}


def one_fault(net: Network, driver: DriverProcess, hold_s: float) -> tuple[float, float]:
    """(first error - mark, recovered - lift) of one short reset."""
    time.sleep(random.uniform(0.3, 0.8))  # any phase of the schedule
    db = net["db"]
    db.nft(RESET_TO_DB)  # in-process (libnftables): the rule is in when it returns
    fault_t = time.monotonic()
    driver.mark_fault(fault_t)
    error_t = first(driver, "error", fault_t)
    time.sleep(max(0.0, fault_t + hold_s - time.monotonic()))
    db.nft("delete table inet bench_rate_reset")
    lifted_t = time.monotonic()
    return error_t - fault_t, first(driver, "recovered", lifted_t) - lifted_t


def measure(net: Network, server: MariaDBServer, rate: float, args: argparse.Namespace,
            log_dir: Path) -> dict[str, Any]:
    config = driver_config("oltp", str(server.address), server.port, server.client_params(),
                           ClientSettings().model_dump(), LoadSettings(rate=rate).model_dump())
    driver = DriverProcess(net["client"], config.module, config.config,
                           log_dir / f"driver-{rate:g}.log")
    try:
        driver.wait_ready(15)
        time.sleep(1.0)
        out: dict[str, Any] = steady(driver, server, args.cpu_s)
        edges = [one_fault(net, driver, args.hold_s) for _ in range(args.faults)]
    finally:
        driver.stop()
    out["detect_ms"] = [1000 * d for d, _ in edges]
    out["recover_ms"] = [1000 * r for _, r in edges]
    return out


def spread(values: list[float]) -> str:
    return (f"{statistics.median(values):6.1f} ({min(values):5.1f}..{max(values):5.1f})"
            if values else "-")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rates", default="0,10,50,100,200",
                        help="load.rate values, per second per thread (0: unlimited)")
    parser.add_argument("--cpu-s", type=float, default=10.0, help="steady load measured")
    parser.add_argument("--faults", type=int, default=10, help="short resets per rate")
    parser.add_argument("--hold-s", type=float, default=0.3, help="how long each reset lasts")
    args = parser.parse_args()
    rates = [float(r) for r in args.rates.split(",")]
    print(f"{'load.rate':>10s}{'tps':>8s}{'driver cpu':>12s}{'server cpu':>12s}"
          f"{'detect ms, median (min..max)':>32s}{'recover ms, median (min..max)':>32s}")
    with tempfile.TemporaryDirectory(prefix="bench-rate-") as tmp, lab() as (net, server):
        net["db"].nft_context()  # opened before the first fault
        for rate in rates:
            m = measure(net, server, rate, args, Path(tmp))
            print(f"{rate:>10g}{m['tps']:8.1f}{m['cpu']:12.3f}{m['server_cpu']:12.3f}"
                  f"{spread(m['detect_ms']):>32s}{spread(m['recover_ms']):>32s}", flush=True)


if __name__ == "__main__":
    main()
