"""Parsers of nstat / tcpdump text, on lines captured in the lab (kernel 6.18, tcpdump
4.99.3), and the capture tool choice. (ss's and conntrack's text: the reference parsers of
tests/capture/test_sockets.py and tests/net/test_conntrack.py.)"""

from __future__ import annotations

import pytest

from lab.capture import kernel_counters, sniffer
from lab.errors import LabError

NSTAT_JSON = (
    '{"kernel":{"IpInReceives":0,"TcpRetransSegs":6,"TcpExtTCPTimeouts":6,'
    '"TcpExtTCPLossProbes":1,"TcpExtTCPAbortOnTimeout":1}}'
)
PROC_SNMP = (  # /proc/thread-self/net/snmp of a fresh client namespace (abridged: Ip, Tcp)
    "Ip: Forwarding DefaultTTL InReceives InHdrErrors InAddrErrors ForwDatagrams "
    "InUnknownProtos InDiscards InDelivers OutRequests OutDiscards OutNoRoutes ReasmTimeout "
    "ReasmReqds ReasmOKs ReasmFails FragOKs FragFails FragCreates OutTransmits\n"
    "Ip: 2 64 0 0 0 0 0 0 0 2 0 0 0 0 0 0 0 0 0 2\n"
    "Tcp: RtoAlgorithm RtoMin RtoMax MaxConn ActiveOpens PassiveOpens AttemptFails "
    "EstabResets CurrEstab InSegs OutSegs RetransSegs InErrs OutRsts InCsumErrors\n"
    "Tcp: 1 200 120000 -1 1 0 0 0 0 0 1 1 0 0 0\n"
)


def test_nstat_json_and_proc_parse() -> None:
    c = kernel_counters.parse_nstat_json(NSTAT_JSON)
    assert c["TcpRetransSegs"] == 6 and c["TcpExtTCPLossProbes"] == 1
    p = kernel_counters.parse_proc_net(PROC_SNMP)
    assert p["TcpRetransSegs"] == 1 and p["TcpMaxConn"] == -1 and p["IpOutRequests"] == 2


def test_counter_delta() -> None:
    before = {"TcpRetransSegs": 3, "TcpExtTCPLossProbes": 0}
    after = {"TcpRetransSegs": 9, "TcpExtTCPLossProbes": 1, "TcpExtTCPTimeouts": 6}
    assert kernel_counters.delta(before, after) == {
        "TcpRetransSegs": 6, "TcpExtTCPLossProbes": 1, "TcpExtTCPTimeouts": 6}


TCPDUMP_STDERR = (
    "tcpdump: listening on to-router, link-type EN10MB (Ethernet), snapshot length 256 bytes\n"
    "30 packets captured\n30 packets received by filter\n0 packets dropped by kernel\n"
)


def test_tcpdump_stats() -> None:
    assert sniffer.parse_tcpdump_stats(TCPDUMP_STDERR) == (30, 30, 0)
    assert sniffer.parse_tcpdump_stats("1 packet captured\n") == (1, None, None)


def test_choose_tool(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sniffer, "find_binary", lambda _name: "/usr/bin/tcpdump")
    assert sniffer.choose_tool("auto", load="idle")[0] == "scapy"
    assert sniffer.choose_tool("auto")[0] == "scapy"
    tool, why = sniffer.choose_tool("auto", load="busy")
    assert tool == "tcpdump" and "busy" in why
    assert sniffer.choose_tool("auto", expected_pps=5000)[0] == "tcpdump"
    assert sniffer.choose_tool("scapy", load="busy") == ("scapy", "requested")
    monkeypatch.setattr(sniffer, "find_binary", lambda _name: None)
    tool, why = sniffer.choose_tool("auto", load="busy")
    assert tool == "scapy" and "not installed" in why
    with pytest.raises(LabError):
        sniffer.choose_tool("tcpdump")
    with pytest.raises(LabError):
        sniffer.choose_tool("wireshark")
