"""sockets.csv keeps `ss -tnoi`'s meanings: the netlink snapshot of a socket is what ss prints
for it, on ss lines captured in the lab (kernel 6.18, iproute2 6.1) and on live sockets of a
lab namespace in each timer state (retransmitting through a blackhole, SYN-SENT, keepalive,
zero-window probe, TIME-WAIT, none), compared with `ss -tnoiHO` run between two snapshots.

ss's text is read by the reference parser below (the lab no longer runs ss per tick)."""

from __future__ import annotations

import contextlib
import csv
import errno
import re
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from lab.capture.sockets import CSV_COLUMNS, NO_SOCKET, SocketSnapshot, SocketSnapshots, snapshot
from lab.net.runtime import Run
from lab.net.sockdiag import TcpInfo, TcpSocket
from lab.net.topology import Host, Network, Topology, in_netns

# --- the reference: ss's text ------------------------------------------------------------
SS_STATES = frozenset({
    "ESTAB", "SYN-SENT", "SYN-RECV", "FIN-WAIT-1", "FIN-WAIT-2", "TIME-WAIT", "CLOSE",
    "CLOSE-WAIT", "LAST-ACK", "LISTEN", "CLOSING", "UNCONN",
})
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


def ss_resolution(left_s: float) -> float:
    """How much ss's print_ms_timer drops: the ms from 10 s, the s from 10 min."""
    return 0.001 if left_s < 10 else 1.0 if left_s < 600 else 60.0


def _int(fields: dict[str, str], key: str) -> int | None:
    v = fields.get(key)
    return None if v is None else int(v)


def parse_ss_line(line: str) -> SocketSnapshot:
    """One socket from `ss -tnoiH state all` output (main line + info, joined or -O)."""
    tokens = line.split()
    state = tokens[0] if tokens and tokens[0] in SS_STATES else ""
    rest = tokens[1:] if state else tokens  # ss omits the column when filtering one state
    if len(rest) < 4:
        raise ValueError(f"short ss line: {line!r}")
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
        state=state or "?", local=rest[2], peer=rest[3], recv_q=int(rest[0]),
        send_q=int(rest[1]), timer=timer, timer_left_s=left,
        retrans=count if timer == "on" else int(cur_retrans or 0),
        probes=count if timer in ("persist", "keepalive") else 0,
        backoff=_int(fields, "backoff") or 0,
        rto_ms=float(fields["rto"]) if "rto" in fields else None,
        unacked=_int(fields, "unacked") or 0, retrans_total=int(total or 0),
        lost=_int(fields, "lost") or 0, bytes_acked=_int(fields, "bytes_acked"),
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


