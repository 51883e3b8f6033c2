"""Load-balancer engines behind one interface (lab.lb.base.LoadBalancer).

`auto` picks real IPVS when the kernel has it, else the nftables emulation, and says which.
`proxy` (HAProxy, a layer-4/7 proxy rather than a packet forwarder) is only used on request.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

from lab.errors import LabError
from lab.lb.base import Connection, LbOptions, LoadBalancer, RealServer
from lab.lb.ipvs import IpvsLoadBalancer
from lab.lb.nft import NftLoadBalancer
from lab.lb.proxy import ProxyLoadBalancer, haproxy_binary
from lab.net.topology import Host

__all__ = ["Connection", "LbOptions", "LoadBalancer", "RealServer", "choose_engine", "make"]

ENGINES: dict[str, type[LoadBalancer]] = {
    "ipvs": IpvsLoadBalancer, "nft": NftLoadBalancer, "proxy": ProxyLoadBalancer,
}


def kernel_has_ipvs() -> bool:
    """IPVS is usable when its proc interface exists (built in or module loaded)."""
    return Path("/proc/net/ip_vs").exists()


def choose_engine(requested: str) -> tuple[str, str]:
    """(engine, why) for a requested engine name."""
    if requested == "auto":
        if kernel_has_ipvs():
            return "ipvs", "auto: the kernel has IP_VS"
        return "nft", "auto: the kernel has no IP_VS (no /proc/net/ip_vs), using nftables NAT"
    if requested == "ipvs" and not kernel_has_ipvs():
        raise LabError(
            "lb engine 'ipvs' needs a kernel with IP_VS, this one has none",
            "use lb.engine=nft (or auto), or run the lab in the VM ('make vm-test')",
        )
    if requested == "proxy":
        haproxy_binary()  # LabError with the fix if it is missing
    if requested not in ENGINES:
        raise LabError(
            f"lb engine {requested!r} is not available here",
            f"use one of: auto, {', '.join(sorted(ENGINES))}",
        )
    return requested, f"requested: {requested}"


def make(
    engine: str, host: Host, vip: ipaddress.IPv4Address, port: int, options: LbOptions
) -> LoadBalancer:
    """An engine instance; the proxy engine also reads its own keys (proxy_*) off `options`."""
    return ENGINES[engine](host, vip, port, options)
