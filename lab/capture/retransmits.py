"""Retransmissions of the client->VIP flows in a pcap: what TCP did during the outage.

Method (tcp-facts.md §7.3): per flow and direction keep the highest sequence end sent so far;
a later segment carrying payload (or SYN/FIN) whose end is <= that is a retransmission, and
its gap is measured to the previous transmission of the same sequence. 0/1-byte segments at
seq = snd_una - 1 are keepalives (peer window open) or zero-window probes (window 0). The pcap
is streamed with scapy's PcapReader, and per-flow state only keeps segments not yet acked, so
memory stays small for long captures. Payload lengths come from the IP/TCP headers, so a
capture truncated by a snaplen (tcpdump -s 256) is analysed correctly. GSO/TSO: a capture on a
veth sees the super-segment, so one captured retransmission may be several kernel segments.

Classification of a retransmission (kind):
- "tlp": Linux's tail-loss probe (tcp_send_loss_probe). It retransmits the *tail* (the
  highest-sequence segment in flight), once per loss episode, in ESTABLISHED only (never a
  SYN), before any RTO. Its timer is min(2*srtt + 200 ms [one packet out] | + 2 ms, RTO), so
  on a LAN it fires at about the same time as an RTO would (~0.2 s on this veth path) and
  timing alone cannot tell them apart. What tells them apart is the *next* retransmission of
  the same sequence: after an RTO the timer backs off, so the next gap is ~2x (ratio in
  [1.7, 2.3]); after a TLP the RTO timer is re-armed un-backed-off, so the next gap is ~1x
  (or anything else). Rule: the first retransmission of the tail in an episode is a TLP unless
  it came at least 0.9*rto_min after the previous transmission AND the next retransmission of
  the same sequence comes 1.7-2.3x later. A lone tail retransmission that repaired the loss is
  a TLP (Linux with tcp_early_retrans >= 3, the default, probes the tail before any RTO).
- "rto": any other retransmission at least 0.9*rto_min after the previous transmission of the
  same sequence (retransmission timer, exponential backoff; SYN retransmissions too).
- "fast": a non-TLP retransmission sooner than 0.9*rto_min (dupack/SACK/RACK driven).
Measured on this veth path (recipe §5): TLP ~0.205 s after the original, then RTOs at
~0.41, 0.83, 1.66, 3.3, 6.6 s from the original (gaps 0.205, 0.41, 0.83, ...).

How a flow ended (ended_by): "rst" (an RST from the VIP side: the LB or server reset it),
"rst_out" (the client sent an RST), "timeout" (data still unacked, retransmissions stopped, and
the capture went on for >= 1.5x the last gap without the next backed-off retransmission: the
kernel gave up, ETIMEDOUT -- Linux sends no RST then), "fin", or "open" (alive when the capture
ended).
"""

from __future__ import annotations

import csv
import ipaddress
import socket
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RETRANSMISSION_KINDS = frozenset({"tlp", "rto", "fast"})
KINDS = ("original", "tlp", "rto", "fast", "probe", "keepalive", "rst", "last")
CSV_COLUMNS = ("flow", "seq", "t_s", "kind", "gap_s", "n", "dir", "len")
SUMMARY_COLUMNS = (
    "flow", "blackholed", "count", "tlp", "rto_count", "first_lost_t_s", "first_rto_s",
    "last_gap_s", "rto_gaps_s", "ended_by", "end_t_s", "last_tx_t_s", "originals",
    "retransmissions", "keepalives", "probes",
)
RTO_MIN_S = 0.2  # TCP_RTO_MIN; net.ipv4.tcp_rto_min_us default
BACKOFF_RATIO = (1.7, 2.3)  # next gap / gap after a real RTO
TIMEOUT_FACTOR = 1.5  # silence of >= 1.5x the last gap after the last retransmission = gave up

_MOD = 1 << 32
_HALF = 1 << 31


def _sdiff(a: int, b: int) -> int:
    """a - b in 32-bit sequence space, as a signed number."""
    return (a - b + _HALF) % _MOD - _HALF


def flow_name(src: str, sport: int, dst: str, dport: int) -> str:
    return f"{src}:{sport}>{dst}:{dport}"


