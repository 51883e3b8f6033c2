"""Benchmark: the cost of one evidence snapshot (every 0.5 s per trial), netlink vs a process.

In a lab namespace with N TCP connections (client side of each through a DNAT with a ct
mark, as the nft LB makes them, so the namespace also has N conntrack entries), it times one
snapshot of each table, as the capture layer takes it now and as it took it before:
- sockets: lab.net.sockdiag's dump (SockDiag.tcp), SocketSnapshots.read (the dump plus the
  conversion to ss's vocabulary), and `ip netns exec NS ss -tnoiHO state all dst VIP:PORT`
  (the process only: its text is not parsed, which favours it);
- conntrack: lab.net.conntrack's walk (ConntrackTable.dump), its follower
  (ConntrackFollower.entries: events and lookups), ConntrackSnapshots.read (the follower
  plus the conversion), and `ip netns exec NS conntrack -L -p tcp` (the process only);
- for reference, pyroute2 0.9's DiagSocket (made and used in a thread inside the namespace)
  and Conntrack(netns=NS).dump_entries (--no-pyroute2 skips them).
Each figure is the median over --runs runs of each run's median of --snapshots snapshots;
"cpu" is the CPU time per snapshot of this process and its children together (a process per
snapshot costs the machine that CPU on every trial's tick).

    .venv/bin/python benchmarks/bench_snapshots.py [--connections 1 64] [--runs 5]
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import shutil
import socket
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

from lab.capture.conntrack import ConntrackSnapshots
from lab.capture.sockets import SocketSnapshots
from lab.net.conntrack import ConntrackFollower, ConntrackTable
from lab.net.runtime import Run, new_run
from lab.net.sockdiag import SockDiag
from lab.net.topology import Host, Network, Topology, in_netns

VPORT = 7000


def cpu_s() -> float:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(
        resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def measure(fn: Callable[[], object], snapshots: int, runs: int) -> tuple[float, float]:
    """(median wall ms, cpu ms) per call: the median of each run's median."""
    fn()  # warm: the first call may import, open, fault pages in
    medians, cpu = [], []
    for _ in range(runs):
        walls = []
        c0 = cpu_s()
        for _ in range(snapshots):
            t0 = time.perf_counter()
            fn()
            walls.append(time.perf_counter() - t0)
        cpu.append((cpu_s() - c0) / snapshots)
        medians.append(statistics.median(walls))
    return statistics.median(medians) * 1000, statistics.median(cpu) * 1000


@contextlib.contextmanager
def world(n: int) -> Iterator[tuple[Host, str, list[socket.socket]]]:
    """A client and a server namespace, n connections client -> VIP:7000 DNATed (ct mark 1)
    to the server; yields (client, VIP, sockets)."""
    run: Run = new_run()
    topo = Topology()
    topo.add_host("client")
    topo.add_host("server")
    topo.add_link("client", "server")
    socks: list[socket.socket] = []
    try:
        with Network(topo, run) as net:
            client, server = net["client"], net["server"]
            sip, vip = str(server.address_towards("client")), str(run.link_subnet(0)[100])
            lsock = in_netns(server.ns, socket.socket)
            socks.append(lsock)
            lsock.bind((sip, 0))
            lsock.listen(1024)
            client.nft(f"table ip bench {{\n chain out {{\n"
                       "  type nat hook output priority -100; policy accept;\n"
                       f"  ip daddr {vip} tcp dport {VPORT} ct mark set 0x1 "
                       f"dnat to {sip}:{lsock.getsockname()[1]}\n }}\n}}\n")
            try:
                for _ in range(n):
                    c = in_netns(client.ns, socket.socket)
                    socks.append(c)
                    c.connect((vip, VPORT))
                    socks.append(lsock.accept()[0])
                yield client, vip, socks
            finally:  # before the namespaces go: a socket holds its namespace
                for s in socks:
                    s.close()
    finally:
        run.release()


def pyroute2_rows(client: Host, vip: str) -> dict[str, Callable[[], object]]:
    """pyroute2's DiagSocket (bound to the thread that made it: a worker inside the
    namespace runs each dump) and Conntrack(netns=)."""
    from pyroute2 import Conntrack, DiagSocket

    ct = Conntrack(netns=client.ns)
    requests: list[threading.Event] = []
    done = threading.Event()
    lock = threading.Condition()

    def worker() -> None:  # enters the namespace once, then dumps on request
        from pyroute2 import netns
        netns.setns(client.ns, flags=0)
        with DiagSocket() as ds:
            ds.bind()
            while True:
                with lock:
                    lock.wait_for(lambda: requests or done.is_set())
                    if done.is_set():
                        return
                    ev = requests.pop()
                ds.get_sock_stats(family=socket.AF_INET, extensions=2, dport=VPORT)
                ds.get_sock_stats(family=socket.AF_INET6, extensions=2, dport=VPORT)
                ev.set()

    t = threading.Thread(target=worker, daemon=True)
    t.start()

    def diag() -> None:
        ev = threading.Event()
        with lock:
            requests.append(ev)
            lock.notify()
        ev.wait()

    def stop() -> None:
        with lock:
            done.set()
            lock.notify()
        t.join()
        ct.close()

    return {"pyroute2 DiagSocket (2 dumps)": diag,
            "pyroute2 Conntrack.dump_entries": lambda: list(ct.dump_entries()),
            "_stop": stop}


