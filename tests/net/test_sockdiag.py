"""SockDiag: inet_diag_msg and tcp_info decoded at the kernel's offsets; live, the sockets of
the lab namespace with their states, timers and v4-mapped peers, filtered by peer port in the
kernel. (That the fields mean what `ss -tnoi` prints: tests/capture/test_sockets.py.)"""

from __future__ import annotations

import contextlib
import socket
import struct
import time
from collections.abc import Callable, Iterator

import pytest

from lab.net.runtime import Run
from lab.net.sockdiag import (
    ALL_STATES,
    INET_DIAG_INFO,
    SockDiag,
    TcpSocket,
    dump_request,
    parse_inet_diag_msg,
)
from lab.net.topology import Network, Topology, in_netns

TCP_INFO_FIELDS = {  # <linux/tcp.h> offset -> (format, value) written into a tcp_info
    2: ("B", 3), 3: ("B", 4), 4: ("B", 5), 8: ("I", 408000), 24: ("I", 1), 32: ("I", 1),
    36: ("I", 1), 100: ("I", 6), 120: ("Q", 61), 208: ("Q", 60),
}


def diag_msg(info_len: int | None, family: int = socket.AF_INET) -> bytes:
    """An inet_diag_msg as the kernel lays it out, with a tcp_info of info_len bytes."""
    n = 4 if family == socket.AF_INET else 16
    src = socket.inet_pton(family, "198.18.0.1" if n == 4 else "::ffff:198.18.0.1")
    dst = socket.inet_pton(family, "198.18.0.100" if n == 4 else "::ffff:198.18.0.100")
    msg = struct.pack("=BBBB", family, 1, 1, 5) + struct.pack("!HH", 39344, 7000)
    msg += src.ljust(16, b"\0") + dst.ljust(16, b"\0") + struct.pack("=I8s", 0, b"cookie!!")
    msg += struct.pack("=IIIII", 6100, 0, 10, 0, 4242)
    if info_len is not None:
        info = bytearray(232)
        for off, (fmt, value) in TCP_INFO_FIELDS.items():
            struct.pack_into(f"={fmt}", info, off, value)
        msg += struct.pack("=HH", 4 + info_len, INET_DIAG_INFO) + bytes(info[:info_len])
    return msg


def test_inet_diag_msg_and_tcp_info_at_the_kernels_offsets() -> None:
    data = diag_msg(232)
    s = parse_inet_diag_msg(data, 0, len(data))
    assert s is not None
    assert (s.family, s.state_name, s.timer_name, s.expires_ms, s.retrans) == (
        socket.AF_INET, "ESTAB", "on", 6100, 5)
    assert (s.local, s.peer, s.send_q, s.recv_q, s.inode) == (
        ("198.18.0.1", 39344), ("198.18.0.100", 7000), 10, 0, 4242)
    assert s.info is not None
    assert (s.info.retransmits, s.info.probes, s.info.backoff, s.info.rto_us) == (3, 4, 5,
                                                                                  408000)
    assert (s.info.unacked, s.info.lost, s.info.retrans, s.info.total_retrans) == (1, 1, 1, 6)
    assert (s.info.bytes_acked, s.info.bytes_retrans) == (61, 60)
    v6 = diag_msg(None, socket.AF_INET6)
    s6 = parse_inet_diag_msg(v6, 0, len(v6))
    assert s6 is not None and s6.info is None and s6.peer == ("::ffff:198.18.0.100", 7000)


def test_a_shorter_tcp_info_is_zero_padded() -> None:
    data = diag_msg(104)  # through tcpi_total_retrans: no byte counters (before Linux 4.1)
    s = parse_inet_diag_msg(data, 0, len(data))
    assert s is not None and s.info is not None
    assert s.info.total_retrans == 6 and s.info.bytes_acked == s.info.bytes_retrans == 0
    assert parse_inet_diag_msg(data, 0, 40) is None  # truncated: skipped


def test_dump_request_layout() -> None:
    req = dump_request(socket.AF_INET6, dport=7000)
    assert len(req) == 56  # inet_diag_req_v2
    assert req[:4] == bytes([socket.AF_INET6, socket.IPPROTO_TCP, 1 << (INET_DIAG_INFO - 1), 0])
    assert struct.unpack_from("=I", req, 4)[0] == ALL_STATES
    assert struct.unpack_from("!HH", req, 8) == (0, 7000)  # idiag_sport, idiag_dport
    assert req[12:] == bytes(44)


