"""Snapshots of the client's TCP sockets towards the VIP, as `ss -tnoi` shows them, read through
netlink sock_diag (lab.net.sockdiag) in the client's namespace: one socket opened per trial,
no process per tick.

This is the article's `netstat -o` evidence ("on (49.03/13/0)"): which timer runs, how long
until it fires, how many retransmissions/probes so far, the current RTO and backoff. The
columns keep ss's meanings (what someone reproducing the trial by hand types and sees;
tests/capture/test_sockets.py compares them with `ss -tnoi` on the same live sockets):
- timer names follow ss: "on" is the retransmission timer (netstat's "on": RTO, and also the
  TLP/reorder timers), "keepalive", "timewait", "persist" (netstat's "probe": zero-window
  probes); `timer_left_s` is idiag_expires, to the millisecond (ss rounds it for display:
  "12sec" for 12.345 s);
- the timer's 3rd field (idiag_retrans) is icsk_retransmits for "on" and icsk_probes_out for
  "persist"/"keepalive" (kernel inet_diag), so it becomes `retrans` or `probes`; with another
  timer, `retrans` is ss's "retrans:X/" (tcpi_retrans: retransmitted segments in flight) and
  `retrans_total` its "/Y" (tcpi_total_retrans);
- blank where ss prints nothing: `rto_ms` without tcp_info (TIME-WAIT), `bytes_acked` and
  `bytes_retrans` without tcp_info or when zero. (One difference: ss hides an RTO of exactly
  3000 ms, the old initial RTO; here it is written.)
"""

from __future__ import annotations

import csv
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from lab.net.sockdiag import SockDiag, TcpInfo, TcpSocket
from lab.net.topology import Host

CSV_COLUMNS = (
    "t_s", "local", "peer", "state", "timer", "timer_left_s", "retrans", "probes", "backoff",
    "rto_ms", "unacked", "retrans_total", "lost", "bytes_acked", "bytes_retrans", "send_q",
    "netstat",
)
NO_SOCKET = "none"  # state of the row written when no socket matched at that instant
_NETSTAT_TIMER = {"on": "on", "keepalive": "keepalive", "timewait": "timewait",
                  "persist": "probe"}
_NO_INFO = TcpInfo(0, 0, 0, 0, 0, 0, 0, 0, 0, 0)


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


def endpoint(family: int, addr: tuple[str, int]) -> str:
    """ip:port as `ss -n` prints it: an IPv6 address in brackets ("[::ffff:10.0.0.1]:80")."""
    return f"[{addr[0]}]:{addr[1]}" if family == socket.AF_INET6 else f"{addr[0]}:{addr[1]}"


def snapshot(s: TcpSocket) -> SocketSnapshot:
    """One inet_diag socket in ss's vocabulary (see the module docstring)."""
    info = s.info or _NO_INFO
    timer = s.timer_name
    return SocketSnapshot(
        state=s.state_name, local=endpoint(s.family, s.local),
        peer=endpoint(s.family, s.peer), recv_q=s.recv_q, send_q=s.send_q,
        timer=timer, timer_left_s=s.expires_ms / 1000 if timer else None,
        retrans=s.retrans if timer == "on" else info.retrans,
        probes=s.retrans if timer in ("persist", "keepalive") else 0,
        backoff=info.backoff, rto_ms=info.rto_us / 1000 if info.rto_us else None,
        unacked=info.unacked, retrans_total=info.total_retrans, lost=info.lost,
        bytes_acked=info.bytes_acked or None, bytes_retrans=info.bytes_retrans or None,
    )


class SocketSnapshots:
    """A SnapshotLoop callable: the TCP sockets of host's namespace whose peer is
    dst_ip:dst_port, appended to sockets.csv at each tick.

    The sock_diag socket is opened here, inside the namespace, and closed by close() (before
    the namespace goes: it holds it). When no socket matches, one row with state "none" is
    written, so the CSV shows the socket disappearing (the kernel gave up) rather than just
    stopping.
    """

    def __init__(self, host: Host, dst_ip: str, dst_port: int, path: Path | str) -> None:
        self.host = host
        self.dst_ip = str(dst_ip)
        self.dst_port = dst_port
        self.path = Path(path)
        self._diag = SockDiag(host.ns)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[str] = self.path.open("w", newline="")
        self._csv = csv.DictWriter(self._file, fieldnames=CSV_COLUMNS)
        self._csv.writeheader()
        self._lock = threading.Lock()

    def read(self) -> list[SocketSnapshot]:
        return [snapshot(s) for s in self._diag.tcp(self.dst_ip, self.dst_port)]

    def __call__(self, t_s: float) -> list[SocketSnapshot]:
        socks = self.read()
        with self._lock:
            if socks:
                self._csv.writerows(s.row(t_s) for s in socks)
            else:
                self._csv.writerow({"t_s": f"{t_s:.3f}", "state": NO_SOCKET})
            self._file.flush()
        return socks

    def close(self) -> None:
        self._diag.close()
        with self._lock:
            self._file.close()
