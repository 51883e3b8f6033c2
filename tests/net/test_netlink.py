"""NetlinkDumper: a socket made inside a lab namespace answers for that namespace from any
thread, never for the host's; an error answer raises and leaves the socket usable; a dump
left half read does not spoil the next one; close() is final."""

from __future__ import annotations

import contextlib
import errno
import socket
import struct
import threading
from collections.abc import Iterator

import pytest

from lab.net.conntrack import ConntrackTable, Tuple, get_request
from lab.net.netlink import NetlinkDumper, attrs, netns_cookie
from lab.net.runtime import Run
from lab.net.sockdiag import (
    NETLINK_SOCK_DIAG,
    SOCK_DIAG_BY_FAMILY,
    SockDiag,
    dump_request,
    parse_inet_diag_msg,
)
from lab.net.topology import Network, Topology, in_netns


def ns_socket(ns: str | None, family: int = socket.AF_INET) -> socket.socket:
    """A TCP socket of namespace ns (None: this thread's), usable from any thread."""
    if ns is None:
        return socket.socket(family, socket.SOCK_STREAM)
    return in_netns(ns, lambda: socket.socket(family, socket.SOCK_STREAM))


def listeners(ns: str | None, n: int, stack: contextlib.ExitStack) -> list[int]:
    """n listening sockets on 127.0.0.1 in ns, closed with stack; their ports."""
    ports = []
    for _ in range(n):
        s = stack.enter_context(ns_socket(ns))
        s.bind(("127.0.0.1", 0))
        s.listen()
        ports.append(s.getsockname()[1])
    return ports


@pytest.fixture
def net(lab_run: Run) -> Iterator[Network]:
    topo = Topology()
    topo.add_host("a")
    with Network(topo, lab_run) as n:
        yield n


def test_attrs_walks_aligned_attributes_and_stops_at_a_bad_length() -> None:
    data = struct.pack("=HH4s", 8, 1, b"abcd") + struct.pack("=HHB3x", 5, 0x8002, 7)
    assert [(k, data[a:b]) for k, a, b in attrs(data, 0, len(data))] == [
        (1, b"abcd"), (2, b"\x07")]  # NLA_F_NESTED masked off, padding skipped
    assert list(attrs(struct.pack("=HH", 40, 1) + bytes(4), 0, 8)) == []  # overruns the end


@pytest.mark.root
def test_the_socket_answers_for_its_namespace_from_any_thread(net: Network) -> None:
    ns = net["a"].ns
    with contextlib.ExitStack() as stack:
        mine = set(listeners(ns, 2, stack))
        host_port = listeners(None, 1, stack)[0]  # a socket of the host namespace
        diag = stack.enter_context(SockDiag(ns))
        host_cookie = netns_cookie(stack.enter_context(ns_socket(None)))
        ns_cookie = netns_cookie(stack.enter_context(ns_socket(ns)))
        seen: dict[str, object] = {}

        def look() -> None:  # a thread that never entered the namespace
            seen["cookie"] = diag.netns_cookie()
            seen["ports"] = {s.local[1] for s in diag.tcp()}

        t = threading.Thread(target=look)
        t.start()
        t.join()
        assert ns_cookie != host_cookie
        assert diag.netns_cookie() == seen["cookie"] == ns_cookie
        assert seen["ports"] == mine  # the namespace's sockets only; not the host's
        assert host_port not in seen["ports"]
        with SockDiag(None) as here:  # None: the caller's namespace, the host's here
            assert here.netns_cookie() == host_cookie
            assert host_port in {s.local[1] for s in here.tcp()}


@pytest.mark.root
def test_an_error_answer_raises_and_the_socket_stays_usable(net: Network) -> None:
    dumper = NetlinkDumper(net["a"].ns, NETLINK_SOCK_DIAG)
    try:
        bad = struct.pack("=BBBBI", socket.AF_INET, 253, 0, 0, 0xFFF) + bytes(48)  # no such
        with pytest.raises(OSError) as err:  # protocol handler: the kernel says ENOENT
            dumper.dump(SOCK_DIAG_BY_FAMILY, bad, parse_inet_diag_msg)
        assert err.value.errno == errno.ENOENT
        assert dumper.dump(SOCK_DIAG_BY_FAMILY, dump_request(socket.AF_INET),
                           parse_inet_diag_msg) == []
    finally:
        dumper.close()


@pytest.mark.root
def test_a_dump_left_half_read_does_not_spoil_the_next(net: Network) -> None:
    """400 sockets are six datagrams here; a parse error in the first leaves the kernel's dump
    running on the socket (a new request would get EBUSY): the next dump drains it first."""
    ns = net["a"].ns
    with contextlib.ExitStack() as stack:
        ports = set(listeners(ns, 400, stack))
        dumper = NetlinkDumper(ns, NETLINK_SOCK_DIAG)
        stack.callback(dumper.close)
        req = dump_request(socket.AF_INET)

        def fail(data: bytes, start: int, end: int) -> None:
            raise ValueError("parse failed")

        sizes: list[int] = []
        dumper.sock = _Counting(dumper.sock, sizes)  # type: ignore[assignment]
        with pytest.raises(ValueError):
            dumper.dump(SOCK_DIAG_BY_FAMILY, req, fail)
        for _ in range(3):
            sizes.clear()
            got = dumper.dump(SOCK_DIAG_BY_FAMILY, req, parse_inet_diag_msg)
            assert {s.local[1] for s in got} == ports and len(got) == 400
        assert len(sizes) > 2, sizes  # the answer came in several datagrams


class _Counting:
    """A socket wrapper recording the size of each datagram received."""

    def __init__(self, sock: socket.socket, sizes: list[int]) -> None:
        self._sock, self._sizes = sock, sizes

    def recv(self, n: int) -> bytes:
        data = self._sock.recv(n)
        self._sizes.append(len(data))
        return data

    def __getattr__(self, name: str) -> object:
        return getattr(self._sock, name)


@pytest.mark.root
def test_lookups_answer_each_request_none_where_nothing_is(net: Network) -> None:
    """Conntrack lookups (ctnetlink GET), 150 in three datagrams: an unknown tuple answers
    ENOENT (None); a malformed request raises, and the socket stays usable."""
    with ConntrackTable(net["a"].ns) as table:
        nothing = [get_request(Tuple("198.51.100.1", "198.51.100.2", 6, p, 80))
                   for p in range(1000, 1150)]
        assert table.get(nothing) == [None] * 150
        with pytest.raises(OSError) as err:
            table.get([nothing[0], struct.pack("=BBH", socket.AF_INET, 0, 0)])  # no tuple
        assert err.value.errno == errno.EINVAL
        assert table.get(nothing[:2]) == [None, None]


@pytest.mark.root
def test_close_is_final_and_idempotent(net: Network) -> None:
    dumper = NetlinkDumper(net["a"].ns, NETLINK_SOCK_DIAG)
    dumper.close()
    dumper.close()
    with pytest.raises(OSError):
        dumper.dump(SOCK_DIAG_BY_FAMILY, dump_request(socket.AF_INET), parse_inet_diag_msg)