@dataclass(slots=True)
class SegmentEvent:
    """One row of segments.csv (retransmits.csv: the tlp/rto/fast ones). seq is relative to
    the direction's ISN (like Wireshark)."""

    flow: str
    seq: int
    t: float  # pcap (wall clock) time
    kind: str
    gap_s: float | None  # to the previous transmission of the same sequence
    n: int  # transmission number of this sequence: 0 = original, 1 = first retransmission
    dir: str  # "out" client->VIP, "in" VIP->client
    length: int


@dataclass(slots=True)
class _Seg:
    end: int
    t_last: float
    n: int = 0
    syn: bool = False
    events: list[SegmentEvent] = field(default_factory=list)
    pending_tlp: SegmentEvent | None = None


@dataclass
class FlowSummary:
    """One client->VIP flow; for a blackholed flow, its final unacked episode."""

    flow: str
    src: str
    sport: int
    dst: str
    dport: int
    originals: int = 0  # data segments sent (first transmissions)
    retransmissions: int = 0  # all tlp/rto/fast retransmissions in the capture
    count: int = 0  # retransmissions of the data still unacked at the end (the blackhole)
    tlp: bool = False  # that episode started with a tail-loss probe
    rto_count: int = 0
    first_lost_t_s: float | None = None  # original send of the oldest unacked segment
    first_rto_s: float | None = None  # gap of the first RTO retransmission (= initial RTO)
    rto_gaps_s: tuple[float, ...] = ()
    last_gap_s: float | None = None
    last_tx_t_s: float | None = None  # last transmission of unacked data
    ended_by: str = "open"
    end_t_s: float | None = None  # RST / FIN time; for a timeout the last retransmission
    keepalives: int = 0
    probes: int = 0
    blackholed: bool = False  # unacked data with >= 1 RTO retransmission at the end

    def as_row(self) -> dict[str, Any]:
        row = {k: getattr(self, k) for k in SUMMARY_COLUMNS}
        row["rto_gaps_s"] = " ".join(f"{g:.6f}" for g in self.rto_gaps_s)
        for k in ("first_lost_t_s", "first_rto_s", "last_gap_s", "end_t_s", "last_tx_t_s"):
            row[k] = "" if row[k] is None else f"{row[k]:.6f}"
        return row


@dataclass
class Analysis:
    """Everything found in one pcap, times relative to t0 (wall clock)."""

    t0: float
    events: list[SegmentEvent]
    flows: dict[str, FlowSummary]
    packets: int  # TCP packets of the selected flows

    def blackholed(self) -> list[FlowSummary]:
        return [f for f in self.flows.values() if f.blackholed]

    def count(self, *kinds: str, flow: str | None = None) -> int:
        return sum(1 for e in self.events if e.kind in kinds and (flow is None or e.flow == flow))

    def retransmissions(self, flow: str | None = None) -> list[SegmentEvent]:
        return [
            e for e in self.events
            if e.kind in RETRANSMISSION_KINDS and (flow is None or e.flow == flow)
        ]


@dataclass
class _Packet:
    t: float
    src: str
    dst: str
    sport: int
    dport: int
    seq: int
    ack: int
    flags: int
    window: int
    plen: int


FIN, SYN, RST, ACK = 0x01, 0x02, 0x04, 0x10


