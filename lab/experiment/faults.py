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


def crash(target: FaultTarget) -> str:
    """The backend vanishes without a word (Host.cut_link: no RST ever leaves it)."""
    return target.active.host.cut_link(target.lb.host.name)


def kill(target: FaultTarget) -> str:
    """kill -9 of the server (Backend.kill: the process, or a container's server process)."""
    return target.active.kill()


def hang(target: FaultTarget) -> str:
    """The server freezes (Backend.hang: SIGSTOP, or `docker pause` of a container)."""
    return target.active.hang()


def partition(target: FaultTarget, mode: str) -> str:
    """The lb's path to the backend fails: drop (silent) or reject (tcp reset)."""
    target.lb.host.cut_forwarding(target.active_rs.address, mode)
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
