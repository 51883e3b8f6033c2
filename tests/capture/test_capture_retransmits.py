"""retransmits.analyse_pcap on synthetic pcaps (scapy wrpcap) and on real lab captures."""

from __future__ import annotations

import itertools
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether
from scapy.utils import PcapWriter, rdpcap, wrpcap

from lab.capture import retransmits
from lab.capture.retransmits import analyse_pcap

DATA = Path(__file__).with_name("data")
C, V, OTHER = "10.0.0.1", "10.0.0.100", "10.0.0.200"
PORT = 3306
T0 = 1_700_000_000.0


class Conv:
    """Builds one client<->VIP TCP conversation; seq/ack arguments are relative (ISN = 0)."""

    def __init__(self, sport: int, isn_c: int = 1000, isn_s: int = 5000, dst: str = V,
                 dport: int = PORT) -> None:
        self.sport, self.isn_c, self.isn_s, self.dst, self.dport = sport, isn_c, isn_s, dst, dport
        self.pkts: list[Any] = []

    def _add(self, t: float, ip: Any, tcp: Any, payload: bytes) -> None:
        pkt = Ether() / ip / tcp / payload if payload else Ether() / ip / tcp
        pkt.time = T0 + t
        self.pkts.append(pkt)

    def out(self, t: float, seq: int, ack: int = 1, flags: str = "PA", n: int = 0,
            win: int = 502) -> None:
        tcp = TCP(sport=self.sport, dport=self.dport, flags=flags, window=win,
                  seq=(self.isn_c + seq) % 2**32, ack=(self.isn_s + ack) % 2**32)
        self._add(t, IP(src=C, dst=self.dst), tcp, b"q" * n)

    def inn(self, t: float, seq: int = 1, ack: int = 1, flags: str = "A", n: int = 0,
            win: int = 502) -> None:
        tcp = TCP(sport=self.dport, dport=self.sport, flags=flags, window=win,
                  seq=(self.isn_s + seq) % 2**32, ack=(self.isn_c + ack) % 2**32)
        self._add(t, IP(src=self.dst, dst=C), tcp, b"r" * n)

    def handshake(self, t: float) -> None:
        self.out(t, 0, 0, "S")
        self.inn(t + 0.0001, 0, 1, "SA")
        self.out(t + 0.0002, 1, 1, "A")

    def request(self, t: float, seq: int, n: int = 16) -> None:
        """A request at rel seq `seq`, answered and acked."""
        self.out(t, seq, 1, n=n)
        self.inn(t + 0.001, 1, seq + n, "PA", n=8)


# Measured on the lab's veth path (recipe §5 / test_capture_blackhole): TLP ~0.205 s after
# the original, then the RTO series 0.207, 0.414, 0.83, 1.66, 3.32 (gaps).
TLP_GAP = 0.205
RTO_GAPS = (0.207, 0.414, 0.83, 1.66, 3.32)


def blackholed(sport: int = 40001) -> tuple[Conv, float]:
    conv = Conv(sport)
    conv.handshake(0.0)
    conv.request(0.1, 1)
    conv.out(0.2, 17, 1, n=16)  # lost
    t = 0.2 + TLP_GAP
    conv.out(t, 17, 1, n=16)
    for gap in RTO_GAPS:
        t += gap
        conv.out(t, 17, 1, n=16)
    return conv, t


def write(tmp_path: Path, *convs: Conv, name: str = "x.pcap") -> Path:
    path = tmp_path / name
    wrpcap(str(path), sorted((p for c in convs for p in c.pkts), key=lambda p: p.time))
    return path


def retx(a: retransmits.Analysis, flow: str) -> list[retransmits.SegmentEvent]:
    return a.retransmissions(flow)


def test_blackholed_flow_tlp_then_rto_backoff_then_timeout(tmp_path: Path) -> None:
    conv, last = blackholed()
    noise = Conv(40009, dst=OTHER)  # another destination: ignored
    noise.handshake(0.05)
    path = write(tmp_path, conv, noise)
    a = analyse_pcap(path, V, PORT, t0=T0, capture_end=T0 + last + 7.0)
    (flow,) = a.flows.values()
    assert flow.flow == f"{C}:40001>{V}:{PORT}"
    rows = retx(a, flow.flow)
    assert [r.kind for r in rows] == ["tlp"] + ["rto"] * 5
    assert [r.n for r in rows] == [1, 2, 3, 4, 5, 6]
    assert {r.seq for r in rows} == {17}
    assert [r.gap_s for r in rows] == pytest.approx([TLP_GAP, *RTO_GAPS])
    assert flow.blackholed and flow.tlp and flow.ended_by == "timeout"
    assert (flow.count, flow.rto_count, flow.retransmissions, flow.originals) == (6, 5, 6, 3)
    assert flow.first_rto_s == pytest.approx(0.207)
    assert flow.rto_gaps_s == pytest.approx(RTO_GAPS)
    assert flow.last_gap_s == pytest.approx(3.32)
    assert flow.first_lost_t_s == pytest.approx(0.2)
    assert flow.end_t_s == pytest.approx(last)
    assert a.count("last") == 1 and a.count("original") == 3  # SYN + 2 requests


