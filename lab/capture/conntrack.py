"""Snapshots of the LB namespace's connection table, shaped like `ipvsadm -Lcn`.

The nftables LB keeps its connections in conntrack: the original tuple is client -> VIP
(ipvsadm's "source" and "virtual"), the reply tuple's source is the real server
("destination"), the timeout is ipvsadm's "expire", and `ct mark` says which backend the
connection was scheduled to. Two sources, both inside the LB namespace:
- "netlink" (the default, "auto"): the conntrack table through ctnetlink, followed
  (lab.net.conntrack.ConntrackFollower: one walk of the kernel's table per trial, then its
  events and lookups), sockets opened in the LB namespace per trial, no process per tick;
  tests/net/test_conntrack.py checks it against `conntrack -L` on the same entries;
- "ipvsadm": real IPVS keeps its own table, not conntrack's: `ipvsadm -Lcn` (no netlink dump
  of the IPVS connection table exists), the evidence the article shows.
"""

from __future__ import annotations

import csv
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from lab.net.conntrack import ConntrackFollower, CtEntry
from lab.net.topology import Host

CSV_COLUMNS = ("t_s", "pro", "expire", "expire_s", "state", "source", "virtual", "destination",
               "mark")
SOURCES = ("auto", "netlink", "ipvsadm")


@dataclass(frozen=True)
class LbConnection:
    """One connection of the LB, with ipvsadm -Lcn's columns (plus the ct mark)."""

    pro: str
    expire_s: int
    state: str
    source: str  # client ip:port
    virtual: str  # VIP:port (original destination)
    destination: str  # real server ip:port (reply source)
    mark: int = 0

    @property
    def expire(self) -> str:
        """mm:ss like ipvsadm -Lcn."""
        return f"{self.expire_s // 60:02d}:{self.expire_s % 60:02d}"

    def row(self, t_s: float) -> dict[str, Any]:
        return {
            "t_s": f"{t_s:.3f}", "pro": self.pro, "expire": self.expire,
            "expire_s": self.expire_s, "state": self.state, "source": self.source,
            "virtual": self.virtual, "destination": self.destination, "mark": self.mark,
        }


def lb_connection(e: CtEntry) -> LbConnection:
    """A TCP conntrack entry as an ipvsadm -Lcn line."""
    o, r = e.orig, e.reply
    return LbConnection(
        pro="TCP", expire_s=e.timeout_s, state=e.state or "-",
        source=f"{o.src}:{o.sport}", virtual=f"{o.dst}:{o.dport}",
        destination=f"{r.src}:{r.sport}", mark=e.mark,
    )


def ipvsadm_cli(host: Host) -> list[LbConnection]:
    """IPVS's connection table, `ipvsadm -Lcn` in the LB namespace."""
    from lab.lb.ipvs import parse_ipvsadm_conn_line
    out = host.run(["ipvsadm", "-L", "-c", "-n"], check=False).stdout
    conns = [parse_ipvsadm_conn_line(line, {}) for line in out.splitlines()]
    return [LbConnection(c.protocol, int(c.expire_s), c.state, c.source, c.virtual,
                         c.destination) for c in conns if c is not None]


class ConntrackSnapshots:
    """A SnapshotLoop callable: the LB's TCP connections (optionally only to `virtual`, an
    "ip" or "ip:port"), appended to lb_connections.csv at each tick.

    `source_used` / `why` say which source runs ("netlink" for "auto"). The ctnetlink
    sockets are opened here, inside the LB namespace, and closed by close() (before the
    namespace goes: they hold it).
    """

    def __init__(
        self, host: Host, path: Path | str, *, virtual: str | None = None,
        source: str = "auto",
    ) -> None:
        if source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}")
        self.host = host
        self.path = Path(path)
        self.virtual = virtual
        self.source = source
        self.source_used = "ipvsadm" if source == "ipvsadm" else "netlink"
        self.why = "requested" if source != "auto" else "default"
        self._ct = ConntrackFollower(host.ns) if self.source_used == "netlink" else None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[str] = self.path.open("w", newline="")
        self._csv = csv.DictWriter(self._file, fieldnames=CSV_COLUMNS)
        self._csv.writeheader()
        self._lock = threading.Lock()

    def _matches(self, c: LbConnection) -> bool:
        if self.virtual is None:
            return True
        return c.virtual == self.virtual or c.virtual.rsplit(":", 1)[0] == self.virtual

    def read(self) -> list[LbConnection]:
        if self._ct is None:
            conns = ipvsadm_cli(self.host)
        else:
            conns = [lb_connection(e) for e in self._ct.entries()]
        return [c for c in conns if self._matches(c)]

    def __call__(self, t_s: float) -> list[LbConnection]:
        conns = self.read()
        with self._lock:
            self._csv.writerows(c.row(t_s) for c in conns)
            self._file.flush()
        return conns

    def close(self) -> None:
        if self._ct is not None:
            self._ct.close()
        with self._lock:
            self._file.close()