class _Flow:
    def __init__(self, key: tuple[str, int, str, int], rto_min_s: float) -> None:
        self.name = flow_name(*key)
        self.summary = FlowSummary(self.name, *key)
        self.rto_min_s = rto_min_s
        self.base_out: int | None = None  # raw ISN (or first seq seen) client->VIP
        self.base_in: int | None = None
        self.hi_end: int | None = None  # highest relative end sent client->VIP
        self.snd_una: int | None = None  # highest relative ack from the VIP side
        self.peer_window = 1
        self.segs: dict[int, _Seg] = {}  # unacked segments by relative start
        self.in_loss = False  # an RTO happened and nothing new was acked since
        self.tlp_used = False  # a TLP was sent in the current episode
        self.rsts: list[SegmentEvent] = []
        self.fin = False
        self.last: tuple[float, str, int, int] | None = None  # t, dir, rel seq, flags

    def _rel_out(self, raw: int) -> int:
        assert self.base_out is not None
        ref = self.hi_end or 0
        return ref + _sdiff(raw, (self.base_out + ref) % _MOD)

    def _rst_or_fin(self, p: _Packet, direction: str, rel: int,
                    emit: list[SegmentEvent]) -> bool:
        """Note p as the flow's last packet; True for a RST (recorded: the flow is over),
        and a FIN marks the flow as closing."""
        self.last = (p.t, direction, rel, p.flags)
        if p.flags & RST:
            ev = SegmentEvent(self.name, rel, p.t, "rst", None, 0, direction, p.plen)
            self.rsts.append(ev)
            emit.append(ev)
            return True
        if p.flags & FIN:
            self.fin = True
        return False

    def out(self, p: _Packet, emit: list[SegmentEvent]) -> None:
        if self.base_out is None:
            self.base_out = p.seq
        rel = self._rel_out(p.seq)
        if self._rst_or_fin(p, "out", rel, emit):
            return
        seg_len = p.plen + (1 if p.flags & SYN else 0) + (1 if p.flags & FIN else 0)
        if (
            seg_len <= 1 and not p.flags & (SYN | FIN) and self.snd_una is not None
            and rel == self.snd_una - 1
        ):
            kind = "keepalive" if self.peer_window > 0 else "probe"
            if kind == "keepalive":
                self.summary.keepalives += 1
            else:
                self.summary.probes += 1
            emit.append(SegmentEvent(self.name, rel, p.t, kind, None, 0, "out", p.plen))
            return
        if seg_len == 0:
            return  # pure ACK
        end = rel + seg_len
        if self.hi_end is None or end > self.hi_end:
            ev = SegmentEvent(self.name, rel, p.t, "original", None, 0, "out", p.plen)
            self.segs[rel] = _Seg(end, p.t, syn=bool(p.flags & SYN), events=[ev])
            self.hi_end = end
            self.summary.originals += 1
            emit.append(ev)
            return
        self._retransmission(p, rel, end, emit)

    def _retransmission(self, p: _Packet, rel: int, end: int, emit: list[SegmentEvent]) -> None:
        seg = self.segs.get(rel)
        if seg is None:  # a re-packetised range: find the segment that holds rel
            seg = next((s for start, s in self.segs.items() if start <= rel < s.end), None)
        gap = None
        if seg is None:  # acked already (spurious) or sent before the capture started
            seg = self.segs[rel] = _Seg(end, p.t, syn=bool(p.flags & SYN))
        else:
            gap = p.t - seg.t_last
        seg.n += 1
        seg.t_last = p.t
        is_tail = end == self.hi_end
        early = gap is not None and gap < 0.9 * self.rto_min_s
        if seg.syn:
            kind = "rto"
        elif seg.n == 1 and is_tail and not self.in_loss and not self.tlp_used:
            kind = "tlp"
            self.tlp_used = True
        else:
            kind = "fast" if early else "rto"
        ev = SegmentEvent(self.name, rel, p.t, kind, gap, seg.n, "out", p.plen)
        if kind == "tlp":
            seg.pending_tlp = ev
        elif seg.pending_tlp is not None:
            first = seg.pending_tlp
            seg.pending_tlp = None
            if (
                gap is not None and first.gap_s is not None
                and first.gap_s >= 0.9 * self.rto_min_s
                and BACKOFF_RATIO[0] <= gap / first.gap_s <= BACKOFF_RATIO[1]
            ):
                first.kind = "rto"  # the next one backed off: that was an RTO, not a TLP
        if kind == "rto":
            self.in_loss = True
        seg.events.append(ev)
        self.summary.retransmissions += 1
        emit.append(ev)

    def inbound(self, p: _Packet, emit: list[SegmentEvent]) -> None:
        if self.base_in is None or p.flags & SYN:
            self.base_in = p.seq
        rel_in = _sdiff(p.seq, self.base_in)
        if self._rst_or_fin(p, "in", rel_in, emit):
            return
        if p.flags & ACK and self.base_out is not None:
            ack = self._rel_out(p.ack)
            self.peer_window = p.window
            if self.snd_una is None or ack > self.snd_una:
                self.snd_una = ack
                self.in_loss = False
                self.tlp_used = False
                for start in [s for s, seg in self.segs.items() if seg.end <= ack]:
                    del self.segs[start]

    def finish(self, t0: float, capture_end: float, emit: list[SegmentEvent]) -> FlowSummary:
        s = self.summary
        if self.last is not None:
            t, direction, seq, flags = self.last
            if not flags & RST:
                emit.append(SegmentEvent(self.name, seq, t, "last", None, 0, direction, 0))
        unacked = [seg for seg in self.segs.values()
                   if self.snd_una is None or seg.end > self.snd_una]
        episode = sorted((e for seg in unacked for e in seg.events), key=lambda e: e.t)
        retx = [e for e in episode if e.kind in RETRANSMISSION_KINDS]
        rtos = [e for e in retx if e.kind == "rto"]
        s.count = len(retx)
        s.rto_count = len(rtos)
        s.tlp = any(e.kind == "tlp" for e in retx)
        s.blackholed = bool(rtos)
        if episode:
            s.first_lost_t_s = episode[0].t - t0
            s.last_tx_t_s = episode[-1].t - t0
        if rtos:
            s.first_rto_s = rtos[0].gap_s
            s.rto_gaps_s = tuple(e.gap_s for e in rtos if e.gap_s is not None)
        if retx:
            s.last_gap_s = retx[-1].gap_s
        s.ended_by, end_t = self._ended_by(episode, retx, capture_end)
        s.end_t_s = None if end_t is None else end_t - t0
        return s

    def _ended_by(
        self, episode: list[SegmentEvent], retx: list[SegmentEvent], capture_end: float
    ) -> tuple[str, float | None]:
        rst_in = next((e for e in self.rsts if e.dir == "in"), None)
        rst_out = next((e for e in self.rsts if e.dir == "out"), None)
        if episode:
            start, last = episode[0].t, episode[-1].t
            last_gap = retx[-1].gap_s if retx else None
            gave_up_by = last + TIMEOUT_FACTOR * last_gap if last_gap else None
            if rst_in is not None and rst_in.t >= start:
                return "rst", rst_in.t
            if rst_out is not None and rst_out.t >= start:
                if gave_up_by is not None and rst_out.t >= gave_up_by:
                    return "timeout", last  # the dead socket later answered with an RST
                return "rst_out", rst_out.t
            if gave_up_by is not None and capture_end >= gave_up_by:
                return "timeout", last
            return "open", None
        if self.rsts:
            first = self.rsts[0]
            return ("rst" if first.dir == "in" else "rst_out"), first.t
        if self.fin:
            return "fin", self.last[0] if self.last else None
        return "open", None


