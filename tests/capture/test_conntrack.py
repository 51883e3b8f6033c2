"""lb_connections.csv from the LB namespace's conntrack (ctnetlink): ipvsadm -Lcn's columns, the
mark of the backend, only the entries to the virtual service asked for."""

from __future__ import annotations

import contextlib
import csv
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.capture.conntrack import CSV_COLUMNS, ConntrackSnapshots, LbConnection, lb_connection
from lab.net.conntrack import CtEntry, Tuple
from lab.net.runtime import Run
from lab.net.topology import Network, Topology
from tests.net.test_conntrack import Dnat


def test_an_entry_as_an_ipvsadm_line() -> None:
    e = CtEntry(Tuple("198.18.0.1", "198.18.0.100", 6, 54796, 7000),
                Tuple("198.18.1.2", "198.18.0.1", 6, 7000, 54796), "ESTABLISHED", 431999, 1)
    c = lb_connection(e)
    assert c == LbConnection("TCP", 431999, "ESTABLISHED", "198.18.0.1:54796",
                             "198.18.0.100:7000", "198.18.1.2:7000", 1)
    assert (c.expire, lb_connection(CtEntry(e.orig, e.reply, "", 58, 0)).expire) == (
        "7199:59", "00:58")
    row = c.row(2.0)
    assert tuple(row) == CSV_COLUMNS and (row["t_s"], row["pro"], row["mark"]) == (
        "2.000", "TCP", 1)


def test_sources(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="source must be one of"):
        ConntrackSnapshots(None, tmp_path / "x.csv", source="cli")  # type: ignore[arg-type]


@pytest.fixture
def net(lab_run: Run) -> Iterator[Network]:
    topo = Topology()
    topo.add_host("a")
    topo.add_host("b")
    topo.add_link("a", "b")
    with Network(topo, lab_run) as n:
        yield n


@pytest.mark.root
def test_snapshots_of_the_lb_table(net: Network, lab_run: Run, tmp_path: Path) -> None:
    with contextlib.ExitStack() as stack:
        d = Dnat(net, lab_run, stack)
        ports = d.connect(2)
        path = tmp_path / "lb_connections.csv"
        snaps = ConntrackSnapshots(d.a, path, virtual=d.vip)
        assert (snaps.source_used, snaps.why) == ("netlink", "default")
        other = ConntrackSnapshots(d.a, tmp_path / "other.csv", virtual=f"{d.vip}:7001",
                                   source="netlink")
        by_port = ConntrackSnapshots(d.a, tmp_path / "port.csv", virtual=f"{d.vip}:7000")
        conns = snaps(0.5)
        assert other(0.5) == [] and sorted(by_port.read(), key=str) == sorted(conns, key=str)
        for s in (snaps, other, by_port):
            s.close()
    aip = d.a.address_towards("b")
    assert {c.source for c in conns} == {f"{aip}:{p}" for p in ports}
    assert {(c.pro, c.state, c.virtual, c.destination, c.mark) for c in conns} == {
        ("TCP", "ESTABLISHED", f"{d.vip}:7000", f"{d.bip}:{d.port}", 2)}
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [tuple(r) for r in rows] == [CSV_COLUMNS] * 2
    assert sorted(r["source"] for r in rows) == sorted(c.source for c in conns)
    assert {r["expire"] for r in rows} <= {"7199:59", "7200:00"}  # 5 days, ESTABLISHED
