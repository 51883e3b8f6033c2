"""In-process nftables: a change lands in the lab namespace whatever thread makes it, never in
the host's; an error carries nft's own text; closing lets the namespace go."""

from __future__ import annotations

import subprocess
import threading
import time

import pytest

from lab.net import netfilter
from lab.net.runtime import Run
from lab.net.topology import Network, Topology

TABLE = "bhl_test_netfilter"


def _tables(argv_prefix: list[str]) -> str:
    return subprocess.run([*argv_prefix, "nft", "list", "tables"], capture_output=True,
                          text=True, check=True).stdout


@pytest.mark.root
def test_changes_land_in_the_namespace_from_any_thread(lab_run: Run) -> None:
    topo = Topology()
    topo.add_host("a")
    with Network(topo, lab_run) as net:
        host = net["a"]
        host.nft_context()  # opened inside the namespace, by a thread of its own
        errors: list[BaseException] = []

        def from_another_thread() -> None:
            try:
                host.nft(f"add table ip {TABLE}\n"
                         f"add chain ip {TABLE} c {{ type filter hook forward priority 0; }}\n")
            except BaseException as exc:
                errors.append(exc)

        t = threading.Thread(target=from_another_thread)  # a host-namespace thread
        t.start()
        t.join()
        assert not errors
        assert TABLE in _tables(host.command([]))
        assert TABLE not in _tables([])  # the host namespace is untouched
        with pytest.raises(RuntimeError, match="No such file or directory"):
            host.nft("delete table ip bhl_test_no_such_table")
        host.nft(f"delete table ip {TABLE}")
        assert TABLE not in _tables(host.command([]))


@pytest.mark.root
def test_a_change_takes_well_under_a_millisecond_on_a_quiet_machine(lab_run: Run) -> None:
    """Not a speed target (benchmarks/bench_scale.py prints those): a sanity bound that fails
    only if the change went through a process again (~5-10 ms each here)."""
    topo = Topology()
    topo.add_host("a")
    with Network(topo, lab_run) as net:
        host = net["a"]
        host.nft(f"add table ip {TABLE}\nadd chain ip {TABLE} c\n")
        netfilter.forget_applied()
        before = time.monotonic()
        host.nft(f"flush chain ip {TABLE} c\n")
        stamped = netfilter.last_applied()  # the instant the change was in place
        assert stamped is not None and before < stamped < time.monotonic()
        took = []
        for i in range(50):
            t0 = time.perf_counter()
            host.nft(f"flush chain ip {TABLE} c\nadd rule ip {TABLE} c ip daddr 10.0.0.{i} drop\n")
            took.append(time.perf_counter() - t0)
        assert sorted(took)[25] < 0.005


@pytest.mark.root
def test_close_drops_the_context_with_the_namespace(lab_run: Run) -> None:
    """A context left open would keep the removed namespace alive and take later changes
    into it silently; after close a change fails because the namespace is gone."""
    topo = Topology()
    topo.add_host("a")
    net = Network(topo, lab_run)
    host = net["a"]
    host.nft(f"add table ip {TABLE}\n")
    net.close()
    with pytest.raises(OSError):
        host.nft(f"delete table ip {TABLE}\n")