def rows_for(client: Host, vip: str, tmp: Path, with_pyroute2: bool,
             stack: contextlib.ExitStack) -> dict[str, Callable[[], Any]]:
    diag = stack.enter_context(SockDiag(client.ns))
    table = stack.enter_context(ConntrackTable(client.ns))
    follower = stack.enter_context(ConntrackFollower(client.ns))
    snaps = SocketSnapshots(client, vip, VPORT, tmp / "sockets.csv")
    stack.callback(snaps.close)
    cts = ConntrackSnapshots(client, tmp / "lb.csv", virtual=vip)
    stack.callback(cts.close)
    rows: dict[str, Callable[[], Any]] = {
        "sockets: netlink SockDiag.tcp": lambda: diag.tcp(vip, VPORT),
        "sockets: SocketSnapshots.read": snaps.read,
        "sockets: fork ss -tnoiHO": lambda: client.run(
            ["ss", "-tnoiHO", "state", "all", "dst", f"{vip}:{VPORT}"]),
        "conntrack: netlink ConntrackTable.dump": table.dump,
        "conntrack: netlink ConntrackFollower": follower.entries,
        "conntrack: ConntrackSnapshots.read": cts.read,
    }
    if shutil.which("conntrack"):
        rows["conntrack: fork conntrack -L"] = lambda: client.run(
            ["conntrack", "-L", "-p", "tcp"], check=False)
    if with_pyroute2:
        extra = pyroute2_rows(client, vip)
        stack.callback(extra.pop("_stop"))
        rows.update(extra)
    return rows


def bench(n: int, args: argparse.Namespace) -> list[tuple[str, int, float, float]]:
    out = []
    with world(n) as (client, vip, _socks), TemporaryDirectory() as tmp, \
            contextlib.ExitStack() as stack:
        rows = rows_for(client, vip, Path(tmp), args.pyroute2, stack)
        assert len(rows["sockets: netlink SockDiag.tcp"]()) == n
        assert len(rows["conntrack: ConntrackSnapshots.read"]()) == n
        for name, fn in rows.items():
            wall, cpu = measure(fn, args.snapshots, args.runs)
            out.append((name, n, wall, cpu))
            print(f"{name:42s} {n:4d} {wall:9.3f} ms {cpu:9.3f} ms cpu", flush=True)
    return out


def sizes() -> str:
    """The kernel's hash tables a dump walks, whatever the namespace holds."""
    found = []
    for name in ("net/ipv4/tcp_ehash_entries", "net/netfilter/nf_conntrack_buckets"):
        with contextlib.suppress(OSError):
            found.append(f"{name.rsplit('/', 1)[1]} {Path('/proc/sys', name).read_text().strip()}")
    return ", ".join(found)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--connections", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--snapshots", type=int, default=20)
    parser.add_argument("--no-pyroute2", dest="pyroute2", action="store_false")
    args = parser.parse_args()
    load = Path("/proc/loadavg").read_text().split()[0]
    print(f"one snapshot, median of {args.runs} runs x {args.snapshots} snapshots "
          f"(python {sys.version.split()[0]}; {sizes()}; load {load}):")
    print(f"{'':42s} {'N':>4s} {'wall':>12s} {'cpu (self + children)':>22s}")
    results = [r for n in args.connections for r in bench(n, args)]
    print("\nnetlink vs a process, per snapshot (wall):")
    by = {(name, n): wall for name, n, wall, _cpu in results}
    for n in args.connections:
        for fork, nl in (("sockets: fork ss -tnoiHO", "sockets: SocketSnapshots.read"),
                         ("conntrack: fork conntrack -L", "conntrack: ConntrackSnapshots.read"),
                         ("conntrack: netlink ConntrackTable.dump",
                          "conntrack: ConntrackSnapshots.read")):
            if (fork, n) in by:
                print(f"  N={n:<4d} {nl:38s} {by[(nl, n)]:7.3f} ms vs {fork:38s} "
                      f"{by[(fork, n)]:7.3f} ms ({by[(fork, n)] / by[(nl, n)]:.0f}x)")


if __name__ == "__main__":
    main()