# `ss -tnoiHO state all dst VIP:7000` in the client netns, blackholed connection,
# tcp_retries2=5: before the drop, 0.5 s into it, while backed off, and the final expiry.
SS_BEFORE = (
    "ESTAB 0      0      198.18.0.1:39344 198.18.0.100:7000 ts sack bbr wscale:10,10 rto:204 "
    "rtt:0.141/0.062 ato:40 mss:1448 pmtu:1500 rcvmss:536 advmss:1448 cwnd:16 bytes_sent:60 "
    "bytes_acked:61 bytes_received:60 segs_out:14 segs_in:8 data_segs_out:6 data_segs_in:6 "
    "bbr:(bw:1053090592bps,mrtt:0.011,pacing_gain:2.88672,cwnd_gain:2.88672) send "
    "1314496454bps lastsnd:12 lastrcv:12 lastack:12 pacing_rate 3009576600bps delivery_rate "
    "1053090904bps delivered:7 app_limited rcv_space:14480 rcv_ssthresh:64088 minrtt:0.011 "
    "snd_wnd:65536"
)
SS_FIRST_RTO = (
    "ESTAB 0      10     198.18.0.1:39344 198.18.0.100:7000 timer:(on,352ms,1) ts sack bbr "
    "wscale:10,10 rto:408 backoff:1 rtt:0.141/0.062 ato:40 mss:1448 pmtu:1500 rcvmss:536 "
    "advmss:1448 cwnd:1 bytes_sent:90 bytes_retrans:20 bytes_acked:61 bytes_received:60 "
    "segs_out:17 segs_in:8 data_segs_out:9 data_segs_in:6 bbr:(bw:1053090592bps,mrtt:0.011,"
    "pacing_gain:2.88672,cwnd_gain:2.88672) send 82156028bps lastsnd:56 lastrcv:572 "
    "lastack:572 pacing_rate 3009576600bps delivery_rate 1053090904bps delivered:7 "
    "app_limited busy:472ms unacked:1 retrans:1/2 lost:1 rcv_space:14480 rcv_ssthresh:64088 "
    "minrtt:0.011 snd_wnd:65536"
)
SS_BACKED_OFF = (
    "ESTAB 0      10     198.18.0.1:39344 198.18.0.100:7000 timer:(on,6.100ms,5) ts sack bbr "
    "wscale:10,10 rto:6528 backoff:5 rtt:0.141/0.062 ato:40 mss:1448 pmtu:1500 rcvmss:536 "
    "advmss:1448 cwnd:1 bytes_sent:130 bytes_retrans:60 bytes_acked:61 bytes_received:60 "
    "segs_out:21 segs_in:8 data_segs_out:13 data_segs_in:6 bbr:(bw:1053090592bps,mrtt:0.011,"
    "pacing_gain:2.88672,cwnd_gain:2.88672) send 82156028bps lastsnd:428 lastrcv:7192 "
    "lastack:7192 pacing_rate 3009576600bps delivery_rate 1053090904bps delivered:7 "
    "app_limited busy:7092ms unacked:1 retrans:1/6 lost:1 rcv_space:14480 rcv_ssthresh:64088 "
    "minrtt:0.011 snd_wnd:65536"
)
SS_DUE = "ESTAB 0      10     198.18.0.1:39344 198.18.0.100:7000 timer:(on,,5) ts sack bbr rto:6528 backoff:5 unacked:1 retrans:1/6 lost:1"  # noqa: E501 (abridged after the timer)
# Without -O ss prints the info on a second, tab-indented line (a TIME-WAIT-like socket gets a
# line of blanks); keepalive, timewait, persist (zero window) and SYN-SENT timers.
SS_TWO_LINES = (
    "ESTAB      0      0      198.18.0.1:54778 198.18.0.100:7000 timer:(keepalive,28sec,0)\n"
    "\t ts sack bbr wscale:10,10 rto:204 rtt:0.302/0.151 mss:1448 pmtu:1500 rcvmss:536 "
    "advmss:1448 cwnd:10 bytes_acked:1 segs_out:2 segs_in:1 bbr:(bw:0bps,mrtt:0.302,"
    "pacing_gain:1,cwnd_gain:1) send 383576159bps lastsnd:1520 lastrcv:1520 lastack:1520 "
    "pacing_rate 1096201840bps delivered:1 app_limited rcv_space:14480 rcv_ssthresh:64088 "
    "minrtt:0.302 snd_wnd:65160\n"
    "FIN-WAIT-2 0      0      198.18.0.1:54784 198.18.0.100:7000 timer:(timewait,58sec,0)\n"
    "\t" + " " * 60 + "\n"
    "ESTAB      0      32600  198.18.0.1:54796 198.18.0.100:7000 timer:(persist,088ms,1)\n"
    "\t ts sack bbr wscale:10,10 rto:212 backoff:2 rtt:10.089/17.477 mss:1448 pmtu:1500 "
    "rcvmss:536 advmss:1448 cwnd:101 bytes_sent:129208 bytes_retrans:704 bytes_acked:128505 "
    "segs_out:95 segs_in:8 data_segs_out:91 bbr:(bw:3697020832bps,mrtt:0.047,"
    "pacing_gain:2.88672,cwnd_gain:2.88672) send 115966300bps lastsnd:1452 lastrcv:1516 "
    "lastack:1212 pacing_rate 10565536768bps delivery_rate 2633920bps delivered:92 "
    "busy:1516ms rwnd_limited:1472ms(97.1%) retrans:0/1 dsack_dups:1 rcv_space:14480 "
    "rcv_ssthresh:64088 notsent:32600 minrtt:0.047\n"
    "SYN-SENT 0      1      198.18.0.1:52282 198.18.0.100:7000 timer:(on,540ms,1)\n"
    "\t bbr rto:1000 mss:524 pmtu:1500 rcvmss:88 advmss:1460 cwnd:1 segs_out:2 "
    "bbr:(bw:0bps,mrtt:0) lastsnd:1173388 lastrcv:1173388 lastack:1173388 app_limited "
    "unacked:1 retrans:1/1 lost:1 rcv_ssthresh:64240\n"
)


