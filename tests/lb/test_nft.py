"""The nft engine must behave like IPVS in LVS-NAT mode (real namespaces, real TCP)."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.lb import LbOptions, RealServer, make
from lab.lb.nft import NftLoadBalancer, connection, interleave, slot_map
from lab.net.conntrack import CtEntry, Tuple
from lab.net.runtime import Run
from lab.net.topology import Network, lvs_topology, lvs_vip

ECHO = str(Path(__file__).with_name("echo.py"))
PORT = 7000


class Rig:
    """client -> lb(VIP) -> backend1/backend2 running the echo server."""

    def __init__(self, net: Network, run: Run, options: LbOptions) -> None:
        self.net = net
        self.vip = lvs_vip(run)
        net.add_address("lb", str(self.vip), "to-client")
        self.servers = []
        self.procs: list[subprocess.Popen[str]] = []
        for name in ("backend1", "backend2"):
            addr = net[name].address_towards("lb")
            p = net[name].popen([sys.executable, ECHO, "server", name, str(addr), str(PORT)],
                                stdout=subprocess.PIPE, text=True)
            assert p.stdout is not None and p.stdout.readline().strip() == "listening"
            self.procs.append(p)
            self.servers.append(RealServer(name, addr, PORT))
        self.lb = make("nft", net["lb"], self.vip, 3001, options)
        self.lb.setup()
        self.lb.add_real_server(self.servers[0])
        self.client = net["client"].popen(
            [sys.executable, ECHO, "client", str(self.vip), "3001"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.procs.append(self.client)
        assert self.ask("") == "connected"

    def ask(self, cmd: str) -> str:
        assert self.client.stdin is not None and self.client.stdout is not None
        if cmd:
            self.client.stdin.write(cmd + "\n")
            self.client.stdin.flush()
        return self.client.stdout.readline().strip()

    def close(self) -> None:
        for p in self.procs:
            p.kill()
            p.wait()


@pytest.fixture
def rig(request: pytest.FixtureRequest, lab_run: Run) -> Iterator[Rig]:
    options = getattr(request, "param", LbOptions())
    with Network(lvs_topology(), lab_run) as net:
        r = Rig(net, lab_run, options)
        try:
            yield r
        finally:
            r.close()


def test_a_conntrack_entry_as_a_connection_of_its_real_server() -> None:
    e = CtEntry(Tuple("198.18.0.1", "198.18.0.100", 6, 40000, 3001),
                Tuple("198.18.1.2", "198.18.0.1", 6, 3306, 40000), "ESTABLISHED", 431999, 1)
    c = connection(e, {1: "backend1"})
    assert (c.protocol, c.state, c.source, c.virtual, c.destination, c.real_server) == (
        "TCP", "ESTABLISHED", "198.18.0.1:40000", "198.18.0.100:3001", "198.18.1.2:3306",
        "backend1")
    assert c.expire_s == 431999
    assert connection(e, {2: "backend2"}).real_server is None  # a mark of no known server


def test_interleave_spreads_each_server_evenly() -> None:
    order = interleave([(1, 850), (2, 100), (3, 50)])
    assert len(order) == 1000 and order.count(2) == 100 and order.count(3) == 50
    for start in range(0, 1000 - 40, 7):  # any 40 consecutive slots: 34 / 4 / 2, +-1
        window = order[start : start + 40]
        assert abs(window.count(2) - 4) <= 1 and abs(window.count(3) - 2) <= 1
    assert interleave([(1, 1), (2, 1)]) == [1, 2]


def test_slot_map_folds_runs_into_ranges() -> None:
    assert slot_map([1, 1, 2, 2, 2]) == "0-1 : 0x1, 2-4 : 0x2"
    assert slot_map([2, 1, 2, 2]) == "0 : 0x2, 1 : 0x1, 2-3 : 0x2"


def installed_slots(lb: NftLoadBalancer) -> list[tuple[str, int]]:
    """The scheduling map as nft holds it: (slot or range, mark) in slot order."""
    svc = lb.host.run(["nft", "list", "chain", "ip", lb.table, "svc"]).stdout
    body = re.search(r"numgen inc mod \d+ map \{ (.*?) \}", svc)
    assert body is not None, svc
    return [(key, int(mark, 16)) for key, mark in re.findall(r"([\d-]+) : (0x[0-9a-f]+)",
                                                             body.group(1))]


class Interleaved(NftLoadBalancer):
    interleave_slots = True
    scope_nodest = True


@pytest.mark.root
def test_set_weights_rewrites_the_map_in_one_go(rig: Rig) -> None:
    rig.lb.add_real_server(rig.servers[1], weight=0)
    assert rig.lb.weights() == {"backend1": 1, "backend2": 0}
    assert installed_slots(rig.lb) == [("0", 1)]
    rig.lb.set_weights({"backend1": 1, "backend2": 3})
    assert rig.lb.weights() == {"backend1": 1, "backend2": 3}
    assert installed_slots(rig.lb) == [("0", 1), ("1-3", 2)]  # one range per server
    with pytest.raises(ValueError, match="nobody is not a real server"):
        rig.lb.set_weights({"backend2": 1, "nobody": 1})
    assert rig.lb.weights() == {"backend1": 1, "backend2": 3}  # nothing changed
    assert installed_slots(rig.lb) == [("0", 1), ("1-3", 2)]


@pytest.mark.root
def test_interleaved_slots_and_scoped_nodest_rules(rig: Rig) -> None:
    lb = Interleaved(rig.net["lb"], rig.vip, 3002, LbOptions())
    lb.setup()
    try:
        lb.add_real_server(rig.servers[0], 1)
        lb.add_real_server(rig.servers[1], 3)
        assert installed_slots(lb) == [("0", 2), ("1", 1), ("2-3", 2)]
        lb.remove_real_server(rig.servers[0])
        nodest = lb.host.run(["nft", "list", "chain", "ip", lb.table, "nodest"]).stdout
        assert f"ct original ip daddr {rig.vip} ct original proto-dst 3002" in nodest, nodest
        rig.lb.remove_real_server(rig.servers[0])  # the upstream rule matches the mark alone
        upstream = rig.lb.host.run(["nft", "list", "chain", "ip", rig.lb.table, "nodest"]).stdout
        assert "drop" in upstream and "ct original" not in upstream, upstream
    finally:
        lb.close()


@pytest.mark.root
def test_switchover_blackholes_old_connection_and_moves_new_ones(rig: Rig) -> None:
    assert rig.ask("send ping") == "backend1:ping"
    conns = rig.lb.connections()
    assert [c.real_server for c in conns if c.state == "ESTABLISHED"] == ["backend1"]
    rig.lb.switchover(rig.servers[0], rig.servers[1])
    # the long-lived connection is blackholed: no answer, no reset (expire_nodest_conn=0)
    assert rig.ask("send ping") == "timeout"
    # new connections land on the new real server
    assert rig.ask("new") == "backend2:hello"
    # the table still shows the old entry pointing at the removed server (ipvsadm -Lcn)
    assert any(c.real_server == "backend1" and c.state == "ESTABLISHED"
               for c in rig.lb.connections())
    dropped = rig.net["lb"].run(["nft", "list", "chain", "ip", rig.lb.table, "nodest"]).stdout
    assert "drop" in dropped and "packets 0 " not in dropped


@pytest.mark.root
def test_readding_the_server_resumes_its_connections(rig: Rig) -> None:
    rig.lb.switchover(rig.servers[0], rig.servers[1])
    assert rig.ask("send a") == "timeout"
    rig.lb.add_real_server(rig.servers[0])
    # the client's kernel retransmits the unacked "a" within ~0.4 s and the echo returns
    time.sleep(1.0)
    assert rig.ask("send b").startswith("backend1:")


@pytest.mark.root
@pytest.mark.parametrize("rig", [LbOptions(expire_nodest_conn=1)], indirect=True)
def test_expire_nodest_conn_resets_the_client(rig: Rig) -> None:
    assert rig.ask("send ping") == "backend1:ping"
    rig.lb.switchover(rig.servers[0], rig.servers[1])
    assert rig.ask("send ping") == "reset"
    assert rig.ask("new") == "backend2:hello"


@pytest.mark.root
@pytest.mark.parametrize("rig", [LbOptions(drain_timeout_s=1.5)], indirect=True)
def test_drain_serves_old_connections_then_resets_them(rig: Rig) -> None:
    rig.lb.switchover(rig.servers[0], rig.servers[1])
    assert rig.ask("new") == "backend2:hello"          # new ones go to the new server
    assert rig.ask("send x") == "backend1:x"           # old one still served while draining
    time.sleep(1.8)
    assert rig.ask("send y") == "reset"                # reset after drain_timeout_s


@pytest.mark.root
def test_weights_and_quiesce(rig: Rig) -> None:
    rig.lb.add_real_server(rig.servers[1], weight=3)
    answers = [rig.ask("new").split(":")[0] for _ in range(8)]
    assert answers.count("backend2") == 6 and answers.count("backend1") == 2
    rig.lb.set_weight(rig.servers[0], 0)               # quiesced: no new connections ...
    assert {rig.ask("new").split(":")[0] for _ in range(4)} == {"backend2"}
    assert rig.ask("send still") == "backend1:still"   # ... but its existing one keeps working
