"""TCP sockets of one namespace, from the kernel's inet_diag (sock_diag) dump: what `ss -tnoi`
prints, without a process per look.

`SockDiag(ns)` opens one NETLINK_SOCK_DIAG socket inside namespace `ns` (lab.net.netlink says
why by hand and why one socket in the namespace) and `tcp()` dumps the namespace's TCP sockets,
IPv4 and IPv6 (a Java client's socket is an IPv6 one with a v4-mapped address), each with
its timer (idiag_timer, idiag_expires, idiag_retrans) and, where the kernel has one, its
tcp_info (INET_DIAG_INFO). The fields are the kernel's, named as in <linux/inet_diag.h> and
<linux/tcp.h>; lab.capture.sockets turns them into ss's / netstat's vocabulary.

Timer (kernel inet_sk_diag_fill): 1 = retransmission timer (RTO, also the TLP and RACK
reorder timers), 2 = keepalive (sk_timer), 3 = TIME-WAIT, 4 = zero-window probe (persist);
`retrans` is icsk_retransmits for 1, icsk_probes_out for 2 and 4, req->num_retrans for a
SYN-RECV request, 0 for TIME-WAIT. A TIME-WAIT or request socket has no tcp_info.

One dump walks the kernel's TCP hash tables, which every namespace of the host shares
(tcp_ehash_entries: 262144 here, from the RAM), whatever the namespace holds: that walk is the
floor of a snapshot. So tcp() makes one walk for both families (TCPDIAG_GETSOCK; one per
family with SOCK_DIAG_BY_FAMILY, the fallback) and, given a peer port, lets the kernel filter
on it, which also skips the listening table.

Measured (`.venv/bin/python benchmarks/bench_snapshots.py --runs 7 --snapshots 30`, median of
7 runs x 30 snapshots, this 2-core host, kernel 6.18, load ~1.6 from other work), one
snapshot of the sockets to VIP:port of a namespace with 1 / 64 such connections:
SockDiag.tcp 1.08 / 1.54 ms, SocketSnapshots.read (with ss's vocabulary) 1.10 / 1.74 ms;
`ip netns exec NS ss -tnoiHO state all dst VIP:PORT` 8.8 / 7.6 ms wall, 8.4 / 7.1 ms CPU
(its text not even parsed); pyroute2's DiagSocket, two dumps, 2.9 / 6.0 ms.
"""

from __future__ import annotations

import errno
import socket
import struct
from dataclasses import dataclass

from lab.net.netlink import NetlinkDumper, attrs

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20  # inet_diag_req_v2: one family per dump
TCPDIAG_GETSOCK = 18  # the older inet_diag_req: both families in one dump (AF_UNSPEC)
INET_DIAG_INFO = 2  # attribute type; requested with idiag_ext bit 1 << (INET_DIAG_INFO - 1)
ALL_STATES = (1 << 12) - 1  # ss's "state all" (SS_ALL): TCP_ESTABLISHED .. TCP_CLOSING
# ss's names of the kernel's TCP states (index = sk_state); 12 is TCP_NEW_SYN_RECV
STATE_NAMES = ("UNKNOWN", "ESTAB", "SYN-SENT", "SYN-RECV", "FIN-WAIT-1", "FIN-WAIT-2",
               "TIME-WAIT", "UNCONN", "CLOSE-WAIT", "LAST-ACK", "LISTEN", "CLOSING", "SYN-RECV")
TIMER_NAMES = ("off", "on", "keepalive", "timewait", "persist")  # ss's; others: "unknown"

# inet_diag_msg: family, state, timer, retrans, sport, dport (network order), src, dst,
# if, cookie (8 bytes); then expires, rqueue, wqueue, uid, inode (host order)
_MSG_HEAD = struct.Struct("!BBBBHH16s16s")
_MSG_TAIL = struct.Struct("=IIIII")
_MSG_TAIL_OFF, _MSG_LEN = 52, 72
# the tcp_info (<linux/tcp.h>) fields read here, in TcpInfo's order, at their offsets: 2
# retransmits, 3 probes, 4 backoff, 8 rto, 24 unacked, 32 lost, 36 retrans, 100 total_retrans,
# 120 bytes_acked, 208 bytes_retrans (its end, 216: Linux 4.19+; a shorter one is zero-padded)
_TCP_INFO = struct.Struct("=2xBBB3xI12xI4xII60xI16xQ80xQ")


@dataclass(frozen=True)
class TcpInfo:
    """The tcp_info fields the lab reads (names without the tcpi_ prefix)."""

    retransmits: int  # icsk_retransmits
    probes: int  # icsk_probes_out
    backoff: int  # icsk_backoff
    rto_us: int
    unacked: int  # packets_out
    lost: int
    retrans: int  # retrans_out: retransmitted segments still unacknowledged
    total_retrans: int  # every retransmission of the connection (TLPs included)
    bytes_acked: int
    bytes_retrans: int


