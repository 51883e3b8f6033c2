"""ConntrackTable: ctnetlink messages decoded as the kernel nests them; live, the entries of the
lab namespace (a DNAT with a ct mark, like the nft LB's), the same as `conntrack -L` prints
for them, over several datagrams, from any thread, and none of another namespace's or the
host's.

`conntrack -L`'s text is read by the reference parser below (the lab no longer runs it)."""

from __future__ import annotations

import contextlib
import re
import shutil
import socket
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from lab.net import conntrack
from lab.net.conntrack import (
    CTA_MARK,
    CTA_PROTOINFO,
    CTA_TIMEOUT,
    CTA_TUPLE_ORIG,
    CTA_TUPLE_REPLY,
    ConntrackFollower,
    ConntrackTable,
    CtEntry,
    Tuple,
    parse_ct_msg,
)
from lab.net.runtime import Run
from lab.net.topology import Host, Network, Topology, in_netns

NLA_F_NESTED = 0x8000


# --- the reference: conntrack-tools' text --------------------------------------------------
@dataclass(frozen=True)
class CtLine:
    """What `conntrack -L` prints of one TCP entry."""

    timeout_s: int
    state: str
    orig: tuple[str, str, int, int]  # src, dst, sport, dport
    reply: tuple[str, str, int, int]
    mark: int

    @classmethod
    def of(cls, e: CtEntry) -> CtLine:
        o, r = e.orig, e.reply
        return cls(e.timeout_s, e.state, (o.src, o.dst, o.sport, o.dport),
                   (r.src, r.dst, r.sport, r.dport), e.mark)


_KV = re.compile(r"(src|dst|sport|dport|mark)=(\S+)")


def parse_conntrack_line(line: str) -> CtLine | None:
    """One line of `conntrack -L -p tcp` (plain or `-o extended`); None for another line.

    e.g. `tcp 6 299 ESTABLISHED src=C dst=VIP sport=P dport=V src=RS dst=C sport=V dport=P
    [ASSURED] mark=1 use=1` (NB: `conntrack -L -n` is not "numeric": -n is --src-nat)."""
    tokens = line.split()
    if tokens and tokens[0] in ("ipv4", "ipv6"):
        tokens = tokens[2:]
    if len(tokens) < 4 or tokens[0] != "tcp" or not tokens[2].isdigit():
        return None
    kv: dict[str, list[str]] = {}
    for key, value in _KV.findall(line):
        kv.setdefault(key, []).append(value)
    if any(len(kv.get(k, [])) < 2 for k in ("src", "dst", "sport", "dport")):
        return None

    def tup(i: int) -> tuple[str, str, int, int]:
        return kv["src"][i], kv["dst"][i], int(kv["sport"][i]), int(kv["dport"][i])

    return CtLine(int(tokens[2]), tokens[3], tup(0), tup(1), int(kv.get("mark", ["0"])[0], 0))


def conntrack_cli(host: Host) -> list[CtLine]:
    out = host.run(["conntrack", "-L", "-p", "tcp"], check=False, timeout=10).stdout
    return [c for c in map(parse_conntrack_line, out.splitlines()) if c is not None]


# `conntrack -L -p tcp` in the router/LB netns (DNAT VIP -> server, ct mark 1)
CT_PLAIN = (
    "tcp      6 431999 ESTABLISHED src=198.18.0.1 dst=198.18.0.100 sport=54796 dport=7000 "
    "src=198.18.1.2 dst=198.18.0.1 sport=7000 dport=54796 [ASSURED] mark=1 use=1\n"
    "tcp      6 58 CLOSE_WAIT src=198.18.0.1 dst=198.18.0.100 sport=54784 dport=7000 "
    "src=198.18.1.2 dst=198.18.0.1 sport=7000 dport=54784 [ASSURED] mark=1 use=1\n"
    "conntrack v1.4.7 (conntrack-tools): 2 flow entries have been shown.\n"
)
CT_EXTENDED = (
    "ipv4     2 tcp      6 431999 ESTABLISHED src=198.18.0.1 dst=198.18.0.100 sport=39344 "
    "dport=7000 src=198.18.1.2 dst=198.18.0.1 sport=7000 dport=39344 [ASSURED] mark=1 use=1 "
    "id=228867239"
)


def test_reference_parser_on_captured_lines() -> None:
    est, cw = (c for c in map(parse_conntrack_line, CT_PLAIN.splitlines()) if c)
    assert est == CtLine(431999, "ESTABLISHED", ("198.18.0.1", "198.18.0.100", 54796, 7000),
                         ("198.18.1.2", "198.18.0.1", 7000, 54796), 1)
    assert (cw.state, cw.timeout_s) == ("CLOSE_WAIT", 58)
    ext = parse_conntrack_line(CT_EXTENDED)
    assert ext is not None and ext.orig[2] == 39344 and ext.reply[0] == "198.18.1.2"


