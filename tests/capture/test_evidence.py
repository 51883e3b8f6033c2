"""lab.capture.evidence: the facts a trial reports, on real captures.

The facts are checked on the two real blackhole captures in tests/capture/data (no root
needed), and Evidence as a whole on a short live exchange between two namespaces whose link
is cut for a moment: the client's kernel retransmits, the capture must see every one of them,
and evidence.json must say what the objects say.
"""

from __future__ import annotations

import csv
import json
import shutil
import sys
import time
from pathlib import Path

import pytest
from scapy.utils import rdpcap

from lab.capture import retransmits
from lab.capture.evidence import Evidence, EvidenceResult
from lab.capture.sniffer import CaptureStats, PacketCapture
from lab.errors import LabError
from lab.net.process import ChildProcess, wait_until
from lab.net.topology import Host, Network

DATA = Path(__file__).with_name("data")
ECHO = Path(__file__).with_name("tcp_echo.py")
VIP, PORT = "198.18.0.100", 7000
# the client of each real capture (tests/capture/data/README.md)
REAL = {"blackhole_tcpdump.pcap": "198.18.0.1:35912", "blackhole_scapy.pcap": "198.18.0.1:35928"}
# the client namespace's nstat deltas over such a capture: 1 TLP + 5 RTOs, then the abort
REAL_COUNTERS = {"TcpRetransSegs": 6, "TcpExtTCPLossProbes": 1, "TcpExtTCPTimeouts": 6,
                 "TcpExtTCPAbortOnTimeout": 1}


def _real_result(name: str, counters: dict[str, int]) -> EvidenceResult:
    path = DATA / name
    packets = rdpcap(str(path))
    first, last = float(packets[0].time), float(packets[-1].time)
    stats = CaptureStats(tool="tcpdump", why="requested", path=path, packets=len(packets),
                         received=len(packets), dropped=0, started_at=first,
                         stopped_at=last + 6.0, clean=True)
    analysis = retransmits.analyse_pcap(path, VIP, PORT, t0=first, capture_end=stats.stopped_at)
    return EvidenceResult(capture=stats, analysis=analysis, counters=counters, files={})


@pytest.mark.parametrize("name", sorted(REAL))
def test_facts_of_a_real_blackhole(name: str) -> None:
    facts = _real_result(name, REAL_COUNTERS).facts()
    assert facts["capture.packets"] == len(rdpcap(str(DATA / name)))
    assert facts["flows"] == 1 and facts["blackholed_flows"] == 1
    # the capture saw exactly what the kernel counted
    assert facts["retrans.captured"] == facts["retrans.kernel"] == 6
    assert facts["retrans.missing"] == 0
    assert facts["tlp.captured"] == facts["tlp.kernel"] == 1
    assert facts["rto_timeouts.kernel"] == 6 and facts["aborts_on_timeout.kernel"] == 1
    assert facts["bh.flow"] == f"{REAL[name]}>{VIP}:{PORT}"
    assert facts["bh.count"] == 6 and facts["bh.tlp"] is True
    assert facts["bh.ended_by"] == "timeout"
    assert 0.19 < facts["bh.first_rto_s"] < 0.22  # rto_min + the RTT's rounding
    # the last of 5 doubling RTOs from ~0.2 s: ~3.4 s
    assert 2.5 < facts["bh.last_gap_s"] < 4.5
    assert 0 < facts["bh.first_lost_t_s"] < facts["bh.end_t_s"]


def test_missing_retransmissions_are_the_kernels_surplus() -> None:
    """A kernel that counted more than the pcap holds: the difference is reported."""
    facts = _real_result("blackhole_tcpdump.pcap", {**REAL_COUNTERS, "TcpRetransSegs": 9}).facts()
    assert facts["retrans.captured"] == 6 and facts["retrans.missing"] == 3


def test_no_blackhole_no_bh_facts(tmp_path: Path) -> None:
    """A capture without the VIP's traffic: no flows, and no `bh.` keys at all."""
    path = tmp_path / "empty.pcap"
    shutil.copy(DATA / "blackhole_tcpdump.pcap", path)
    stats = CaptureStats("scapy", "requested", path, 0, 0, 0, 0.0, 1.0, True)
    analysis = retransmits.analyse_pcap(path, "198.18.7.7", PORT)
    facts = EvidenceResult(stats, analysis, {}, {}).facts()
    assert facts["flows"] == facts["blackholed_flows"] == facts["retrans.captured"] == 0
    assert facts["retrans.missing"] == 0
    assert not [k for k in facts if k.startswith("bh.")]