# link-layer header length by pcap linktype: Ethernet, Linux cooked v1 / v2, raw IP
_LINK_HEADER = {1: 14, 113: 16, 276: 20, 101: 0, 228: 0, 229: 0}


def _packets(path: Path, vip: str, port: int | None) -> Iterator[_Packet]:
    """TCP packets to or from vip(:port), streamed.

    scapy's RawPcapReader reads the file; the fixed IP/TCP header fields are unpacked with
    struct: full scapy dissection runs at ~4k packets/s here, far too slow for the ~100k
    packets a busy trial captures, and only a dozen header fields are needed.
    """
    from scapy.utils import RawPcapReader

    with RawPcapReader(str(path)) as reader:
        link = _LINK_HEADER.get(reader.linktype)
        if link is None:
            raise ValueError(f"{path}: unsupported pcap linktype {reader.linktype}")
        for data, meta in reader:
            packet = _tcp_packet(data[link:], _pcap_time(meta), vip, port)
            if packet is not None:
                yield packet


def _pcap_time(meta: Any) -> float:
    if hasattr(meta, "tshigh"):  # pcapng
        return float(((meta.tshigh << 32) | meta.tslow) / meta.tsresol)
    return float(meta.sec + meta.usec / 1_000_000)


def _tcp_packet(ip: bytes, t: float, vip: str, port: int | None) -> _Packet | None:
    if len(ip) < 20:
        return None
    version = ip[0] >> 4
    if version == 4:
        ihl = (ip[0] & 0x0F) * 4
        if ip[9] != 6:  # not TCP
            return None
        total = struct.unpack_from("!H", ip, 2)[0]
        src, dst = socket.inet_ntop(socket.AF_INET, ip[12:16]), socket.inet_ntop(
            socket.AF_INET, ip[16:20])
        tcp_off, ip_payload = ihl, total - ihl
    elif version == 6 and len(ip) >= 40:
        if ip[6] != 6:  # next header not TCP (extension headers are not followed)
            return None
        ip_payload = struct.unpack_from("!H", ip, 4)[0]
        src, dst = socket.inet_ntop(socket.AF_INET6, ip[8:24]), socket.inet_ntop(
            socket.AF_INET6, ip[24:40])
        tcp_off = 40
    else:
        return None
    if src != vip and dst != vip:
        return None
    if len(ip) < tcp_off + 20:
        return None
    sport, dport, seq, ack, off_flags, window = struct.unpack_from("!HHIIHH", ip, tcp_off)
    if port is not None and not ((dst == vip and dport == port) or (src == vip and sport == port)):
        return None
    data_offset = (off_flags >> 12) * 4
    plen = ip_payload - data_offset
    return _Packet(t, src, dst, sport, dport, seq, ack, off_flags & 0x1FF, window, max(plen, 0))