# --- ctnetlink messages as the kernel nests them -------------------------------------------
def nla(kind: int, payload: bytes, nested: bool = False) -> bytes:
    raw = struct.pack("=HH", 4 + len(payload), kind | (NLA_F_NESTED if nested else 0))
    return raw + payload + bytes(-len(payload) % 4)


def ct_tuple(family: int, src: str, dst: str, sport: int, dport: int) -> bytes:
    v4 = family == socket.AF_INET
    ip = nla(1 if v4 else 3, socket.inet_pton(family, src)) + nla(
        2 if v4 else 4, socket.inet_pton(family, dst))
    proto = nla(1, bytes([6])) + nla(2, struct.pack("!H", sport)) + nla(
        3, struct.pack("!H", dport))
    return nla(1, ip, nested=True) + nla(2, proto, nested=True)


def ct_msg(family: int, orig: tuple[str, str, int, int], reply: tuple[str, str, int, int],
           state: int, timeout: int, mark: int) -> bytes:
    protoinfo = nla(1, nla(1, bytes([state])) + nla(2, bytes([7])), nested=True)  # TCP
    return (struct.pack("=BBH", family, 0, 0)  # nfgenmsg
            + nla(CTA_TUPLE_ORIG, ct_tuple(family, *orig), nested=True)
            + nla(CTA_TUPLE_REPLY, ct_tuple(family, *reply), nested=True)
            + nla(3, struct.pack("!I", 0x18e))  # CTA_STATUS: not read
            + nla(CTA_TIMEOUT, struct.pack("!I", timeout))
            + nla(CTA_MARK, struct.pack("!I", mark))
            + nla(CTA_PROTOINFO, protoinfo, nested=True))


def test_ct_msg_nested_attributes_in_network_order() -> None:
    data = ct_msg(socket.AF_INET, ("198.18.0.1", "198.18.0.100", 54796, 7000),
                  ("198.18.1.2", "198.18.0.1", 7000, 54796), 3, 431999, 0x10002)
    e = parse_ct_msg(data, 0, len(data))
    assert e == CtEntry(Tuple("198.18.0.1", "198.18.0.100", 6, 54796, 7000),
                        Tuple("198.18.1.2", "198.18.0.1", 6, 7000, 54796),
                        "ESTABLISHED", 431999, 0x10002)
    v6 = ct_msg(socket.AF_INET6, ("fd00::1", "fd00::64", 1, 2), ("fd00::2", "fd00::1", 2, 1),
                9, 5, 0)
    e6 = parse_ct_msg(v6, 0, len(v6))
    assert e6 is not None and e6.orig.dst == "fd00::64" and e6.state == "SYN_SENT2"
    assert parse_ct_msg(data, 0, 4) is None  # no tuples: skipped