def test_still_retransmitting_when_capture_ends_is_open(tmp_path: Path) -> None:
    conv, last = blackholed()
    a = analyse_pcap(write(tmp_path, conv), V, PORT, t0=T0, capture_end=T0 + last + 1.0)
    (flow,) = a.flows.values()
    assert flow.blackholed and flow.ended_by == "open" and flow.end_t_s is None


def test_without_tlp_the_first_retransmission_is_an_rto(tmp_path: Path) -> None:
    conv = Conv(40002)
    conv.handshake(0.0)
    conv.out(0.2, 1, 1, n=16)
    t = 0.2
    for gap in (0.21, 0.42, 0.84, 1.68):  # each one backed off: no TLP in front
        t += gap
        conv.out(t, 1, 1, n=16)
    a = analyse_pcap(write(tmp_path, conv), V, PORT, t0=T0)
    (flow,) = a.flows.values()
    assert [r.kind for r in retx(a, flow.flow)] == ["rto"] * 4
    assert not flow.tlp and flow.first_rto_s == pytest.approx(0.21)


def test_tlp_that_repaired_the_loss_then_fin(tmp_path: Path) -> None:
    conv = Conv(40003)
    conv.handshake(0.0)
    conv.out(0.2, 1, 1, n=16)
    conv.out(0.405, 1, 1, n=16)  # TLP
    conv.inn(0.406, 1, 17, "PA", n=8)  # acked: loss repaired
    conv.out(0.5, 17, 9, "FA")
    conv.inn(0.501, 9, 18, "FA")
    conv.out(0.502, 18, 10, "A")
    a = analyse_pcap(write(tmp_path, conv), V, PORT, t0=T0)
    (flow,) = a.flows.values()
    assert [r.kind for r in retx(a, flow.flow)] == ["tlp"]
    assert not flow.blackholed and flow.count == 0 and flow.retransmissions == 1
    assert flow.ended_by == "fin"


def test_rst_from_the_vip_side_ends_the_blackhole(tmp_path: Path) -> None:
    conv = Conv(40004)
    conv.handshake(0.0)
    conv.out(0.2, 1, 1, n=16)
    conv.out(0.405, 1, 1, n=16)
    conv.out(0.612, 1, 1, n=16)
    conv.inn(0.7, 1, 0, "R")  # e.g. the LB with expire_nodest_conn=1
    a = analyse_pcap(write(tmp_path, conv), V, PORT, t0=T0)
    (flow,) = a.flows.values()
    assert [r.kind for r in retx(a, flow.flow)] == ["tlp", "rto"]
    assert flow.ended_by == "rst" and flow.end_t_s == pytest.approx(0.7)
    rst = [e for e in a.events if e.kind == "rst"]
    assert [(e.dir, e.flow) for e in rst] == [("in", flow.flow)]
    assert a.count("last") == 0  # the RST is the flow's last packet and already a row


def test_keepalive_and_zero_window_probe(tmp_path: Path) -> None:
    conv = Conv(40005)
    conv.handshake(0.0)
    conv.request(0.1, 1)
    conv.out(10.1, 16, 9, "A")  # keepalive: seq = snd_una - 1, no data
    conv.inn(10.101, 9, 17, "A")
    conv.inn(11.0, 9, 17, "A", win=0)  # peer's window closes
    conv.out(11.2, 16, 9, "A")  # zero-window probe
    a = analyse_pcap(write(tmp_path, conv), V, PORT, t0=T0)
    (flow,) = a.flows.values()
    assert [e.kind for e in a.events if e.kind in ("keepalive", "probe")] == ["keepalive", "probe"]
    assert (flow.keepalives, flow.probes, flow.retransmissions) == (1, 1, 0)