@pytest.fixture
def net(lab_run: Run) -> Iterator[Network]:
    topo = Topology()
    topo.add_host("a")
    topo.add_host("b")
    topo.add_link("a", "b")
    with Network(topo, lab_run) as n:
        yield n


def ns_socket(ns: str, family: int = socket.AF_INET) -> socket.socket:
    """A TCP socket made in namespace ns: it stays there whatever thread uses it."""
    return in_netns(ns, lambda: socket.socket(family, socket.SOCK_STREAM))


def connect(stack: contextlib.ExitStack, client: socket.socket,
            server: socket.socket, addr: tuple[str, int]) -> socket.socket:
    """client connected to the listening server at addr; the accepted socket."""
    stack.enter_context(client)
    client.connect(addr)
    conn, _ = server.accept()
    return stack.enter_context(conn)


def wait_for(fn: Callable[[], object], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not fn():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def mine(found: list[TcpSocket], ports: set[int]) -> dict[int, TcpSocket]:
    return {s.local[1]: s for s in found if s.local[1] in ports}


@pytest.mark.root
def test_states_timers_and_a_v4_mapped_peer(net: Network) -> None:
    a, b = net["a"], net["b"]
    bip = str(b.address_towards("a"))
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(ns_socket(b.ns))
        server.bind((bip, 0))
        server.listen()
        port = server.getsockname()[1]
        plain, mapped, closing = (ns_socket(a.ns), ns_socket(a.ns, socket.AF_INET6),
                                  ns_socket(a.ns))
        connect(stack, plain, server, (bip, port))
        connect(stack, mapped, server, (f"::ffff:{bip}", port))
        peer_of_closing = connect(stack, closing, server, (bip, port))
        plain.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        ports = {s.getsockname()[1] for s in (plain, mapped, closing)}
        closing_port = closing.getsockname()[1]
        closing.close()  # the active close: FIN-WAIT-2, then TIME-WAIT once the peer closes
        peer_of_closing.close()
        with SockDiag(a.ns) as diag:
            wait_for(lambda: mine(diag.tcp(bip, port), {closing_port})[
                closing_port].state_name == "TIME-WAIT")
            got = mine(diag.tcp(bip, port), ports)
        by_family = {s.family: s for s in got.values() if s.state_name == "ESTAB"}
        assert set(by_family) == {socket.AF_INET, socket.AF_INET6}
        assert by_family[socket.AF_INET6].peer == (f"::ffff:{bip}", port)
        assert by_family[socket.AF_INET].timer_name == "keepalive"  # SO_KEEPALIVE arms it
        assert 7190_000 < by_family[socket.AF_INET].expires_ms <= 7200_000  # keepalive_time
        assert by_family[socket.AF_INET6].timer_name is None
        assert by_family[socket.AF_INET6].info is not None
        tw = got[closing_port]
        assert tw.timer_name == "timewait" and tw.info is None and tw.retrans == 0
        assert 55_000 < tw.expires_ms <= 60_000


@pytest.mark.root
def test_the_kernel_filters_on_the_peer_port(net: Network) -> None:
    a, b = net["a"], net["b"]
    bip = str(b.address_towards("a"))
    with contextlib.ExitStack() as stack:
        servers = []
        for _ in range(2):
            s = stack.enter_context(ns_socket(b.ns))
            s.bind((bip, 0))
            s.listen()
            servers.append(s)
        listener = stack.enter_context(ns_socket(a.ns))  # a's own: LISTEN, peer port 0
        listener.bind(("0.0.0.0", 0))
        listener.listen()
        p1, p2 = (s.getsockname()[1] for s in servers)
        for srv, p in ((servers[0], p1), (servers[1], p2), (servers[1], p2)):
            connect(stack, ns_socket(a.ns), srv, (bip, p))
        with SockDiag(a.ns) as diag:
            everything = diag.tcp()
            only_p2 = diag.tcp(port=p2)
            to_p1 = diag.tcp(bip, p1)
            nobody = diag.tcp("198.51.100.7", p1)
            assert diag.compat  # both families in one dump
            diag.compat = False  # as on a kernel without it: one dump per family
            assert diag.tcp(port=p2) == only_p2
            assert sorted(diag.tcp(), key=str) == sorted(everything, key=str)
        assert {s.state_name for s in everything} == {"ESTAB", "LISTEN"}
        assert len(everything) == 4
        assert len(only_p2) == 2 and {s.peer for s in only_p2} == {(bip, p2)}
        assert [s.peer for s in to_p1] == [(bip, p1)] and nobody == []