def test_stop_before_start_is_an_error(tmp_path: Path) -> None:
    client, lb = Host("client", "bhl-none-client", tmp_path), Host("lb", "bhl-none-lb", tmp_path)
    ev = Evidence(client, lb, VIP, PORT, tmp_path / "out", tool="scapy")
    ev.close()  # nothing started: nothing to do, no error
    with pytest.raises(RuntimeError, match="never started"):
        ev.stop()


def _start(host: Host, args: list[str], log: Path, marker: str) -> ChildProcess:
    child = host.start([sys.executable, str(ECHO), *args], log)
    if wait_until(lambda: marker in log.read_text(), 15, alive=child.alive) is None:
        child.stop()
        raise AssertionError(f"no {marker!r} from {args}: {child.tail()}")
    return child


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.root
@pytest.mark.parametrize("tool", ["scapy", "tcpdump"])
def test_evidence_of_a_short_outage(network: Network, tmp_path: Path, tool: str) -> None:
    if tool == "tcpdump" and shutil.which("tcpdump") is None:
        pytest.skip("tcpdump not installed")
    client, server = network["client"], network["db"]
    address = str(server.address_towards("client"))
    echo = _start(server, ["server", address, str(PORT)], tmp_path / "server.log", "listening")
    out = tmp_path / "evidence"
    ev = Evidence(client, server, address, PORT, out, tool=tool)
    ev.start()
    try:
        requests = _start(client, ["client", address, str(PORT)], tmp_path / "client.log",
                          "connected")
        time.sleep(0.5)
        server.cut_link("client")  # requests and echoes lost: TLP, then RTOs
        time.sleep(0.7)
        server.mend_link()
        time.sleep(1.0)  # the next RTO gets through: the flow recovers
        requests.stop()
        result = ev.stop()
    finally:
        ev.close()
        echo.stop()
    assert ev.stop() is result  # idempotent

    stats, facts = result.capture, result.facts()
    assert stats.tool == tool and stats.why == "requested" and stats.clean, stats
    assert stats.dropped == 0
    assert stats.packets == len(rdpcap(str(stats.path))) > 10
    assert facts["flows"] == 1 and facts["blackholed_flows"] == 0
    assert facts["retrans.captured"] >= 2  # the TLP and at least one RTO
    assert facts["retrans.missing"] == 0, facts  # the capture saw all the kernel sent
    assert facts["tlp.captured"] == facts["tlp.kernel"] == 1

    saved = json.loads(result.files["evidence"].read_text())
    assert saved["facts"] == json.loads(json.dumps(facts, default=str))
    assert saved["capture"] == json.loads(json.dumps(stats.as_dict()))
    assert saved["counters_delta"] == result.counters
    (flow,) = _csv(result.files["flows"])
    assert flow["blackholed"] == "False" and int(flow["retransmissions"]) >= 2
    # retransmits.csv: the retransmissions only; segments.csv: every segment event
    retx = _csv(result.files["retransmits"])
    assert len(retx) == len(result.analysis.retransmissions()) == int(flow["retransmissions"])
    assert {r["kind"] for r in retx} <= retransmits.RETRANSMISSION_KINDS
    segments = _csv(result.files["segments"])
    assert len(segments) == len(result.analysis.events)
    assert sum(r["kind"] == "original" for r in segments) == int(flow["originals"]) > 10
    assert [r for r in segments if r["kind"] in retransmits.RETRANSMISSION_KINDS] == retx
    assert any(row for row in _csv(result.files["sockets"]))  # the client's socket was seen
    log = (out / f"client-{tool}.log").read_text()
    assert ("listening on" if tool == "tcpdump" else "READY") in log
    assert ("packets captured" if tool == "tcpdump" else '"packets"') in log


@pytest.mark.root
def test_capture_of_a_missing_interface_fails_at_once(network: Network, tmp_path: Path) -> None:
    if shutil.which("tcpdump") is None:
        pytest.skip("tcpdump not installed")
    capture = PacketCapture(network["client"], "to-nowhere", "tcp", tmp_path / "x.pcap",
                            tool="tcpdump")
    t0 = time.monotonic()
    with pytest.raises(LabError, match=r"tcpdump capture on client/to-nowhere exited: .*nowhere"):
        capture.start()
    assert time.monotonic() - t0 < 10  # the exit ends the wait, not START_TIMEOUT_S
    assert not capture.running()
