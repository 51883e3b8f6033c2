"""Faults: the ways the active backend disappears, as actions on the lab's real parts.

`inject()` performs the fault and returns follow-up actions (delay, description, callable) for
the trial to run on its clock: every kind but `switchover` is followed by the LB failing new
connections over to the standby backend `failover_after_s` later, as a health checker
(keepalived, kube-proxy) would after noticing the failure.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
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


URGENT_SWITCH_INTERVAL_S = 0.0002


@contextlib.contextmanager
def urgent() -> Iterator[None]:
    """Run the block at real-time priority (SCHED_FIFO, this thread only), then as before.

    A fault is the lab's own action, not the system under test: its instant should not wait
    for a timeslice on two cores that the trials' drivers and servers keep busy. The block is
    an in-process netlink change (well under a millisecond) or a signal, and starts no
    process, so nothing inherits the priority. Without CAP_SYS_NICE it runs as it is.

    For the same block the GIL's switch interval drops from 5 ms to 0.2 ms: the trials share
    this process, and a thread coming back from the netlink call would otherwise wait up to
    5 ms for another trial's thread to let go of the GIL."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(URGENT_SWITCH_INTERVAL_S)
    try:
        before = os.sched_getscheduler(0), os.sched_getparam(0)
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
    except OSError:
        before = None
    try:
        yield
    finally:
        if before is not None:
            os.sched_setscheduler(0, before[0], before[1])
        sys.setswitchinterval(interval)


def prepare(settings: FaultSettings, target: FaultTarget) -> None:
    """Open ahead what the fault will act through, so the fault instant holds only the change
    itself: the nft context of the namespace a crash or partition adds its drop table to (the
    engines open theirs at setup)."""
    if settings.kind == "crash":
        target.active.host.nft_context()
    elif settings.kind == "partition":
        target.lb.host.nft_context()


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
