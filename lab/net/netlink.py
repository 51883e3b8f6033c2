"""Raw netlink sockets bound to one lab namespace: dumps and lookups (sock_diag, ctnetlink)
with NetlinkDumper, multicast events (ctnetlink's NEW) with NetlinkListener.

Why raw sockets and hand-packed messages rather than pyroute2 (DiagSocket, Conntrack), for
the two tables the capture layer reads twice a second per trial (the client's sockets, the
LB's conntrack):
- pyroute2 0.9's sockets are per thread (its AsyncCoreSocket keeps the event loop and the
  message queue in a threading.local) and DiagSocket takes no `netns=`; Conntrack(netns=)
  forks a helper process (pyroute2.netns.create_socket) to make its socket;
- decoding: pyroute2 decodes every attribute of every message into its nlmsg objects; the
  lab reads a dozen integers. benchmarks/bench_snapshots.py prints both costs (pyroute2's
  conntrack dump of 64 entries: 25.5 ms against 9.6 ms here); the figures are in the
  docstrings of lab.net.sockdiag and lab.net.conntrack.

A netlink socket belongs, for its whole life, to the namespace its creator was in when it was
made: the socket is made in a thread that has entered the namespace (topology.in_netns), then
any thread may use it (tests/net/test_netlink.py checks that against the host namespace). The
socket holds a reference on the namespace: close() it before the namespace is removed, or the
namespace (and its end of every veth) lives on, unnamed, until the socket is closed.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import threading
from collections.abc import Callable, Collection, Iterator, Sequence
from typing import TypeVar

from lab.net.topology import in_netns

T = TypeVar("T")

NLMSG_ERROR, NLMSG_DONE, NLMSG_MIN_TYPE = 2, 3, 0x10
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
NLA_TYPE_MASK = 0x3FFF  # without NLA_F_NESTED / NLA_F_NET_BYTEORDER
SO_NETNS_COOKIE = 71  # Linux 5.14+; Python's socket module has no name for it
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
_HDR = struct.Struct("=IHHII")  # nlmsghdr: len, type, flags, seq, pid
_NLA = struct.Struct("=HH")  # nlattr: len, type
_COOKIE = struct.Struct("=Q")
_ERRNO = struct.Struct("=i")
# The kernel sizes a dump's datagrams after the reader's buffer, at most 32 KiB
# (netlink_recvmsg's max_recvmsg_len); a buffer shorter than a datagram would truncate it.
RECV_BYTES = 1 << 16
BATCH = 64  # requests per datagram in requests(): their answers fit the default receive buffer
SEQ_MASK = 0xFFFFFFFF

# parse(data, start, end): one message's payload, data[start:end] -> an item, or None to skip
Parse = Callable[[bytes, int, int], "T | None"]


def attrs(data: bytes, start: int, end: int) -> Iterator[tuple[int, int, int]]:
    """(type, payload start, payload end) of each netlink attribute in data[start:end]."""
    while start + 4 <= end:
        length, kind = _NLA.unpack_from(data, start)
        if length < 4 or start + length > end:
            return
        yield kind & NLA_TYPE_MASK, start + 4, start + length
        start += (length + 3) & ~3


def messages(data: bytes) -> Iterator[tuple[int, int, int, int]]:
    """(type, seq, payload start, payload end) of each netlink message of a datagram."""
    off = 0
    while off + _HDR.size <= len(data):
        length, kind, _flags, seq, _pid = _HDR.unpack_from(data, off)
        if length < _HDR.size or off + length > len(data):
            return
        yield kind, seq, off + _HDR.size, off + length
        off += (length + 3) & ~3


def error_code(data: bytes, start: int, end: int) -> int:
    """The errno of an NLMSG_ERROR or NLMSG_DONE payload (0: an ack, a complete dump)."""
    return -_ERRNO.unpack_from(data, start)[0] if end - start >= 4 else 0


def netns_cookie(sock: socket.socket) -> int:
    """The kernel's id of the network namespace `sock` belongs to (SO_NETNS_COOKIE)."""
    return _COOKIE.unpack(sock.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8))[0]


def _make(ns: str | None, protocol: int, setup: Callable[[socket.socket], None] | None = None,
          ) -> socket.socket:
    """A netlink socket made in a thread inside ns (None: this thread's namespace)."""
    def make() -> socket.socket:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, protocol)
        if setup is not None:
            setup(sock)
        return sock

    return make() if ns is None else in_netns(ns, make)


