"""Weights for the nft engine: integer scaling, interleaved weighted scheduling, scoped resets."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator
from fractions import Fraction as F
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lab.lb.base import LbOptions, RealServer
from lab.lb.nft import NftLoadBalancer
from lab.net.process import ChildProcess
from lab.net.runtime import Run
from lab.net.topology import Host, Network, Topology, lvs_vip
from lab.tm.live.lb import WeightedNftLoadBalancer, integer_weights
from lab.tm.live.runner import READY_TIMEOUT_S, announced

PEER = str(Path(__file__).with_name("peer.py"))


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
        self.children: list[ChildProcess] = []
        self.servers = {}
        for name in ("A", "B"):
            host = net[name]
            address = host.address_towards("lb")
            config = {"name": name, "address": str(address), "port": 8080,
                      "costs": {"free": 0.1}, "budget_ms_per_s": 500,
                      "stats": str(host.workdir / "s.json"),
                      "control": str(host.workdir / "c.json")}
            site = self._start(host, ["-m", "lab.tm.live.site", json.dumps(config)], "site")
            assert announced(site, "listening", READY_TIMEOUT_S), site.tail()
            self.servers[name] = RealServer(name, address, 8080)

    def _start(self, host: Host, args: list[str], log: str, **popen: Any) -> ChildProcess:
        child = host.start([sys.executable, *args], host.workdir / f"{log}.log",
                           stdout=subprocess.PIPE, text=True, **popen)
        self.children.append(child)
        return child

    def service(self, cls: type[NftLoadBalancer], port: int, weights: dict[str, int]
                ) -> NftLoadBalancer:
        lb = cls(self.net["lb"], self.vip, port, LbOptions())
        lb.setup()
        for name, w in weights.items():
            lb.add_real_server(self.servers[name], w)
        return lb

    def peer(self, *args: str) -> subprocess.Popen[str]:
        return self._start(self.net["client"], [PEER, *args], "peer", stdin=subprocess.PIPE).proc

    def close(self) -> None:
        for child in self.children:
            child.stop()


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
    with Network(topo, lab_run) as net, contextlib.closing(Rig(net, lab_run)) as rig:
        yield rig


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
