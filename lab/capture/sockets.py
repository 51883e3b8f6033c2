"""Snapshots of the client's TCP sockets towards the VIP, from `ss -tnoiH` in its namespace.

This is the article's `netstat -o` evidence ("on (49.03/13/0)"): which timer runs, how long
until it fires, how many retransmissions/probes so far, the current RTO and backoff.
ss's text is parsed by hand, on purpose: it is exactly what someone reproducing the trial by
hand types and sees, and its format is stable. (pyroute2's DiagSocket decodes the same
inet_diag messages -- idiag_timer/expires/retrans and tcp_info -- and would avoid one process
per tick; not used, nor tried in a namespace, here.) Timer names follow ss: "on" is the
retransmission timer (netstat's "on": RTO, and also the TLP/reorder timers), "keepalive",
"timewait", "persist" (netstat's "probe": zero-window probes). The timer's 3rd field is
icsk_retransmits for "on" and icsk_probes_out for "persist"/"keepalive" (kernel inet_diag),
so it becomes `retrans` or `probes` accordingly.
"""

from __future__ import annotations

import csv
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from lab.net.topology import Host

SS_STATES = frozenset({
    "ESTAB", "SYN-SENT", "SYN-RECV", "FIN-WAIT-1", "FIN-WAIT-2", "TIME-WAIT", "CLOSE",
    "CLOSE-WAIT", "LAST-ACK", "LISTEN", "CLOSING", "UNCONN",
})
CSV_COLUMNS = (
    "t_s", "local", "peer", "state", "timer", "timer_left_s", "retrans", "probes", "backoff",
    "rto_ms", "unacked", "retrans_total", "lost", "bytes_acked", "bytes_retrans", "send_q",
    "netstat",
)
NO_SOCKET = "none"  # state of the row written when no socket matched at that instant
_NETSTAT_TIMER = {"on": "on", "keepalive": "keepalive", "timewait": "timewait",
                  "persist": "probe"}

_TIMER = re.compile(r"timer:\((\w+),([^,)]*),(\d+)\)")
# ss's print_ms_timer: "352ms", "1.304ms" (= 1.304 s), "28sec", "1min2sec", "12min", "" (due)
_DURATION = re.compile(r"^(?:(\d+)min)?(?:(\d+)(sec|\.))?(?:(\d+)ms)?$")


def parse_ss_duration(text: str) -> float:
    """Seconds from ss's timer format (see _DURATION); "" (already due) is 0."""
    m = _DURATION.match(text.strip())
    if m is None:
        raise ValueError(f"not an ss duration: {text!r}")
    minutes, secs, _sep, msecs = m.groups()
    return int(minutes or 0) * 60 + int(secs or 0) + int(msecs or 0) / 1000


@dataclass(frozen=True)
class SocketSnapshot:
    """One socket as ss shows it."""

    state: str
    local: str
    peer: str
    recv_q: int
    send_q: int
    timer: str | None = None
    timer_left_s: float | None = None
    retrans: int = 0  # icsk_retransmits: RTO retransmissions of the current episode
    probes: int = 0  # icsk_probes_out: zero-window or keepalive probes sent
    backoff: int = 0
    rto_ms: float | None = None
    unacked: int = 0
    retrans_total: int = 0  # tcpi_total_retrans (includes TLPs)
    lost: int = 0
    bytes_acked: int | None = None
    bytes_retrans: int | None = None

    def netstat(self) -> str:
        """The timer column as `netstat -o` prints it, e.g. "on (0.35/1/0)"."""
        if self.timer is None:
            return "off (0.00/0/0)"
        name = _NETSTAT_TIMER.get(self.timer, self.timer)
        return f"{name} ({self.timer_left_s or 0:.2f}/{self.retrans}/{self.probes})"

    def row(self, t_s: float) -> dict[str, Any]:
        return {
            "t_s": f"{t_s:.3f}", "local": self.local, "peer": self.peer, "state": self.state,
            "timer": self.timer or "", "timer_left_s": _fmt(self.timer_left_s),
            "retrans": self.retrans, "probes": self.probes, "backoff": self.backoff,
            "rto_ms": _fmt(self.rto_ms), "unacked": self.unacked,
            "retrans_total": self.retrans_total, "lost": self.lost,
            "bytes_acked": _fmt(self.bytes_acked), "bytes_retrans": _fmt(self.bytes_retrans),
            "send_q": self.send_q, "netstat": self.netstat(),
        }