class NetlinkDumper:
    """One netlink socket of `protocol` in namespace `ns` (None: the caller's own), opened
    now, for requests and their answers: dump() and requests() may be called from any thread
    (one at a time)."""

    def __init__(self, ns: str | None, protocol: int, timeout_s: float = 5.0) -> None:
        self.ns = ns
        self.sock = _make(ns, protocol)
        self.timeout_s = timeout_s
        self.sock.settimeout(timeout_s)  # an answer the kernel never sends must not hang us
        self._seq = 0
        self._unfinished = False  # answers left unread (an error or timeout in the middle)
        self._lock = threading.Lock()

    def _next_seqs(self, n: int) -> int:
        first = (self._seq + 1) & SEQ_MASK
        self._seq = (first + n - 1) & SEQ_MASK
        return first

    def dump(self, msg_type: int, payload: bytes, parse: Parse[T]) -> list[T]:
        """Send one dump request, parse every message of the answer (until NLMSG_DONE)."""
        with self._lock:
            if self._unfinished:
                self._drain()
            seq = self._next_seqs(1)
            self.sock.send(_HDR.pack(_HDR.size + len(payload), msg_type,
                                     NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + payload)
            out: list[T] = []
            self._unfinished = True
            while not self._datagram(self.sock.recv(RECV_BYTES), seq, parse, out):
                pass
            self._unfinished = False
            return out

    def requests(self, msg_type: int, payloads: Sequence[bytes], parse: Parse[T],
                 missing: Collection[int] = (errno.ENOENT,)) -> list[T | None]:
        """One request per payload (a lookup, not a dump), BATCH to a datagram, each answered
        by one message: parsed, or None where the kernel answered an errno in `missing` (no
        such object); another error raises."""
        out: list[T | None] = []
        with self._lock:
            if self._unfinished:
                self._drain()
            for i in range(0, len(payloads), BATCH):
                out += self._batch(msg_type, payloads[i:i + BATCH], parse, missing)
        return out

    def _batch(self, msg_type: int, payloads: Sequence[bytes], parse: Parse[T],
               missing: Collection[int]) -> list[T | None]:
        first = self._next_seqs(len(payloads))
        seqs = [(first + k) & SEQ_MASK for k in range(len(payloads))]
        self._unfinished = True
        self.sock.send(b"".join(_HDR.pack(_HDR.size + len(p), msg_type, NLM_F_REQUEST, q, 0) + p
                                for p, q in zip(payloads, seqs, strict=True)))
        answers: dict[int, T | None] = {}
        while len(answers) < len(seqs):
            data = self.sock.recv(RECV_BYTES)
            for kind, seq, start, end in messages(data):
                if (seq - first) & SEQ_MASK < len(seqs):
                    answers[seq] = self._answer(data, kind, start, end, parse, missing)
        self._unfinished = False
        return [answers[q] for q in seqs]

    def _answer(self, data: bytes, kind: int, start: int, end: int, parse: Parse[T],
                missing: Collection[int]) -> T | None:
        if kind != NLMSG_ERROR:
            return parse(data, start, end)
        code = error_code(data, start, end)
        if code and code not in missing:
            raise self._error(code)
        return None

    def _error(self, code: int) -> OSError:
        return OSError(code, f"netlink in {self.ns or 'this namespace'}: {os.strerror(code)}")

    def _drain(self) -> None:
        """Read what is left of an unfinished answer: the kernel answers a new dump request
        with EBUSY while one is running on the socket, and goes on with a running one only as
        its datagrams are read; a lookup's answers would be taken for the next one's."""
        self.sock.settimeout(0)
        try:
            while self.sock.recv(RECV_BYTES):
                pass
        except BlockingIOError:
            pass
        finally:
            self.sock.settimeout(self.timeout_s)
        self._unfinished = False

    def _datagram(self, data: bytes, seq: int, parse: Parse[T], out: list[T]) -> bool:
        """Parse one datagram of a dump into out; True once the dump is complete: at
        NLMSG_ERROR (the request refused) or NLMSG_DONE, whose int is the dump's own error
        (netlink_dump's dump_done_errno; 0: complete)."""
        if not data:
            raise OSError(errno.EIO, "netlink socket closed during a dump")
        for kind, mseq, start, end in messages(data):
            if mseq != seq:
                continue  # the rest of an earlier dump
            if kind in (NLMSG_DONE, NLMSG_ERROR):
                code = error_code(data, start, end)
                if code:
                    raise self._error(code)
                return True
            item = parse(data, start, end)
            if item is not None:
                out.append(item)
        return False

    def netns_cookie(self) -> int:
        return netns_cookie(self.sock)

    def close(self) -> None:
        """Close the socket (idempotent): it no longer holds the namespace."""
        with self._lock:
            self.sock.close()


class NetlinkListener:
    """A netlink socket of `protocol` in namespace `ns`, subscribed to the multicast `groups`
    (a bitmask) of that namespace only, with a receive buffer of `rcvbuf` bytes: pending()
    returns what the kernel sent since the last call, without waiting."""

    def __init__(self, ns: str | None, protocol: int, groups: int,
                 rcvbuf: int = 1 << 22) -> None:
        self.ns = ns

        def setup(sock: socket.socket) -> None:
            try:  # root may exceed net.core.rmem_max
                sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
            except PermissionError:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.bind((0, groups))
            sock.setblocking(False)

        self.sock = _make(ns, protocol, setup)
        self._lock = threading.Lock()

    def pending(self, parse: Parse[T]) -> list[T]:
        """Every message received so far, parsed (None: skipped). OSError ENOBUFS: the socket
        overran and the kernel dropped some (the caller resynchronises)."""
        out: list[T] = []
        with self._lock:
            while True:
                try:
                    data = self.sock.recv(RECV_BYTES)
                except BlockingIOError:
                    return out
                for kind, _seq, start, end in messages(data):
                    if kind < NLMSG_MIN_TYPE:
                        continue  # NLMSG_NOOP, _ERROR, _DONE, _OVERRUN: no event
                    item = parse(data, start, end)
                    if item is not None:
                        out.append(item)

    def close(self) -> None:
        with self._lock:
            self.sock.close()