@pytest.mark.parametrize(("text", "seconds"), [
    ("352ms", 0.352), ("024ms", 0.024), ("1.304ms", 1.304), ("6.100ms", 6.1), ("28sec", 28),
    ("58sec", 58), ("1min2sec", 62), ("1min", 60), ("12min", 720), ("", 0.0),
])
def test_ss_duration(text: str, seconds: float) -> None:
    assert parse_ss_duration(text) == pytest.approx(seconds)
    with pytest.raises(ValueError):
        parse_ss_duration("soon")


def test_reference_parser_on_captured_lines() -> None:
    before, first, backed, due = map(parse_ss_line, (SS_BEFORE, SS_FIRST_RTO, SS_BACKED_OFF,
                                                     SS_DUE))
    assert before.timer is None and before.rto_ms == 204 and before.bytes_acked == 61
    assert (first.timer, first.timer_left_s, first.retrans, first.backoff) == ("on", 0.352, 1, 1)
    assert (first.retrans_total, first.bytes_retrans, first.send_q) == (2, 20, 10)
    assert (backed.timer_left_s, backed.retrans, backed.rto_ms) == (6.1, 5, 6528)
    assert (due.timer_left_s, due.retrans) == (0.0, 5)
    ka, tw, zw, syn = parse_ss_output(SS_TWO_LINES)
    assert (ka.timer, ka.probes, tw.state, tw.rto_ms) == ("keepalive", 0, "FIN-WAIT-2", None)
    assert (zw.timer, zw.probes, zw.retrans, zw.retrans_total) == ("persist", 1, 0, 1)
    assert (syn.state, syn.retrans, syn.rto_ms) == ("SYN-SENT", 1, 1000)
    assert parse_ss_output("") == []


# --- the netlink snapshot of the sockets those lines show ----------------------------------
C, V = ("198.18.0.1", 39344), ("198.18.0.100", 7000)


def info(**kw: int) -> TcpInfo:
    base = dict(retransmits=0, probes=0, backoff=0, rto_us=204000, unacked=0, lost=0,
                retrans=0, total_retrans=0, bytes_acked=0, bytes_retrans=0)
    return TcpInfo(**{**base, **kw})


def sock(state: int, timer: int, expires_ms: int, retrans: int, send_q: int,
         tcp_info: TcpInfo | None, local: tuple[str, int] = C) -> TcpSocket:
    return TcpSocket(socket.AF_INET, state, local, V, timer, expires_ms, retrans, 0, send_q,
                     1, tcp_info)


@pytest.mark.parametrize(("line", "kernel"), [
    (SS_BEFORE, sock(1, 0, 0, 0, 0, info(bytes_acked=61))),
    (SS_FIRST_RTO, sock(1, 1, 352, 1, 10, info(retransmits=1, backoff=1, rto_us=408000,
                                                unacked=1, lost=1, retrans=1, total_retrans=2,
                                                bytes_acked=61, bytes_retrans=20))),
    (SS_BACKED_OFF, sock(1, 1, 6100, 5, 10, info(retransmits=5, backoff=5, rto_us=6528000,
                                                 unacked=1, lost=1, retrans=1,
                                                 total_retrans=6, bytes_acked=61,
                                                 bytes_retrans=60))),
    (SS_TWO_LINES.splitlines()[0] + SS_TWO_LINES.splitlines()[1],
     sock(1, 2, 28000, 0, 0, info(bytes_acked=1), ("198.18.0.1", 54778))),
    (SS_TWO_LINES.splitlines()[2], sock(5, 3, 58000, 0, 0, None, ("198.18.0.1", 54784))),
    (SS_TWO_LINES.splitlines()[4] + SS_TWO_LINES.splitlines()[5],
     sock(1, 4, 88, 1, 32600, info(backoff=2, rto_us=212000, total_retrans=1,
                                   bytes_acked=128505, bytes_retrans=704),
          ("198.18.0.1", 54796))),
    (SS_TWO_LINES.splitlines()[6] + SS_TWO_LINES.splitlines()[7],
     sock(2, 1, 540, 1, 1, info(rto_us=1000000, unacked=1, lost=1, retrans=1,
                                total_retrans=1), ("198.18.0.1", 52282))),
])
def test_snapshot_is_what_ss_prints(line: str, kernel: TcpSocket) -> None:
    assert snapshot(kernel) == parse_ss_line(line)


