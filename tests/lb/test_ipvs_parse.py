"""The ipvs engine's host-independent parts: the `ipvsadm -Lcn` parser and the engine choice
(the engine itself runs on real IPVS in the VM: tests/vm/test_ipvs.py)."""

from __future__ import annotations

import ipaddress

import pytest

from lab import lb
from lab.errors import LabError
from lab.lb.base import RealServer
from lab.lb.ipvs import masq_dest, parse_ipvsadm_conn_line

IPVSADM_LCN = """\
IPVS connection entries
pro expire state       source             virtual            destination
TCP 14:58  ESTABLISHED 198.18.0.1:41632   198.18.0.100:3001  198.18.1.2:3306
TCP 01:52  FIN_WAIT    198.18.0.1:41630   198.18.0.100:3001  198.18.2.2:3306
"""


def test_parses_ipvsadm_connection_lines() -> None:
    rows = [parse_ipvsadm_conn_line(line, {"198.18.1.2:3306": "backend1"})
            for line in IPVSADM_LCN.splitlines()]
    conns = [c for c in rows if c is not None]
    assert len(conns) == 2  # the two header lines are not connections
    first = conns[0]
    assert (first.protocol, first.expire_s, first.state) == ("TCP", 898.0, "ESTABLISHED")
    assert (first.source, first.virtual, first.destination) == (
        "198.18.0.1:41632", "198.18.0.100:3001", "198.18.1.2:3306")
    assert first.real_server == "backend1" and conns[1].real_server is None
    assert conns[1].expire_s == 112.0


def test_ipvs_is_refused_with_the_fix_where_the_kernel_has_none() -> None:
    if lb.kernel_has_ipvs():
        assert lb.choose_engine("auto")[0] == "ipvs"
        return
    assert lb.choose_engine("auto")[0] == "nft"
    with pytest.raises(LabError, match="make vm-test"):
        lb.choose_engine("ipvs")


def test_real_servers_are_added_in_nat_mode() -> None:
    dest = masq_dest(RealServer("b", ipaddress.ip_address("10.0.0.2"), 3306), 3)
    assert dest["fwd_method"] == 0 and dest["weight"] == 3  # not pyroute2's default 3 (DR)
