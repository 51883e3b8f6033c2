"""Benchmark: setup + teardown time of one trial's world (target <= 5 s).

Builds what a trial builds before load starts (4 namespaces, veth links, routes, sysctls,
2 MariaDB servers from the template datadir, the nft virtual service with a real server) and
tears it all down, N times, and prints the figures. The first MariaDB template build is a
one-time cost per machine and is reported separately.

    .venv/bin/python benchmarks/bench_trial_setup.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

from lab.backends.mariadb import MariaDBServer
from lab.lb import LbOptions, RealServer, make
from lab.net.runtime import new_run
from lab.net.topology import Network, lvs_topology, lvs_vip

TARGET_S = 5.0


def one_trial_world() -> tuple[float, float]:
    t0 = time.monotonic()
    run = new_run()
    net = Network(lvs_topology({"net.ipv4.tcp_retries2": 5}), run)
    vip = lvs_vip(run)
    net.add_address("lb", str(vip), "to-client")
    backends = [
        MariaDBServer(net[n], net[n].address_towards("lb")) for n in ("backend1", "backend2")
    ]
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda b: b.start(), backends))
    balancer = make("nft", net["lb"], vip, 3001, LbOptions())
    balancer.setup()
    balancer.add_real_server(RealServer("backend1", backends[0].address, backends[0].port))
    t1 = time.monotonic()
    balancer.close()
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda b: b.stop(), backends))
    net.close()
    run.release()
    return t1 - t0, time.monotonic() - t1


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    t = time.monotonic()
    first = one_trial_world()
    print(f"first run (may include the one-time MariaDB template build): "
          f"setup {first[0]:.2f} s, teardown {first[1]:.2f} s ({time.monotonic() - t:.2f} s)")
    setups, teardowns = [], []
    for _ in range(args.repeat):
        s, d = one_trial_world()
        setups.append(s)
        teardowns.append(d)
    total = [s + d for s, d in zip(setups, teardowns, strict=True)]
    print(f"{args.repeat} runs: setup median {statistics.median(setups):.2f} s "
          f"(max {max(setups):.2f}), teardown median {statistics.median(teardowns):.2f} s "
          f"(max {max(teardowns):.2f})")
    verdict = "meets" if statistics.median(total) <= TARGET_S else "MISSES"
    print(f"setup + teardown median {statistics.median(total):.2f} s, max {max(total):.2f} s: "
          f"{verdict} the {TARGET_S:.0f} s target (4 namespaces, 2 MariaDB, nft service, "
          "on this machine)")


if __name__ == "__main__":
    main()