def test_row_columns() -> None:
    row = snapshot(sock(1, 1, 352, 1, 10, info(backoff=1, rto_us=408000))).row(1.5)
    assert tuple(row) == CSV_COLUMNS
    assert (row["t_s"], row["timer"], row["timer_left_s"], row["retrans"]) == (
        "1.500", "on", "0.352", 1)
    assert (row["rto_ms"], row["bytes_acked"], row["netstat"]) == ("408", "", "on (0.35/1/0)")
    assert snapshot(sock(1, 4, 88, 1, 5, info())).netstat() == "probe (0.09/0/1)"
    assert snapshot(sock(1, 0, 0, 0, 0, info())).netstat() == "off (0.00/0/0)"


# --- live: the same sockets through netlink and through ss ---------------------------------
@pytest.fixture
def net(lab_run: Run) -> Iterator[Network]:
    topo = Topology()
    topo.add_host("client")
    topo.add_host("server")
    topo.add_link("client", "server")
    with Network(topo, lab_run) as n:
        yield n


def wait_for(fn: Callable[[], object], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not fn():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


class Sockets:
    """Client sockets towards one listening server socket, one per timer state; made in
    their namespaces from this thread (in_netns), closed with `stack`."""

    def __init__(self, net: Network, stack: contextlib.ExitStack) -> None:
        self.client, self.server = net["client"], net["server"]
        self.stack = stack
        self.ip = str(self.server.address_towards("client"))
        small = self._socket(self.server)
        small.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a window soon full
        small.bind((self.ip, 0))
        small.listen()
        self.listener, self.port = small, small.getsockname()[1]
        self.local: dict[str, str] = {}  # what -> client ip:port

    def _socket(self, host: Host, family: int = socket.AF_INET) -> socket.socket:
        s = in_netns(host.ns, lambda: socket.socket(family, socket.SOCK_STREAM))
        return self.stack.enter_context(s)

    def _blackhole(self, sport: int) -> None:
        self.server.nft(f"add rule ip bhl_test_bh in tcp sport {sport} drop\n")

    def connect(self, what: str, family: int = socket.AF_INET,
                blackhole: str = "") -> tuple[socket.socket, socket.socket | None]:
        c = self._socket(self.client, family)
        c.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", 0))
        local = c.getsockname()
        if blackhole == "syn":
            self._blackhole(local[1])
        addr = f"::ffff:{self.ip}" if family == socket.AF_INET6 else self.ip
        c.setblocking(False)
        err = c.connect_ex((addr, self.port))
        ip = str(self.client.address_towards("server"))
        self.local[what] = (f"[::ffff:{ip}]:{local[1]}" if family == socket.AF_INET6
                            else f"{ip}:{local[1]}")
        if blackhole == "syn":
            assert err == errno.EINPROGRESS
            return c, None
        wait_for(lambda: c.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0 and
                 _connected(c))
        conn = self.stack.enter_context(self.listener.accept()[0])
        if blackhole == "data":
            self._blackhole(local[1])
        return c, conn


def _connected(s: socket.socket) -> bool:
    try:
        s.getpeername()
    except OSError:
        return False
    return True


def build(net: Network, stack: contextlib.ExitStack) -> Sockets:
    """One socket per timer state, each settled in it."""
    k = Sockets(net, stack)
    k.server.nft("add table ip bhl_test_bh\n"
                 "add chain ip bhl_test_bh in { type filter hook input priority 0; }\n")
    idle, idle_peer = k.connect("idle")
    idle.send(b"hello")
    assert idle_peer is not None and idle_peer.recv(16) == b"hello"
    k.connect("v4-mapped", socket.AF_INET6)
    ka, _ = k.connect("keepalive")
    ka.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    k.connect("syn-sent", blackhole="syn")
    lost, _ = k.connect("retransmitting", blackhole="data")
    lost.send(b"x" * 10)
    full, _ = k.connect("zero-window")
    with contextlib.suppress(BlockingIOError):
        while True:
            full.send(b"z" * 65536)  # the peer never reads: its window closes
    tw, tw_peer = k.connect("time-wait")
    tw.close()
    assert tw_peer is not None
    tw_peer.close()
    return k


def stable_sandwich(k: Sockets, snaps: SocketSnapshots) -> dict[str, tuple[SocketSnapshot, ...]]:
    """what -> (ss before, netlink, ss after) for the sockets whose ss lines did not change
    (but for the timer's countdown) across the netlink snapshot."""
    def ss() -> dict[str, SocketSnapshot]:
        out = k.client.run(["ss", "-tnoiHO", "state", "all", "dst", f"{k.ip}:{k.port}"]).stdout
        return {s.local: s for s in parse_ss_output(out)}

    before, now, after = ss(), {s.local: s for s in snaps.read()}, ss()
    found = {}
    for what, local in k.local.items():
        a, b = before.get(local), after.get(local)
        if a and b and replace(a, timer_left_s=None) == replace(b, timer_left_s=None):
            found[what] = (a, now[local], b)
    return found


def _same_as_ss(ss_before: SocketSnapshot, nl: SocketSnapshot, ss_after: SocketSnapshot) -> None:
    assert replace(nl, timer_left_s=None) == replace(ss_before, timer_left_s=None), (
        asdict(nl), asdict(ss_before))
    if nl.timer is None:
        assert ss_before.timer_left_s is None
        return
    assert ss_before.timer_left_s is not None and ss_after.timer_left_s is not None
    assert nl.timer_left_s is not None
    # the timer counts down: ss after <= netlink <= ss before (less what ss's format drops)
    res = ss_resolution(ss_before.timer_left_s)
    assert ss_after.timer_left_s - 0.002 <= nl.timer_left_s, (ss_after, nl)
    assert nl.timer_left_s < ss_before.timer_left_s + res + 0.002, (ss_before, nl)


def _settled(k: Sockets, snaps: SocketSnapshots) -> bool:
    by = {s.local: s for s in snaps.read()}
    states = {what: by.get(local) for what, local in k.local.items()}
    lost, zw, syn = states["retransmitting"], states["zero-window"], states["syn-sent"]
    tw = states["time-wait"]
    return bool(lost and lost.retrans >= 2 and zw and zw.timer == "persist" and zw.probes and
                syn and syn.retrans and tw and tw.state == "TIME-WAIT")


@pytest.mark.root
def test_netlink_snapshots_match_ss_on_live_sockets(net: Network, tmp_path: Path) -> None:
    with contextlib.ExitStack() as stack:
        k = build(net, stack)
        snaps = SocketSnapshots(k.client, k.ip, k.port, tmp_path / "sockets.csv")
        stack.callback(snaps.close)
        # 2 RTOs in (backoff, bytes_retrans set), a SYN and a zero-window probe resent: ~1.2 s
        wait_for(lambda: _settled(k, snaps))
        compared: dict[str, SocketSnapshot] = {}
        for _ in range(20):
            for what, (a, nl, b) in stable_sandwich(k, snaps).items():
                _same_as_ss(a, nl, b)
                compared[what] = nl
            if set(compared) == set(k.local):
                break
        assert set(compared) == set(k.local)
        timers = {what: s.timer for what, s in compared.items()}
        assert timers == {"idle": None, "v4-mapped": None, "keepalive": "keepalive",
                          "syn-sent": "on", "retransmitting": "on", "zero-window": "persist",
                          "time-wait": "timewait"}
        lost = compared["retransmitting"]
        assert lost.backoff >= 2 and lost.bytes_retrans and lost.rto_ms and lost.rto_ms > 400
        assert compared["zero-window"].probes >= 1 and compared["zero-window"].send_q > 0
        assert compared["syn-sent"].state == "SYN-SENT" and compared["syn-sent"].retrans >= 1


@pytest.mark.root
def test_sockets_csv_rows_and_the_none_row(net: Network, tmp_path: Path) -> None:
    with contextlib.ExitStack() as stack:
        k = Sockets(net, stack)
        k.connect("idle")
        path, nobody = tmp_path / "sockets.csv", tmp_path / "nobody.csv"
        snaps = SocketSnapshots(k.client, k.ip, k.port, path)
        empty = SocketSnapshots(k.client, k.ip, k.port + 1 if k.port < 65535 else 1, nobody)
        (s,) = snaps(0.5)
        assert empty(0.5) == []
        snaps.close()
        empty.close()
    with path.open(newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert tuple(row) == CSV_COLUMNS
    assert row == {key: str(v) for key, v in s.row(0.5).items()}
    assert row["local"] == k.local["idle"] and row["state"] == "ESTAB"
    with nobody.open(newline="") as f:
        (none,) = list(csv.DictReader(f))
    assert none["state"] == NO_SOCKET and none["t_s"] == "0.500" and none["local"] == ""