def _fmt(v: float | int | None) -> str:
    if v is None:
        return ""
    return f"{v:g}" if isinstance(v, float) else str(v)


def _int(fields: dict[str, str], key: str) -> int | None:
    v = fields.get(key)
    return None if v is None else int(v)


def parse_ss_line(line: str) -> SocketSnapshot:
    """One socket from `ss -tnoiH state all` output (main line + info, joined or -O)."""
    tokens = line.split()
    if not tokens:
        raise ValueError("empty ss line")
    state = tokens[0] if tokens[0] in SS_STATES else ""
    rest = tokens[1:] if state else tokens  # ss omits the column when filtering one state
    if len(rest) < 4:
        raise ValueError(f"short ss line: {line!r}")
    recv_q, send_q, local, peer = int(rest[0]), int(rest[1]), rest[2], rest[3]
    fields = {}
    for tok in rest[4:]:
        key, sep, value = tok.partition(":")
        if sep and key.isidentifier() and not value.startswith("("):
            fields[key] = value
    timer = left = None
    count = 0
    m = _TIMER.search(line)
    if m:
        timer, left, count = m.group(1), parse_ss_duration(m.group(2)), int(m.group(3))
    cur_retrans, _, total = fields.get("retrans", "0/0").partition("/")
    return SocketSnapshot(
        state=state or "?", local=local, peer=peer, recv_q=recv_q, send_q=send_q,
        timer=timer, timer_left_s=left,
        retrans=count if timer == "on" else int(cur_retrans or 0),
        probes=count if timer in ("persist", "keepalive") else 0,
        backoff=_int(fields, "backoff") or 0,
        rto_ms=float(fields["rto"]) if "rto" in fields else None,
        unacked=_int(fields, "unacked") or 0,
        retrans_total=int(total or 0),
        lost=_int(fields, "lost") or 0,
        bytes_acked=_int(fields, "bytes_acked"),
        bytes_retrans=_int(fields, "bytes_retrans"),
    )


def parse_ss_output(text: str) -> list[SocketSnapshot]:
    """All sockets in ss output; without -O ss puts the info on an indented second line."""
    records: list[str] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        if line[0].isspace() and records:
            records[-1] += " " + line.strip()
        else:
            records.append(line)
    return [parse_ss_line(r) for r in records]


def ss_argv(dst_ip: str, dst_port: int) -> list[str]:
    return ["ss", "-tnoiHO", "state", "all", "dst", f"{dst_ip}:{dst_port}"]


def ss_sockets(host: Host, dst_ip: str, dst_port: int) -> list[SocketSnapshot]:
    """The TCP sockets of host's namespace whose peer is dst_ip:dst_port."""
    return parse_ss_output(host.run(ss_argv(dst_ip, dst_port), timeout=10).stdout)


class SocketSnapshots:
    """A SnapshotLoop callable: one ss query per tick, appended to sockets.csv.

    When no socket matches, one row with state "none" is written, so the CSV shows the socket
    disappearing (the kernel gave up) rather than just stopping.
    """

    def __init__(self, host: Host, dst_ip: str, dst_port: int, path: Path | str) -> None:
        self.host = host
        self.dst_ip = str(dst_ip)
        self.dst_port = dst_port
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[str] = self.path.open("w", newline="")
        self._csv = csv.DictWriter(self._file, fieldnames=CSV_COLUMNS)
        self._csv.writeheader()
        self._lock = threading.Lock()

    def __call__(self, t_s: float) -> list[SocketSnapshot]:
        socks = ss_sockets(self.host, self.dst_ip, self.dst_port)
        with self._lock:
            if socks:
                self._csv.writerows(s.row(t_s) for s in socks)
            else:
                self._csv.writerow({"t_s": f"{t_s:.3f}", "state": NO_SOCKET})
            self._file.flush()
        return socks

    def close(self) -> None:
        with self._lock:
            self._file.close()
