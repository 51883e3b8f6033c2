"""The `ipvs` engine: real LVS (IP Virtual Server) in NAT mode, in the lb namespace.

Needs a kernel with IP_VS (not this project's CI host: there it runs inside the VM, `make
vm-test`). The virtual service and its real servers go through pyroute2's IPVS generic-netlink
API, with two of its defaults overridden (checked in pyroute2 0.9.7's ipvs.py): IPVSDest
defaults to fwd_method 3 (direct routing), so every add/set passes
fwd_method=0 (IP_VS_CONN_F_MASQ, "-m"); and its "update" verb sends a DEL, so weights change
with "set". The IPVS sysctls are per namespace (/proc/sys/net/ipv4/vs/*, set in the lb
namespace). The connection table has no netlink dump: `ipvsadm -Lcn` prints it, the very
output the article shows, so connections() shells out to it.

Semantics are IPVS's own (lab.lb.base): `ipvsadm -d` unlinks the dest; its connections stay in
the table, their packets dropped (expire_nodest_conn=0) or expired with the next packet, which
the director then answers with a reset (=1). Drain: weight 0 (no new connections, the old ones
flow) for drain_timeout_s, then expire_nodest_conn=1 and delete: since Linux 5.9 that flushes
the dest's connections at once, and the client's next packet is reset.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
import socket
import threading

from pyroute2 import IPVS, IPVSDest, IPVSService

from lab.lb.base import Connection, LbOptions, LoadBalancer, RealServer
from lab.net.topology import Host

MASQ = 0  # IP_VS_CONN_F_MASQ: NAT, what `ipvsadm -a ... -m` asks for


def _sysctl(name: str) -> str:
    return f"net.ipv4.vs.{name}"


def masq_dest(rs: RealServer, weight: int) -> IPVSDest:
    """A real server in NAT mode (pyroute2's IPVSDest would default to direct routing)."""
    return IPVSDest(addr=str(rs.address), port=rs.port, weight=weight, fwd_method=MASQ)


class IpvsLoadBalancer(LoadBalancer):
    engine = "ipvs"

    def __init__(
        self, host: Host, vip: ipaddress.IPv4Address, port: int, options: LbOptions
    ) -> None:
        super().__init__(host, vip, port, options)
        self._service = IPVSService(addr=str(vip), port=port, protocol=socket.IPPROTO_TCP,
                                    sched_name="wrr")
        self._servers: dict[str, RealServer] = {}
        self._linked: set[str] = set()  # real servers currently in the service
        self._lock = threading.Lock()
        self._timers: list[threading.Timer] = []
        self._sock: IPVS | None = None

    def _ipvs(self) -> IPVS:
        """The engine's one netlink socket, opened in the lb namespace at setup: opening one
        forks a pyroute2 helper into the namespace (1.2 s under TCG), which would stretch a
        switchover's del/add into a window with no real server. Calls hold self._lock."""
        if self._sock is None:
            self._sock = IPVS(netns=self.host.ns)
        return self._sock

    # --- interface -------------------------------------------------------------------------
    def setup(self) -> None:
        o = self.options
        self.host.sysctl_set(_sysctl("expire_nodest_conn"), o.expire_nodest_conn)
        if o.conn_reuse_mode is not None:
            self.host.sysctl_set(_sysctl("conn_reuse_mode"), o.conn_reuse_mode)
        if o.expire_quiescent_template is not None:
            self.host.sysctl_set(_sysctl("expire_quiescent_template"),
                                 o.expire_quiescent_template)
        with self._lock:
            self._ipvs().service("add", service=self._service)

    def add_real_server(self, rs: RealServer, weight: int = 1) -> None:
        with self._lock:
            self._add(rs, weight)

    def _add(self, rs: RealServer, weight: int) -> None:
        self._servers[rs.name] = rs
        self._ipvs().dest("add", service=self._service, dest=masq_dest(rs, weight))
        self._linked.add(rs.name)

    def remove_real_server(self, rs: RealServer) -> None:
        with self._lock:
            self._remove(rs)

    def _remove(self, rs: RealServer) -> None:
        if self.options.drain_timeout_s is None:
            self._delete(rs)
            return
        # quiesce: no new connections, the old ones flow on
        self._ipvs().dest("set", service=self._service, dest=masq_dest(rs, 0))
        timer = threading.Timer(self.options.drain_timeout_s, self.reset_connections, [rs])
        timer.daemon = True
        self._timers.append(timer)
        timer.start()

    def _delete(self, rs: RealServer) -> None:
        if rs.name not in self._linked:
            return
        self._ipvs().dest("del", service=self._service, dest=masq_dest(rs, 0))
        self._linked.discard(rs.name)

    def set_weight(self, rs: RealServer, weight: int) -> None:
        with self._lock:
            self._ipvs().dest("set", service=self._service, dest=masq_dest(rs, weight))

    def switchover(self, old: RealServer, new: RealServer) -> None:
        """ipvsadm -d old; ipvsadm -a new -m (two netlink requests, microseconds apart)."""
        with self._lock:
            self._remove(old)
            if new.name not in self._linked:
                self._add(new, 1)

    def reset_connections(self, rs: RealServer) -> None:
        """Expire rs's connections: with expire_nodest_conn=1 a deleted dest's connections are
        flushed (Linux >= 5.9), and the director resets the client's next packet."""
        with self._lock:
            self.host.sysctl_set(_sysctl("expire_nodest_conn"), 1)
            self._delete(rs)

    def connections(self) -> list[Connection]:
        out = self.host.run(["ipvsadm", "-L", "-c", "-n"], check=False).stdout
        by_addr = {f"{rs.address}:{rs.port}": rs.name for rs in self._servers.values()}
        conns = []
        for line in out.splitlines():
            conn = parse_ipvsadm_conn_line(line, by_addr)
            if conn and conn.virtual == f"{self.vip}:{self.port}":
                conns.append(conn)
        return conns

    def close(self) -> None:
        for timer in self._timers:
            timer.cancel()
        with self._lock:
            # already gone with its namespace, or never created
            with contextlib.suppress(Exception):
                self._ipvs().service("del", service=self._service)
            if self._sock is not None:
                self._sock.close()
                self._sock = None


_CONN_RE = re.compile(
    r"^(?P<proto>TCP|UDP|SCTP)\s+(?P<min>\d+):(?P<sec>\d{2})\s+(?P<state>\S+)\s+"
    r"(?P<src>\S+)\s+(?P<virt>\S+)\s+(?P<dst>\S+)\s*$"
)


def parse_ipvsadm_conn_line(line: str, real_servers: dict[str, str]) -> Connection | None:
    """One `ipvsadm -Lcn` line, e.g.
    `TCP 14:58  ESTABLISHED 198.18.0.1:41632 198.18.0.100:3001 198.18.1.2:3306`."""
    m = _CONN_RE.match(line.strip())
    if not m:
        return None
    return Connection(
        protocol=m["proto"],
        expire_s=float(int(m["min"]) * 60 + int(m["sec"])),
        state=m["state"],
        source=m["src"],
        virtual=m["virt"],
        destination=m["dst"],
        real_server=real_servers.get(m["dst"]),
    )