def analyse_pcap(
    path: Path | str,
    vip: str,
    port: int | None = None,
    *,
    t0: float | None = None,
    capture_end: float | None = None,
    rto_min_s: float = RTO_MIN_S,
) -> Analysis:
    """Analyse the flows towards vip(:port) in a pcap (client side or LB side of the VIP).

    t0: wall-clock origin of the t_s columns (default: the first packet). capture_end: when the
    capture stopped (CaptureStats.stopped_at; default: the last packet), used to tell a flow
    whose kernel gave up ("timeout") from one still retransmitting when the capture ended.
    """
    vip = str(ipaddress.ip_address(vip))
    flows: dict[tuple[str, int, str, int], _Flow] = {}
    events: list[SegmentEvent] = []
    first_t = last_t = None
    n = 0
    for p in _packets(Path(path), vip, port):
        n += 1
        first_t = p.t if first_t is None else first_t
        last_t = p.t
        if p.dst == vip:
            key = (p.src, p.sport, p.dst, p.dport)
            flow = flows.get(key) or flows.setdefault(key, _Flow(key, rto_min_s))
            flow.out(p, events)
        else:
            key = (p.dst, p.dport, p.src, p.sport)
            flow = flows.get(key) or flows.setdefault(key, _Flow(key, rto_min_s))
            flow.inbound(p, events)
    origin = t0 if t0 is not None else (first_t or 0.0)
    end = capture_end if capture_end is not None else (last_t or 0.0)
    tail: list[SegmentEvent] = []
    summaries = {f.name: f.finish(origin, end, tail) for f in flows.values()}
    events.extend(tail)
    events.sort(key=lambda e: e.t)
    return Analysis(t0=origin, events=events, flows=summaries, packets=n)


def csv_rows(analysis: Analysis, kinds: frozenset[str] | None = None
             ) -> Iterator[dict[str, Any]]:
    """The segment events of `kinds` (default: every kind) as CSV rows, t_s from t0."""
    for e in analysis.events:
        if kinds is not None and e.kind not in kinds:
            continue
        yield {
            "flow": e.flow, "seq": e.seq, "t_s": f"{e.t - analysis.t0:.6f}", "kind": e.kind,
            "gap_s": "" if e.gap_s is None else f"{e.gap_s:.6f}", "n": e.n, "dir": e.dir,
            "len": e.length,
        }


def write_retransmits_csv(path: Path | str, analysis: Analysis) -> Path:
    """retransmits.csv: the retransmissions only (tlp, rto, fast; columns CSV_COLUMNS), so the
    file a reader opens to see what TCP did in the outage is not 99.9 % first sends."""
    return _write(Path(path), CSV_COLUMNS, csv_rows(analysis, RETRANSMISSION_KINDS))


def write_segments_csv(path: Path | str, analysis: Analysis) -> Path:
    """segments.csv: every segment event in time order (originals, retransmissions,
    keepalives, probes, RSTs, each flow's last packet), the same columns as retransmits.csv."""
    return _write(Path(path), CSV_COLUMNS, csv_rows(analysis))


def write_summary_csv(path: Path | str, summaries: Iterable[FlowSummary]) -> Path:
    """One row per flow (SUMMARY_COLUMNS); pass analysis.blackholed() for the blackholed ones."""
    return _write(Path(path), SUMMARY_COLUMNS, (s.as_row() for s in summaries))


def _write(path: Path, columns: tuple[str, ...], rows: Iterable[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def read_retransmits_csv(path: Path | str) -> list[dict[str, str]]:
    with Path(path).open(newline="") as f:
        return list(csv.DictReader(f))