@dataclass(frozen=True)
class TcpSocket:
    """One TCP socket as inet_diag reports it."""

    family: int
    state: int  # the kernel's sk_state (TCP_ESTABLISHED = 1 ...)
    local: tuple[str, int]
    peer: tuple[str, int]
    timer: int  # idiag_timer (see the module docstring)
    expires_ms: int  # until the timer fires (0: due)
    retrans: int  # idiag_retrans
    recv_q: int
    send_q: int  # idiag_wqueue: write_seq - snd_una, ss's Send-Q
    inode: int
    info: TcpInfo | None

    @property
    def state_name(self) -> str:
        return STATE_NAMES[self.state] if self.state < len(STATE_NAMES) else "UNKNOWN"

    @property
    def timer_name(self) -> str | None:
        """ss's name of the armed timer, None when none is."""
        if not self.timer:
            return None
        return TIMER_NAMES[self.timer] if self.timer < len(TIMER_NAMES) else "unknown"


def _addr(family: int, raw: bytes) -> str:
    return socket.inet_ntop(family, raw[:4] if family == socket.AF_INET else raw)


def _tcp_info(data: bytes, start: int, end: int) -> TcpInfo:
    if end - start < _TCP_INFO.size:  # an older kernel's: ss pads it with zeros too
        data, start = data[start:end] + bytes(_TCP_INFO.size - (end - start)), 0
    return TcpInfo(*_TCP_INFO.unpack_from(data, start))


def parse_inet_diag_msg(data: bytes, start: int, end: int) -> TcpSocket | None:
    """One inet_diag_msg (and its INET_DIAG_INFO attribute) of a dump."""
    if end - start < _MSG_LEN:
        return None
    family, state, timer, retrans, sport, dport, src, dst = _MSG_HEAD.unpack_from(data, start)
    expires, rqueue, wqueue, _uid, inode = _MSG_TAIL.unpack_from(data, start + _MSG_TAIL_OFF)
    info = None
    for kind, a, b in attrs(data, start + _MSG_LEN, end):
        if kind == INET_DIAG_INFO:
            info = _tcp_info(data, a, b)
    return TcpSocket(family, state, (_addr(family, src), sport), (_addr(family, dst), dport),
                     timer, expires, retrans, rqueue, wqueue, inode, info)


def _sockid(dport: int) -> bytes:
    """inet_diag_sockid for a dump: of it a dump reads only the ports; a non-zero idiag_dport
    (network order) keeps the sockets whose peer port it is, and skips the listening table
    (kernel inet_diag_dump_icsk); the addresses are ignored."""
    return struct.pack("!HH", 0, dport) + bytes(44)


def dump_request(family: int, states: int = ALL_STATES, dport: int = 0) -> bytes:
    """inet_diag_req_v2 (SOCK_DIAG_BY_FAMILY) for a dump of the TCP sockets of `family` in
    `states`, with tcp_info."""
    return struct.pack("=BBBBI", family, socket.IPPROTO_TCP, 1 << (INET_DIAG_INFO - 1), 0,
                       states) + _sockid(dport)


def compat_request(states: int = ALL_STATES, dport: int = 0) -> bytes:
    """inet_diag_req (TCPDIAG_GETSOCK) for a dump of the TCP sockets of both families in
    `states`, with tcp_info: the kernel (inet_diag_dump_compat) walks its socket tables once
    for both, where SOCK_DIAG_BY_FAMILY needs one walk per family."""
    return struct.pack("=BBBB", 0, 0, 0, 1 << (INET_DIAG_INFO - 1)) + _sockid(dport) + \
        struct.pack("=II", states, 0)


def peer_matches(sock: TcpSocket, ip: str, port: int | None) -> bool:
    """Whether sock's peer is ip[:port], an IPv4 ip also matching its v4-mapped form (as ss's
    `dst` filter does)."""
    if port is not None and sock.peer[1] != port:
        return False
    return sock.peer[0] == ip or sock.peer[0] == f"::ffff:{ip}"


class SockDiag:
    """The TCP sockets of namespace `ns` (None: the caller's), through one sock_diag socket
    opened now, inside the namespace, and kept until close()."""

    FAMILIES = (socket.AF_INET, socket.AF_INET6)

    def __init__(self, ns: str | None) -> None:
        self.ns = ns
        self._nl = NetlinkDumper(ns, NETLINK_SOCK_DIAG)
        self.compat = True  # one dump for both families, until the kernel refuses it

    def __enter__(self) -> SockDiag:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _dump(self, dport: int) -> list[TcpSocket]:
        if self.compat:
            try:
                return self._nl.dump(TCPDIAG_GETSOCK, compat_request(dport=dport),
                                     parse_inet_diag_msg)
            except OSError as exc:  # a kernel without it: one dump per family from now on
                if exc.errno not in (errno.EINVAL, errno.ENOENT, errno.EOPNOTSUPP):
                    raise
                self.compat = False
        found: list[TcpSocket] = []
        for family in self.FAMILIES:
            found += self._nl.dump(SOCK_DIAG_BY_FAMILY, dump_request(family, dport=dport),
                                   parse_inet_diag_msg)
        return found

    def tcp(self, peer: str | None = None, port: int | None = None) -> list[TcpSocket]:
        """Every TCP socket (any state), or those whose peer is `peer` (and `port`: the
        kernel filters on it), IPv4 and IPv6 (an IPv4 peer also as v4-mapped)."""
        found = self._dump(port or 0)
        if peer is None:
            return found if port is None else [s for s in found if s.peer[1] == port]
        return [s for s in found if peer_matches(s, peer, port)]

    def netns_cookie(self) -> int:
        return self._nl.netns_cookie()

    def close(self) -> None:
        self._nl.close()