def test_wraparound_snaplen_fast_retransmit_and_early_tlp(tmp_path: Path) -> None:
    conv = Conv(40006, isn_c=2**32 - 10)
    conv.handshake(0.0)
    for i, t in enumerate((0.1, 0.1001, 0.1002)):
        conv.out(t, 1 + 1000 * i, 1, n=1000)
    conv.out(0.103, 1, 1, n=1000)  # head again after 3 ms: dupack/SACK driven
    conv.out(0.104, 2001, 1, n=1000)  # tail probe with >1 packet out: 2*srtt + 2 ms
    conv.inn(0.105, 1, 3001, "A")
    path = tmp_path / "trunc.pcap"
    with PcapWriter(str(path), linktype=1, snaplen=256) as w:  # like tcpdump -s 256
        w.write_header(None)  # write_packet() does not write it
        for p in conv.pkts:
            raw = bytes(p)
            w.write_packet(raw[:256], sec=int(p.time), usec=round(p.time % 1 * 1e6),
                           wirelen=len(raw))
    a = analyse_pcap(path, V, PORT, t0=T0)
    (flow,) = a.flows.values()
    orig = [(e.seq, e.length) for e in a.events if e.kind == "original"]
    assert orig == [(0, 0), (1, 1000), (1001, 1000), (2001, 1000)]
    assert [(e.kind, e.seq) for e in retx(a, flow.flow)] == [("fast", 1), ("tlp", 2001)]
    assert flow.count == 0 and flow.ended_by == "open"


def test_syn_retransmissions_are_rto_not_tlp(tmp_path: Path) -> None:
    conv = Conv(40007)
    for t in (0.0, 1.0, 2.0, 3.0):  # tcp_syn_linear_timeouts: 1 s apart
        conv.out(t, 0, 0, "S")
    a = analyse_pcap(write(tmp_path, conv), V, PORT, t0=T0, capture_end=T0 + 10)
    (flow,) = a.flows.values()
    assert [r.kind for r in retx(a, flow.flow)] == ["rto"] * 3
    assert flow.ended_by == "timeout"


def test_port_filter_and_csv(tmp_path: Path) -> None:
    conv, _ = blackholed()
    other_port = Conv(40008, dport=8080)
    other_port.handshake(0.0)
    a = analyse_pcap(write(tmp_path, conv, other_port), V, PORT, t0=T0)
    assert list(a.flows) == [f"{C}:40001>{V}:{PORT}"]
    assert len(analyse_pcap(write(tmp_path, conv, other_port), V, t0=T0).flows) == 2
    path = retransmits.write_retransmits_csv(tmp_path / "retransmits.csv", a)
    rows = retransmits.read_retransmits_csv(path)
    assert tuple(rows[0]) == retransmits.CSV_COLUMNS
    assert [r["kind"] for r in rows] == [e.kind for e in a.retransmissions()]  # no originals
    segments = retransmits.read_retransmits_csv(
        retransmits.write_segments_csv(tmp_path / "segments.csv", a))
    assert len(segments) == len(a.events) and tuple(segments[0]) == retransmits.CSV_COLUMNS
    assert {"original", "last"} <= {r["kind"] for r in segments}
    assert [r for r in segments if r["kind"] in retransmits.RETRANSMISSION_KINDS] == rows
    tlp = next(r for r in rows if r["kind"] == "tlp")
    assert tlp["seq"] == "17" and tlp["n"] == "1" and float(tlp["t_s"]) == pytest.approx(0.405)
    summary = retransmits.write_summary_csv(tmp_path / "s.csv", a.blackholed())
    assert "timeout" in summary.read_text() or "open" in summary.read_text()


# Real captures from test_capture_blackhole (client side, VIP 198.18.0.100:7000, retries2=5):
# tcpdump -s 256 and the scapy child; the capture ran ~6-7 s past the last retransmission.
REAL = {"blackhole_tcpdump.pcap": "198.18.0.1:35912", "blackhole_scapy.pcap": "198.18.0.1:35928"}


@pytest.mark.parametrize("name", sorted(REAL))
def test_real_capture(name: str) -> None:
    path = DATA / name
    last = float(rdpcap(str(path))[-1].time)
    a = analyse_pcap(path, "198.18.0.100", 7000, capture_end=last + 6.0)
    (flow,) = a.blackholed()
    assert flow.flow == f"{REAL[name]}>198.18.0.100:7000"
    rows = a.retransmissions(flow.flow)
    assert [r.kind for r in rows] == ["tlp"] + ["rto"] * 5
    assert 0.19 < rows[0].gap_s < 0.22 and 0.19 < rows[1].gap_s < 0.22  # type: ignore[operator]
    for prev, nxt in itertools.pairwise(flow.rto_gaps_s):
        assert 1.5 * prev <= nxt <= 2.5 * prev
    assert flow.ended_by == "timeout" and flow.count == 6


@pytest.mark.skipif(shutil.which("tcpdump") is None, reason="tcpdump not installed")
@pytest.mark.parametrize("name", sorted(REAL))
def test_real_capture_opens_with_tcpdump(name: str) -> None:
    out = subprocess.run(["tcpdump", "-nr", str(DATA / name)], capture_output=True, text=True,
                         check=True)
    assert len(out.stdout.splitlines()) == len(rdpcap(str(DATA / name)))