# --- live ----------------------------------------------------------------------------------
class Dnat:
    """a connects to VIP:PORT, DNATed by a's own output chain to b (ct mark 0x2, as the nft
    LB marks a backend); b tracks what it receives (its entries: orig dst b, mark 0)."""

    def __init__(self, net: Network, run: Run, stack: contextlib.ExitStack) -> None:
        self.a, self.b, self.stack = net["a"], net["b"], stack
        self.bip = str(self.b.address_towards("a"))
        self.vip = str(run.link_subnet(0)[100])
        server = self._socket(self.b)
        server.bind((self.bip, 0))
        server.listen(512)
        self.server, self.port = server, server.getsockname()[1]
        self.a.nft(f"""table ip bhl_test_ct {{
  chain out {{
    type nat hook output priority -100; policy accept;
    ip daddr {self.vip} tcp dport 7000 ct mark set 0x2 dnat to {self.bip}:{self.port}
  }}
}}
""")
        self.b.nft("table ip bhl_test_ct {\n  chain in {\n"
                   "    type filter hook input priority 0; policy accept;\n"
                   "    ct state new counter\n  }\n}\n")

    def _socket(self, host: Host) -> socket.socket:
        s = in_netns(host.ns, lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        return self.stack.enter_context(s)

    def connect(self, n: int) -> set[int]:
        """n connections a -> VIP:7000; their client ports."""
        ports = set()
        for _ in range(n):
            c = self._socket(self.a)
            c.connect((self.vip, 7000))
            self.stack.enter_context(self.server.accept()[0])
            ports.add(c.getsockname()[1])
        return ports


@pytest.fixture
def net(lab_run: Run) -> Iterator[Network]:
    topo = Topology()
    topo.add_host("a")
    topo.add_host("b")
    topo.add_link("a", "b")
    with Network(topo, lab_run) as n:
        yield n


@pytest.mark.root
def test_entries_of_the_namespace_like_conntrack_L(net: Network, lab_run: Run) -> None:
    """200 entries: three datagrams of dump here."""
    if shutil.which("conntrack") is None:
        pytest.skip("conntrack (conntrack-tools) not installed")
    with contextlib.ExitStack() as stack:
        d = Dnat(net, lab_run, stack)
        ports = d.connect(200)
        with ConntrackTable(d.a.ns) as table:
            entries = [e for e in table.dump() if e.orig.sport in ports]
            cli = [c for c in conntrack_cli(d.a) if c.orig[2] in ports]
        assert len(entries) == len(cli) == 200
        e = entries[0]
        assert (e.orig.dst, e.orig.dport, e.reply.src, e.reply.sport, e.mark, e.state) == (
            d.vip, 7000, d.bip, d.port, 2, "ESTABLISHED")

        def key(c: CtLine) -> tuple[object, ...]:
            return c.orig, c.reply, c.state, c.mark

        mine = sorted(map(CtLine.of, entries), key=key)
        theirs = sorted(cli, key=key)
        assert [key(c) for c in mine] == [key(c) for c in theirs]
        assert all(abs(x.timeout_s - y.timeout_s) <= 1 for x, y in zip(mine, theirs,
                                                                        strict=True))


@pytest.mark.root
def test_only_this_namespaces_entries_from_any_thread(net: Network, lab_run: Run) -> None:
    with contextlib.ExitStack() as stack:
        d = Dnat(net, lab_run, stack)
        ports = d.connect(3)
        a_table = stack.enter_context(ConntrackTable(d.a.ns))
        b_table = stack.enter_context(ConntrackTable(d.b.ns))
        host_table = stack.enter_context(ConntrackTable(None))
        b_follower = stack.enter_context(ConntrackFollower(d.b.ns))  # b's events only
        more = d.connect(2)
        seen: dict[str, list[CtEntry]] = {}

        def look() -> None:  # a thread that never entered either namespace
            seen["a"], seen["b"] = a_table.dump(), b_table.dump()
            seen["host"], seen["b follower"] = host_table.dump(), b_follower.entries()

        t = threading.Thread(target=look)
        t.start()
        t.join()
        ports |= more
        in_a = [e for e in seen["a"] if e.orig.sport in ports]
        in_b = [e for e in seen["b"] if e.orig.sport in ports]
        assert {e.orig.dst for e in in_a} == {d.vip} and {e.mark for e in in_a} == {2}
        assert len(in_a) == len(in_b) == 5
        assert _view(seen["b follower"]) == _view(seen["b"])
        # b saw the connections after the DNAT: to its own address, unmarked
        assert {(e.orig.dst, e.orig.dport, e.mark) for e in in_b} == {(d.bip, d.port, 0)}
        assert not [e for e in seen["host"] if e.orig.dst in (d.vip, d.bip)]
        assert a_table.netns_cookie() != host_table.netns_cookie()


def _view(entries: list[CtEntry]) -> set[tuple[object, ...]]:
    return {(e.orig, e.reply, e.state, e.mark) for e in entries}


@pytest.mark.root
def test_the_follower_sees_new_and_gone_entries_without_walking(net: Network,
                                                                 lab_run: Run) -> None:
    with contextlib.ExitStack() as stack:
        d = Dnat(net, lab_run, stack)
        before = d.connect(3)
        follower = stack.enter_context(ConntrackFollower(d.a.ns))
        table = stack.enter_context(ConntrackTable(d.a.ns))
        assert {e.orig.sport for e in follower.entries()} == before
        after = d.connect(70)  # more than one datagram of lookups
        seen = follower.entries()
        assert {e.orig.sport for e in seen} == before | after
        assert _view(seen) == _view(table.dump())
        if shutil.which("conntrack"):
            gone = min(after)
            d.a.run(["conntrack", "-D", "-p", "tcp", "--orig-port-src", str(gone)])
            assert {e.orig.sport for e in follower.entries()} == (before | after) - {gone}
        assert follower.walks == 1  # the first one only


@pytest.mark.root
def test_an_overrun_of_the_events_walks_again(net: Network, lab_run: Run) -> None:
    with contextlib.ExitStack() as stack:
        d = Dnat(net, lab_run, stack)
        follower = stack.enter_context(ConntrackFollower(d.a.ns, events_rcvbuf=1024))
        ports = d.connect(60)  # far more events than the buffer holds: some are lost
        assert {e.orig.sport for e in follower.entries()} == ports
        assert follower.walks == 2


@pytest.mark.root
def test_without_events_every_look_walks(net: Network, lab_run: Run,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(conntrack, "events_enabled", lambda _ns: False)
    with contextlib.ExitStack() as stack:
        d = Dnat(net, lab_run, stack)
        follower = stack.enter_context(ConntrackFollower(d.a.ns))
        ports = d.connect(2)
        assert {e.orig.sport for e in follower.entries()} == ports
        assert follower.walks == 2
