"""Faults: the ways the active backend disappears, as actions on the lab's real parts.

`inject()` performs the fault and returns follow-up actions (delay, description, callable) for
the trial to run on its clock: every kind but `switchover` is followed by the LB failing new
connections over to the standby backend `failover_after_s` later, as a health checker
(keepalived, kube-proxy) would after noticing the failure.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from lab.backends.base import Backend
from lab.config.settings import FaultSettings
from lab.lb.base import LoadBalancer, RealServer


@dataclass(frozen=True)
class FollowUp:
    delay_s: float
    event: str
    detail: str
    action: Callable[[], None]


@dataclass
class FaultTarget:
    """What a fault acts on: the LB, the active backend and the standby."""

    lb: LoadBalancer
    active: Backend
    active_rs: RealServer
    standby_rs: RealServer


def _nft_in(backend: Backend, ruleset: str) -> None:
    backend.host.run(["nft", "-f", "-"], input=ruleset)


def crash(target: FaultTarget) -> str:
    """The backend vanishes without a word: every packet in or out of its link is dropped
    at the device (netdev ingress + egress), so its kernel never sends a RST."""
    ifname = f"to-{target.lb.host.name}"
    _nft_in(
        target.active,
        f"""table netdev bhl_crash {{
    chain ingress {{ type filter hook ingress device "{ifname}" priority -500; policy drop; }}
    chain egress {{ type filter hook egress device "{ifname}" priority -500; policy drop; }}
}}
""",
    )
    return f"all packets on {target.active.name}:{ifname} dropped (no RST)"


def kill(target: FaultTarget) -> str:
    """kill -9 of the server (Backend.kill: the process, or a container's server process)."""
    return target.active.kill()


def hang(target: FaultTarget) -> str:
    """The server freezes (Backend.hang: SIGSTOP, or `docker pause` of a container)."""
    return target.active.hang()


def partition(target: FaultTarget, mode: str) -> str:
    """The lb's path to the backend fails: drop (silent) or reject (tcp reset)."""
    addr = target.active_rs.address
    verdict = "drop" if mode == "drop" else "meta l4proto tcp reject with tcp reset"
    target.lb.host.run(
        ["nft", "-f", "-"],
        input=f"""table ip bhl_partition {{
    chain forward {{
        type filter hook forward priority -10; policy accept;
        ip daddr {addr} {verdict}
        ip saddr {addr} drop
    }}
}}
""",
    )
    return f"lb<->{target.active.name} path: {mode}"


def inject(settings: FaultSettings, target: FaultTarget) -> tuple[str, list[FollowUp]]:
    """Inject the fault now; return its description and follow-up actions."""
    lb, old, new = target.lb, target.active_rs, target.standby_rs
    if settings.kind == "switchover":
        lb.switchover(old, new)
        return f"switchover {old} -> {new} ({lb.describe()})", []
    if settings.kind == "crash":
        detail = crash(target)
    elif settings.kind == "kill":
        detail = kill(target)
    elif settings.kind == "hang":
        detail = hang(target)
    else:
        detail = partition(target, settings.partition_mode)
    failover = FollowUp(
        settings.failover_after_s,
        "failover",
        f"lb moves new connections {old} -> {new}",
        lambda: lb.switchover(old, new),
    )
    return detail, [failover]
