"""Weights for the nft engine: integer scaling, random weighted scheduling, scoped resets."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from fractions import Fraction as F
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lab.lb.base import LbOptions, RealServer
from lab.lb.nft import NftLoadBalancer
from lab.net.runtime import Run
from lab.net.topology import Network, Topology, lvs_vip
from lab.tm.live.lb import WeightedNftLoadBalancer, integer_weights, interleave

PEER = str(Path(__file__).with_name("peer.py"))


def test_interleave_spreads_each_server_evenly() -> None:
    order = interleave([(1, 850), (2, 100), (3, 50)])
    assert len(order) == 1000 and order.count(2) == 100 and order.count(3) == 50
    for start in range(0, 1000 - 40, 7):  # any 40 consecutive slots: 34 / 4 / 2, +-1
        window = order[start : start + 40]
        assert abs(window.count(2) - 4) <= 1 and abs(window.count(3) - 2) <= 1
    assert interleave([(1, 1), (2, 1)]) == [1, 2]


def test_integer_weights_examples() -> None:
    assert integer_weights({"A": F(1), "B": F(0)}, 1000) == {"A": 1000, "B": 0}
    assert integer_weights({"A": F(1, 3), "B": F(1, 3), "C": F(1, 3)}, 1000) == {
        "A": 334, "B": 333, "C": 333
    }
    assert integer_weights({"A": F(0), "B": F(0)}, 1000) == {"A": 0, "B": 0}


@given(st.lists(st.fractions(min_value=0, max_value=1), min_size=1, max_size=6))
def test_integer_weights_add_up_and_stay_close(parts: list[F]) -> None:
    fractions = {f"s{i}": f for i, f in enumerate(parts)}
    total = sum(parts, F(0))
    w = integer_weights(fractions, 1000)
    if total == 0:
        assert set(w.values()) == {0}
        return
    assert sum(w.values()) == 1000
    for name, f in fractions.items():
        assert abs(w[name] - f / total * 1000) < 1


class Rig:
    """client -- lb (two services on one VIP) -- sites A and B running lab.tm.live.site."""

    def __init__(self, net: Network, run: Run) -> None:
        self.net = net
        self.vip = lvs_vip(run)
        net.add_address("lb", str(self.vip), "to-client")
        self.procs: list[subprocess.Popen[str]] = []
        self.servers = {}
        for name in ("A", "B"):
            host = net[name]
            address = host.address_towards("lb")
            config = {"name": name, "address": str(address), "port": 8080,
                      "costs": {"free": 0.1}, "budget_ms_per_s": 500,
                      "stats": str(host.workdir / "s.json"),
                      "control": str(host.workdir / "c.json")}
            p = host.popen([sys.executable, "-m", "lab.tm.live.site", json.dumps(config)],
                           stdout=subprocess.PIPE, text=True)
            self.procs.append(p)
            assert p.stdout is not None and p.stdout.readline().strip() == "listening"
            self.servers[name] = RealServer(name, address, 8080)

    def service(self, cls: type[NftLoadBalancer], port: int, weights: dict[str, int]
                ) -> NftLoadBalancer:
        lb = cls(self.net["lb"], self.vip, port, LbOptions())
        lb.setup()
        for name, w in weights.items():
            lb.add_real_server(self.servers[name], w)
        return lb

    def peer(self, *args: str) -> subprocess.Popen[str]:
        p = self.net["client"].popen([sys.executable, PEER, *args], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        self.procs.append(p)
        return p

    def close(self) -> None:
        for p in self.procs:
            p.kill()
            p.wait()


@pytest.fixture
def rig(lab_run: Run) -> Iterator[Rig]:
    topo = Topology()
    topo.add_host("client", gateway="lb")
    topo.add_host("lb", forwarding=True)
    for name in ("A", "B"):
        topo.add_host(name, gateway="lb")
    topo.add_link("client", "lb")
    topo.add_link("lb", "A")
    topo.add_link("lb", "B")
    with Network(topo, lab_run) as net:
        r = Rig(net, lab_run)
        try:
            yield r
        finally:
            r.close()


@pytest.mark.root
def test_new_connections_follow_the_weights_from_the_first_one(rig: Rig) -> None:
    lb = rig.service(WeightedNftLoadBalancer, 9001, {"A": 700, "B": 300})
    assert isinstance(lb, WeightedNftLoadBalancer)
    out, _ = rig.peer("count", str(rig.vip), "9001", "200").communicate(timeout=30)
    seen = json.loads(out)
    assert seen == {"A": 140, "B": 60}  # interleaved: in proportion from the first one on
    lb.set_weights({"A": 500, "B": 500})  # 1000 slots, one range each: nft takes it
    out, _ = rig.peer("count", str(rig.vip), "9001", "10").communicate(timeout=30)
    assert json.loads(out) == {"A": 5, "B": 5}
    lb.set_weights({"A": 0, "B": 1000})
    out, _ = rig.peer("count", str(rig.vip), "9001", "20").communicate(timeout=30)
    assert json.loads(out) == {"B": 20}


@pytest.mark.root
@pytest.mark.parametrize(
    ("engine", "other"),
    [(WeightedNftLoadBalancer, "ok:A"),  # the reset stays within its service
     (NftLoadBalancer, "reset")],  # upstream: marks are per service, the rule is not
)
def test_a_reset_in_one_service_leaves_the_others_alone(
    rig: Rig, engine: type[NftLoadBalancer], other: str
) -> None:
    one = rig.service(engine, 9001, {"A": 1, "B": 0})
    rig.service(engine, 9002, {"A": 1, "B": 0})
    peer = rig.peer("hold", str(rig.vip), "9001", "9002")
    assert peer.stdout is not None and peer.stdin is not None
    assert peer.stdout.readline().split() == ["ok:A", "ok:A"]
    one.remove_real_server(rig.servers["A"])
    one.reset_connections(rig.servers["A"])
    peer.stdin.write("go\n")
    peer.stdin.flush()
    assert peer.stdout.readline().split() == ["reset", other]
