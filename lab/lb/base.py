"""The load-balancer engine interface: LVS-NAT semantics, whichever engine provides them.

Semantics follow IPVS (ipvsadm) so the real `ipvs` engine and the nftables emulation are
interchangeable:
- a virtual service VIP:port schedules each *new* connection to one real server by weight
  (weight 0 = quiesced: keeps its connections, gets no new ones);
- removing a real server (`ipvsadm -d`) leaves its connections in the table: with
  expire_nodest_conn=0 their packets are dropped silently (the blackhole), with 1 the client
  gets a reset;
- `switchover(old, new)` is the article's `ipvsadm -d old; ipvsadm -a new -m` as one change;
- drain (the cloud SLB's connection_drain_timeout, kube-proxy's graceful termination):
  a removed server keeps serving its existing connections for drain_timeout_s, then the lb
  resets whatever is left;
- `connections()` lists the table like `ipvsadm -Lcn`.
"""

from __future__ import annotations

import ipaddress
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

from lab.net.topology import Host


@dataclass(frozen=True)
class RealServer:
    name: str
    address: ipaddress.IPv4Address
    port: int

    def __str__(self) -> str:
        return f"{self.name}({self.address}:{self.port})"


@dataclass(frozen=True)
class Connection:
    """One entry of the lb's connection table (like a line of `ipvsadm -Lcn`)."""

    protocol: str
    expire_s: float
    state: str
    source: str
    virtual: str
    destination: str
    real_server: str | None  # name, None if the destination is not a known real server


@dataclass(frozen=True)
class LbOptions:
    """What the engines honour (lab.experiment.options maps a trial's lb.* keys onto it).

    The IPVS-only sysctls (None: the kernel's default) are ignored by the engines that emulate
    LVS, whose behaviour is that of their defaults; the proxy_* keys are HAProxy's own
    (lab.lb.proxy) and ignored by the packet forwarders."""

    expire_nodest_conn: int = 0
    drain_timeout_s: float | None = None
    conn_reuse_mode: int | None = None
    expire_quiescent_template: int | None = None
    # HAProxy `timeout server` (None: not set, infinite) and its health check
    proxy_timeout_server_s: float | None = None
    proxy_health_check: bool = False
    proxy_check_inter_s: float = 2.0
    proxy_check_fall: int = 3


class LoadBalancer(ABC):
    """An LVS-NAT virtual service VIP:port in the lb namespace."""

    engine: ClassVar[str] = ""

    def __init__(
        self, host: Host, vip: ipaddress.IPv4Address, port: int, options: LbOptions
    ) -> None:
        self.host = host
        self.vip = vip
        self.port = port
        self.options = options

    @abstractmethod
    def setup(self) -> None:
        """Create the virtual service (no real servers yet)."""

    @abstractmethod
    def add_real_server(self, rs: RealServer, weight: int = 1) -> None: ...

    @abstractmethod
    def remove_real_server(self, rs: RealServer) -> None:
        """ipvsadm -d: no new connections; existing ones dropped / reset / drained (options)."""

    @abstractmethod
    def set_weight(self, rs: RealServer, weight: int) -> None: ...

    @abstractmethod
    def switchover(self, old: RealServer, new: RealServer) -> None:
        """Remove old and add new as one atomic change."""

    @abstractmethod
    def reset_connections(self, rs: RealServer) -> None:
        """Reset the remaining connections of rs (the end of a drain)."""

    @abstractmethod
    def connections(self) -> list[Connection]: ...

    @abstractmethod
    def close(self) -> None:
        """Remove what setup() made (the namespace's removal would too; be explicit)."""

    def describe(self) -> str:
        return f"{self.engine} {self.vip}:{self.port}"
