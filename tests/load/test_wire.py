"""The wire observer's pure core on synthesized TCP segments: reassembly, the MySQL and HTTP
classifiers, the connection lifecycle; and its socket on a real namespace link."""

from __future__ import annotations

import socket
import struct
import time
from typing import Any

import pytest

from lab.load.wire import (
    ACK,
    FIN,
    RST,
    SYN,
    Observer,
    Segment,
    Stream,
    WireEvent,
    parse_ipv4,
    sql_class,
)

PROTOCOL_41 = 0x200
OK = b"\x00\x00\x00\x02\x00\x00\x00"


def packet(seq: int, payload: bytes) -> bytes:
    """One MySQL packet: 3-byte length, sequence id, payload."""
    return len(payload).to_bytes(3, "little") + bytes([seq]) + payload


def err(code: int, message: str) -> bytes:
    return b"\xff" + code.to_bytes(2, "little") + b"#HY000" + message.encode()


def query(sql: str) -> bytes:
    return packet(0, b"\x03" + sql.encode())


class Conn:
    """One synthetic connection: segments with the right sequence numbers, fed to `obs`."""

    def __init__(self, obs: Observer, port: int = 40000, t: float = 100.0) -> None:
        self.obs = obs
        self.key = ("10.0.0.1", port)
        self.seq = {True: 1000, False: 90000}
        self.t = t
        self.events: list[WireEvent] = []

    def seg(self, outbound: bool, flags: int, payload: bytes = b"",
            seq: int | None = None) -> list[WireEvent]:
        self.t += 0.001
        at = self.seq[outbound] if seq is None else seq
        ev = self.obs.feed(Segment(self.t, outbound, self.key, at, 0, flags, payload))
        if seq is None:
            self.seq[outbound] = (at + len(payload) + (1 if flags & (SYN | FIN) else 0)) % 2**32
        self.events += ev
        return ev

    def connect(self) -> None:
        self.seg(True, SYN)
        self.seg(False, SYN | ACK)
        self.seg(True, ACK)

    def send(self, outbound: bool, data: bytes, parts: int = 1) -> list[WireEvent]:
        size = -(-len(data) // parts)
        out: list[WireEvent] = []
        for i in range(0, len(data), size):
            out += self.seg(outbound, ACK, data[i:i + size])
        return out

    def login(self, caps: int = PROTOCOL_41) -> None:
        self.connect()
        self.send(False, packet(0, b"\x0a5.5.5-10.11.6-MariaDB\x00" + b"\x00" * 40))
        self.send(True, packet(1, caps.to_bytes(4, "little") + b"\x00" * 28 + b"sbtest\x00"))
        self.send(False, packet(2, OK))

    def kinds(self, *kinds: str) -> list[WireEvent]:
        return [e for e in self.events if e.kind in kinds]


def mysql() -> tuple[Observer, Conn]:
    obs = Observer("mysql")
    c = Conn(obs)
    c.login()
    return obs, c


def fields(e: WireEvent) -> dict[str, Any]:
    return {"kind": e.kind, "ok": e.ok, "cls": e.cls, "detail": e.detail}


def test_stream_trims_duplicates_and_waits_for_gaps() -> None:
    s = Stream(2**32 - 3)  # the sequence space wraps inside this test
    assert s.take(2**32 - 2, b"abc") == b"abc"
    assert s.take(2**32 - 2, b"abc") == b""  # a retransmission
    assert s.take(0, b"cde") == b"de"  # overlaps what we have
    assert s.take(5, b"ij") == b""  # past a gap: held
    assert s.take(3, b"fg") == b"fgij"  # fills it
    assert s.next == 7


def test_mysql_login_is_no_request_and_makes_the_connection_usable() -> None:
    _, c = mysql()
    assert [e.kind for e in c.events] == ["syn", "established", "usable"]


@pytest.mark.parametrize(("sql", "cls"), [
    ("SELECT c FROM sbtest1 WHERE id=3", "r"), ("  /* x */ select 1", "r"),
    ("UPDATE sbtest1 SET k=k+1", "w"), ("insert into t values (1)", "w"),
    ("DELETE FROM t", "w"), ("REPLACE INTO t VALUES (1)", "w"),
    ("BEGIN", "o"), ("COMMIT", "o"), ("SET autocommit=1", "o"), ("", "o"),
])
def test_sql_classes_count_as_sysbench(sql: str, cls: str) -> None:
    assert sql_class(sql.encode()) == cls


def test_mysql_ok_result_set_and_err() -> None:
    _, c = mysql()
    c.send(True, query("UPDATE sbtest1 SET k=k+1 WHERE id=1"))
    c.send(False, packet(1, OK))
    c.send(True, query("SELECT c FROM sbtest1 WHERE id=1"))
    # a result set: column count, a column definition, EOF, a row, EOF
    c.send(False, packet(1, b"\x01") + packet(2, b"\x03def" + b"\x00" * 20)
           + packet(3, b"\xfe\x00\x00\x02\x00") + packet(4, b"\x05hello")
           + packet(5, b"\xfe\x00\x00\x02\x00"))
    c.send(True, query("INSERT INTO sbtest1 VALUES (1)"))
    c.send(False, packet(1, err(1062, "Duplicate entry '1' for key 'PRIMARY'")))
    answers = c.kinds("answer")
    assert [fields(e) for e in answers] == [
        {"kind": "answer", "ok": True, "cls": "w", "detail": ""},
        {"kind": "answer", "ok": True, "cls": "r", "detail": ""},
        {"kind": "answer", "ok": False, "cls": "w",
         "detail": "1062 Duplicate entry '1' for key 'PRIMARY'"},
    ]
    assert all(a.sent is not None and a.sent < a.t for a in answers)
    assert len(c.kinds("request")) == 3


def test_mysql_packets_split_across_segments_and_many_in_one() -> None:
    obs, c = mysql()
    c.send(True, query("SELECT " + "x" * 3000), parts=5)  # one packet, five segments
    assert len(c.kinds("request")) == 1
    c.send(False, packet(1, b"\x01") + packet(2, b"y" * 5000) + packet(3, b"\xfe\x00\x00"),
           parts=7)
    assert len(c.kinds("answer")) == 1
    # three statements (a multi-packet burst of a pipelining client) and their answers in one
    # segment each way
    c.send(True, query("BEGIN") + query("SELECT 1") + query("COMMIT"))
    assert len(obs.outstanding()) == 3
    c.send(False, packet(1, OK) + packet(1, b"\x01") + packet(2, b"\x01") + packet(1, OK))
    assert [e.cls for e in c.kinds("answer")] == ["r", "o", "r", "o"]
    assert obs.outstanding() == []


def test_retransmitted_request_is_one_request() -> None:
    _, c = mysql()
    start = c.seq[True]
    c.send(True, query("COMMIT"))
    for _ in range(3):  # the RTO's retransmissions through a blackhole
        c.seg(True, ACK, query("COMMIT"), seq=start)
    assert len(c.kinds("request")) == 1
    first_sent = c.kinds("request")[0].t
    c.seg(False, ACK, packet(1, OK))
    (answer,) = c.kinds("answer")
    assert answer.sent == first_sent and answer.ok
    c.seg(False, ACK, packet(1, OK), seq=c.seq[False] - 11)  # a duplicate answer: nothing
    assert len(c.kinds("answer")) == 1


def test_tls_request_is_refused_not_guessed() -> None:
    obs = Observer("mysql")
    c = Conn(obs)
    c.login(caps=PROTOCOL_41 | 0x800)
    (bad,) = c.kinds("unreadable")
    assert "TLS" in bad.detail
    assert not c.kinds("usable")
    c.send(True, b"\x16\x03\x01" + b"\x00" * 50)  # the TLS ClientHello: not parsed
    assert not c.kinds("request")


def test_login_failure_and_connect_refused() -> None:
    obs = Observer("mysql")
    c = Conn(obs)
    c.connect()
    c.send(False, packet(0, b"\x0a5.5.5\x00" + b"\x00" * 40))
    c.send(True, packet(1, PROTOCOL_41.to_bytes(4, "little") + b"\x00" * 40))
    c.send(False, packet(2, err(1045, "Access denied for user 'x'")))
    assert c.kinds("failure")[0].detail == "login failed: 1045 Access denied for user 'x'"
    r = Conn(obs, port=40001)
    r.seg(True, SYN)
    r.seg(False, RST | ACK)
    (refused,) = r.kinds("failure")
    assert refused.connect and "refused" in refused.detail


def test_lifecycle_quit_is_normal_a_reset_or_a_gave_up_client_is_an_error() -> None:
    obs, c = mysql()
    c.send(True, packet(0, b"\x01"))  # COM_QUIT
    c.seg(True, FIN | ACK)
    c.seg(False, FIN | ACK)
    assert [e.kind for e in c.events][-1] == "closed" and not c.kinds("failure")
    assert obs.conns == {}
    d = Conn(obs, port=40002)
    d.login()
    d.send(True, query("SELECT 1"))
    d.seg(True, FIN | ACK)  # e.g. its read timeout fired
    (gave_up,) = d.kinds("failure")
    assert "request unanswered" in gave_up.detail and gave_up.sent is not None
    e = Conn(obs, port=40003)
    e.login()
    e.seg(False, RST)
    assert e.kinds("failure")[0].detail == "the server reset the connection (RST)"
    assert obs.open_connections() == 0


def test_a_connection_the_kernel_dropped_is_found_in_its_socket_table() -> None:
    obs, c = mysql()
    c.send(True, query("COMMIT"))
    assert obs.vanished(200.0, {c.key}) == []
    assert obs.vanished(201.0, set()) == []  # once: maybe its RST is still in the capture
    (dropped,) = obs.vanished(201.02, set())
    assert dropped.kind == "failure" and dropped.t == 201.0 and dropped.sent is not None
    assert "no FIN or RST" in dropped.detail
    assert obs.outstanding() == []


def http_response(status: str, body: bytes = b"", chunked: bool = False) -> bytes:
    if chunked:
        return (f"HTTP/1.1 {status}\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
                + f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n")
    return f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body


def test_http_status_keepalive_and_pipelining() -> None:
    obs = Observer("http")
    c = Conn(obs)
    c.connect()
    assert c.kinds("usable")
    get = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    c.send(True, get)
    c.send(False, http_response("200 OK", b"<html>" * 100), parts=3)
    c.send(True, get + get + b"POST /x HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc")
    assert len(obs.outstanding()) == 3
    c.send(False, http_response("200 OK", b"\r\n\r\nHTTP/1.1 500 fake", chunked=True)
           + http_response("503 Service Unavailable", b"down")
           + http_response("302 Found"), parts=4)
    assert [(e.ok, e.cls, e.detail) for e in c.kinds("answer")] == [
        (True, "r", ""), (True, "r", ""), (False, "r", "HTTP/1.1 503 Service Unavailable"),
        (True, "w", "")]
    c.seg(False, FIN | ACK)  # nginx closing an idle keep-alive connection
    assert c.kinds("closed") and not c.kinds("failure")


def test_https_is_refused() -> None:
    obs = Observer("http")
    c = Conn(obs)
    c.connect()
    c.send(True, b"\x16\x03\x01\x02\x00" + b"\x00" * 100)
    assert "TLS" in c.kinds("unreadable")[0].detail


def ipv4_tcp(src: str, dst: str, sport: int, dport: int, payload: bytes) -> bytes:
    tcp = struct.pack("!HHIIHHHH", sport, dport, 7, 9, (5 << 12) | ACK, 65535, 0, 0)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40 + len(payload), 0, 0x4000, 64, 6, 0,
                     socket.inet_aton(src), socket.inet_aton(dst))
    return ip + tcp + payload + b"\x00" * 6  # Ethernet padding must not become payload


def test_parse_ipv4_directions() -> None:
    svc = socket.inet_aton("10.0.0.2")
    out = parse_ipv4(ipv4_tcp("10.0.0.1", "10.0.0.2", 4000, 3306, b"hi"), 1.0, svc, 3306)
    assert out == Segment(1.0, True, ("10.0.0.1", 4000), 7, 9, ACK, b"hi")
    back = parse_ipv4(ipv4_tcp("10.0.0.2", "10.0.0.1", 3306, 4000, b""), 1.0, svc, 3306)
    assert back is not None and not back.outbound and back.client == ("10.0.0.1", 4000)
    assert parse_ipv4(ipv4_tcp("10.0.0.2", "10.0.0.1", 80, 4000, b""), 1.0, svc, 3306) is None


def test_per_packet_cost() -> None:
    """The core and the header parser must keep up with a few thousand packets/s on one of
    the VM's 2 cores: printed, and bounded loosely (CI machines vary)."""
    _, c = mysql()
    svc = socket.inet_aton("10.0.0.2")
    raw_q = ipv4_tcp("10.0.0.1", "10.0.0.2", 40000, 3306, query("SELECT c FROM sbtest1"))
    n = 20000
    t0 = time.perf_counter()
    for _ in range(n // 2):
        parse_ipv4(raw_q, 1.0, svc, 3306)
        c.send(True, query("SELECT c FROM sbtest1 WHERE id=1"))
        c.send(False, packet(1, b"\x01") + packet(2, b"\x03def") + packet(3, b"\x05hello"))
    per_packet = (time.perf_counter() - t0) / n
    print(f"\nwire core + header parse: {per_packet * 1e6:.1f} us per packet")
    assert len(c.kinds("answer")) == n // 2
    assert per_packet < 100e-6
