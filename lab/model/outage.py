"""`predict(trial)`: when does the client get its service back after the fault, and why.

It walks the client's connection through the fault - what happens to each packet it sends
(delivered, ACKed by a hung server, dropped, reset: a `Path`) as a function of time since the
fault, which kernel timer or application timeout notices first, and how long the reconnect
takes (new connections may still land on the dead backend before the LB fails over) - and
returns a `Prediction`. lb.engine "proxy" has its own model (lab.model.proxy); the timing
conventions are in lab.model.prediction.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from lab.config.settings import ClientSettings, LbSettings, TrialSettings
from lab.model.keepalive import Keepalive, keepalive_timer
from lab.model.kernel import (
    DEFAULT_RTO_S,
    HZ,
    TCP_RETRIES2,
    TCP_SYN_RETRIES,
    retransmit_plan,
    syn_abort_time,
    tcp_model_timeout,
)
from lab.model.path import Path, PathState

# shared with proxy.py, the other model that builds Predictions (the lists repeat by design)
from lab.model.prediction import (
    DEFAULT_RECONNECT_S,
    Mechanism,
    Prediction,
    failover_at,
    first_query_at,
    fmt_s,
    never,
    seen_at,
)
from lab.model.proxy import predict_proxy

# What a failed connect attempt costs the driver on top of the timeout that ends it. PyMySQL
# 1.2 builds a TLS context (ssl "PREFERRED" by default: load_default_certs, ~30 ms of CPU)
# before every connect: in a netns whose peer drops the SYNs, pymysql.connect(connect_timeout=1)
# fails after 1.034 s (median of 5) where a bare socket with a 1 s timeout fails after 1.001 s;
# cProfile puts 30 ms in SSLContext.set_default_verify_paths. http.client builds nothing.
# The lab's oltp and http drivers then pause RECONNECT_PAUSE_S (5 ms, lab/load/oltp.py) before
# the next attempt; sysbench's mysql_drv_reconnect every 1 ms.
RECONNECT_PAUSE_S = 0.005
# A zoo program pauses as the lab's drivers do (lab.load.zoo.RECONNECT_PAUSE_MS); a command's
# reconnect is its own, unknown to the lab: predicted as immediate.
CONNECT_ATTEMPT_COST_S = {"oltp": 0.033 + RECONNECT_PAUSE_S, "http": RECONNECT_PAUSE_S,
                          "sysbench": 0.001, "zoo": RECONNECT_PAUSE_S, "command": 0.0}

ConnFate = Literal["ok", "refused", "syn_drop", "hung"]
Step = tuple[float, PathState, Mechanism]
Detected = tuple[float, Mechanism | Literal["no_outage"]]


def predict(
    trial: TrialSettings,
    *,
    rto_s: float = DEFAULT_RTO_S,
    reconnect_s: float = DEFAULT_RECONNECT_S,
    idle_elapsed_s: float = 0.0,
    engine: Literal["nft", "ipvs"] | None = None,
    hz: int = HZ,
) -> Prediction:
    """Predict the outage of `trial` (see lab.model.prediction for the timing conventions).

    rto_s: the connection's icsk_rto (tcpi_rto, `ss -ti` rto:); reconnect_s: connect +
    handshake + first transaction; idle_elapsed_s: idle load only, how far into its sleep the
    driver was when the fault hit; engine: the LVS engine actually used ("auto" in the settings
    is taken as "nft" unless given) - it matters only for partition+drop, where the nft
    emulation's partition rule drops before the LB's own reset rule can answer. lb.engine
    "proxy" (HAProxy) has its own, unverified model (`predict_proxy`).
    """
    if trial.lb.engine == "proxy":
        return predict_proxy(trial, rto_s=rto_s, reconnect_s=reconnect_s,
                             idle_elapsed_s=idle_elapsed_s, hz=hz)
    eng = engine or ("ipvs" if trial.lb.engine == "ipvs" else "nft")
    fault = _fault_effects(trial, eng)
    client = _ClientTimers.of(trial.client, trial.load.driver)
    notes: list[str] = [fault.what]
    busy = trial.load.shape == "busy"
    t_q = first_query_at(trial.load, idle_elapsed_s)
    detect, mech = _detect(fault.path, client, busy, t_q, idle_elapsed_s, rto_s, hz, notes)
    if mech == "no_outage":
        return _drain_without_outage(trial, fault.what, t_q, reconnect_s)
    if math.isinf(detect):
        return never(notes)
    return _reconnect(trial, fault, detect, mech, reconnect_s, hz, notes)


# --- the fault: the old connection's path, and where a new connection lands, over time -------


@dataclass(frozen=True)
class _FaultEffects:
    """What the fault does: to the old connection (`path`) and to new ones (`before_failover`
    until `failover_s`, "ok" after it); `what` names it for the detail."""

    path: Path
    failover_s: float
    before_failover: ConnFate
    what: str

    def new_conn(self, s: float) -> ConnFate:
        """What a connection attempt made s after the fault runs into."""
        return "ok" if s >= self.failover_s else self.before_failover


def _lb_removes(lb: LbSettings, eng: str, at: float, before: PathState) -> list[Step]:
    """The LB drops backend1 at `at` (ipvsadm -d): drain / reset / silent drop."""
    if lb.drain_timeout_s is not None:  # existing connections flow on, reset at the end
        return [(at, before, "never"), (at + lb.drain_timeout_s, "rst", "drain_reset")]
    if lb.expire_nodest_conn:
        if eng == "ipvs":
            # real IPVS drops the packet that finds the dest gone and expires the entry
            # (ip_vs_in: NF_DROP while the old conntrack lingers); the next one, a
            # retransmission, has no entry and the director's own stack resets it.
            # Measured in the VM: the reset answers the TLP, ~r0 after the fault.
            return [(at, "drop", "never"), (at + 1e-6, "rst", "lb_reset")]
        return [(at, "rst", "lb_reset")]
    return [(at, "drop", "never")]


def _switchover(trial: TrialSettings, eng: str, failover_s: float) -> _FaultEffects:
    steps = _lb_removes(trial.lb, eng, 0.0, "ok")
    return _FaultEffects(Path(tuple(steps)), failover_s, "ok", "switchover")


def _silent(trial: TrialSettings, eng: str, failover_s: float) -> _FaultEffects:
    """crash, partition+drop: every packet lost. The LB's removal reaches the old connection
    after a crash, and after a partition only with IPVS (the nft partition rule drops first)."""
    kind = trial.fault.kind
    steps: list[Step] = [(0.0, "drop", "never")]
    if kind == "crash" or eng == "ipvs":
        steps += _lb_removes(trial.lb, eng, failover_s, "drop")
    return _FaultEffects(Path(tuple(steps)), failover_s, "syn_drop", f"{kind} (silent)")


def _rejected(trial: TrialSettings, eng: str, failover_s: float) -> _FaultEffects:
    """partition+reject: the path answers with a TCP reset."""
    return _FaultEffects(Path(((0.0, "rst", "reset"),)), failover_s, "refused",
                         "partition (reject)")


def _partition(trial: TrialSettings, eng: str, failover_s: float) -> _FaultEffects:
    make = _silent if trial.fault.partition_mode == "drop" else _rejected
    return make(trial, eng, failover_s)


def _kill(trial: TrialSettings, eng: str, failover_s: float) -> _FaultEffects:
    """kill -9: the backend's kernel closes the connection and resets what follows."""
    return _FaultEffects(Path(((0.0, "rst", "reset"),), closed_at=0.0), failover_s, "refused",
                         "kill -9 (backend kernel resets)")


def _hang(trial: TrialSettings, eng: str, failover_s: float) -> _FaultEffects:
    """SIGSTOP: the backend's kernel ACKs, the server never answers."""
    steps: list[Step] = [(0.0, "ack", "never"), *_lb_removes(trial.lb, eng, failover_s, "ack")]
    return _FaultEffects(Path(tuple(steps)), failover_s, "hung", "hang (SIGSTOP)")


_FAULTS: dict[str, Callable[[TrialSettings, str, float], _FaultEffects]] = {
    "switchover": _switchover, "crash": _silent, "partition": _partition, "kill": _kill,
    "hang": _hang,
}


def _fault_effects(trial: TrialSettings, eng: str) -> _FaultEffects:
    return _FAULTS[trial.fault.kind](trial, eng, failover_at(trial.fault))


# --- the client's timers ---------------------------------------------------------------------


@dataclass(frozen=True)
class _ClientTimers:
    """The client's timers that can end a wait on its old connection."""

    read_timeout_s: float | None
    user_timeout_s: float | None
    retries2: int
    keepalive: Keepalive

    @classmethod
    def of(cls, c: ClientSettings, driver: str) -> _ClientTimers:
        uto = c.tcp_user_timeout_ms / 1000 if c.tcp_user_timeout_ms else None
        retries2 = c.tcp_retries2 if c.tcp_retries2 is not None else TCP_RETRIES2
        return cls(c.read_timeout_s, uto, retries2, Keepalive.of(c, driver, uto))


# --- the old connection until the driver sees an error ---------------------------------------


def _detect(
    path: Path,
    client: _ClientTimers,
    busy: bool,
    t_q: float,
    idle_elapsed_s: float,
    rto_s: float,
    hz: int,
    notes: list[str],
) -> Detected:
    """When does the driver get an error on its old connection, and what causes it."""
    if busy:
        early = _closed_while_busy(path, t_q, notes)
    else:
        early = _idle_phase(path, client.keepalive, t_q, idle_elapsed_s, hz, notes)
    if early is not None:
        return early
    state, cause = path.at(t_q)
    if state == "ok":
        return t_q, "no_outage"
    if state == "rst":
        notes.append(f"query at {fmt_s(t_q)} answered with a reset")
        return t_q, cause
    candidates: list[tuple[float, Mechanism]] = []
    if client.read_timeout_s is not None:
        candidates.append((t_q + client.read_timeout_s, "read_timeout"))
    if state == "ack":
        candidates.append(_acked(path, client.keepalive, t_q, hz, notes))
    else:
        candidates += _blackholed(path, client, t_q, rto_s, hz, notes)
    t, why = min(candidates, key=lambda x: x[0])
    return t, why


def _closed_while_busy(path: Path, t_q: float, notes: list[str]) -> Detected | None:
    if path.closed_at is None:
        return None
    notes.append("server's kernel resets the busy connection at once")
    return t_q, "reset"


def _idle_phase(
    path: Path, ka: Keepalive, t_q: float, idle_elapsed_s: float, hz: int, notes: list[str]
) -> Detected | None:
    """Until the next query only keepalive probes (or the server's own FIN/RST) can reach
    the kernel; a socket they kill is seen dead at the next query."""
    if path.closed_at is not None and path.closed_at <= t_q:
        notes.append(f"server closed at {fmt_s(path.closed_at)}, seen at next query")
        return t_q, "reset"
    t_dead, why = keepalive_timer(ka, last_rx=-idle_elapsed_s, until=t_q, path=path, hz=hz)
    if t_dead <= t_q:
        notes.append(f"idle socket killed by {why} at {fmt_s(t_dead)}, seen at next query")
        return t_q, why
    notes.append(f"idle until the next query at {fmt_s(t_q)}")
    return None


def _acked(
    path: Path, ka: Keepalive, t_q: float, hz: int, notes: list[str]
) -> tuple[float, Mechanism]:
    """ACKed: nothing in flight, so no retransmission timer and no user timeout; keepalive
    runs again from the ACK, and helps only once the LB stops the packets reaching it."""
    notes.append("query ACKed by the backend's kernel, never answered")
    return keepalive_timer(ka, last_rx=t_q, until=math.inf, path=path, hz=hz)


def _blackholed(
    path: Path, client: _ClientTimers, t_q: float, rto_s: float, hz: int, notes: list[str]
) -> list[tuple[float, Mechanism]]:
    """Dropped: the retransmission timer owns the socket (keepalive is suspended while
    packets_out, tcp_keepalive_timer); an LB reset answers the first send after it starts."""
    uto, retries2 = client.user_timeout_s, client.retries2
    plan = retransmit_plan(rto_s, retries2=retries2, user_timeout_s=uto, hz=hz)
    who: Mechanism = "user_timeout" if uto is not None else "retries2"
    budget = f"TCP_USER_TIMEOUT {uto:g}s" if uto is not None else (
        f"tcp_retries2={retries2} (model {tcp_model_timeout(retries2):g}s)"
    )
    notes.append(
        f"query at {fmt_s(t_q)} blackholed: {budget} counted from the first RTO "
        f"retransmission (+{plan.deadline_from_s:.2f}s), abort at +{plan.abort_s:.2f}s"
    )
    candidates: list[tuple[float, Mechanism]] = [(t_q + plan.abort_s, who)]
    for send in plan.sends[1:]:
        s_state, s_cause = path.at(t_q + send)
        if s_state == "rst":
            candidates.append((t_q + send, s_cause))
            notes.append(f"retransmission at {fmt_s(t_q + send)} is reset ({s_cause})")
            break
    return candidates


def _drain_without_outage(
    trial: TrialSettings, what: str, t_q: float, reconnect_s: float
) -> Prediction:
    """A drain with a live backend: the old connection keeps working until the drain ends."""
    drain = trial.lb.drain_timeout_s or 0.0
    reset_seen = seen_at(drain, trial.load, t_q)
    return Prediction(
        t_q, "drain_reset", reset_seen,
        f"{what}: no outage - the draining LB keeps the old connection to the live backend; "
        f"first transaction after the fault at {fmt_s(t_q)}; the drain reset at "
        f"{fmt_s(drain)} is seen at {fmt_s(reset_seen)} (+{reconnect_s:.2f}s reconnect blip)",
    )


# --- reconnect: new connections may still land on the dead backend before the failover ------


@dataclass(frozen=True)
class _ConnectCost:
    """What a reconnect that lands on the broken backend costs the driver."""

    fail_s: float  # a connect into dropped SYNs: the connect timeout or the SYN retries
    attempt_s: float  # the driver's own cost per attempt (CONNECT_ATTEMPT_COST_S)
    read_timeout_s: float | None  # what ends a wait for a hung backend's greeting

    @classmethod
    def of(cls, trial: TrialSettings, hz: int) -> _ConnectCost:
        c, driver = trial.client, trial.load.driver
        syn_fail = syn_abort_time(c.tcp_syn_retries or TCP_SYN_RETRIES, hz=hz)
        # sysbench 1.0.20 sets no MYSQL_OPT_CONNECT_TIMEOUT, a command's is unknown and some
        # zoo libraries have none (connect_timeout_s None): only the kernel's SYN retries end it
        fail_s = syn_fail if driver == "sysbench" or c.connect_timeout_s is None \
            else min(c.connect_timeout_s, syn_fail)
        return cls(fail_s, CONNECT_ATTEMPT_COST_S[driver], c.read_timeout_s)

    def failed_attempt(self, fate: ConnFate, s: float, failover_s: float
                       ) -> tuple[float, str] | None:
        """When an attempt made at `s` that runs into `fate` ends, and why it failed
        (None: a hung backend with no read timeout holds it for ever)."""
        if fate == "refused":  # RST at once: the driver retries until the failover
            return failover_s, "refused"
        if fate == "syn_drop":
            return (s + (self.fail_s + self.attempt_s),
                    f"SYN dropped, {self.fail_s:g}s + {self.attempt_s:.3f}s client")
        if self.read_timeout_s is None:  # the handshake completes, the greeting never comes
            return None
        return (s + (self.read_timeout_s + self.attempt_s),
                f"hung backend, read_timeout {self.read_timeout_s:g}s + {self.attempt_s:.3f}s "
                "client")


def _reconnect(
    trial: TrialSettings,
    fault: _FaultEffects,
    detect: float,
    mech: Mechanism,
    reconnect_s: float,
    hz: int,
    notes: list[str],
) -> Prediction:
    """From the error on, the driver reconnects until an attempt lands on a working backend."""
    cost = _ConnectCost.of(trial, hz)
    s = detect
    failed: list[str] = []
    for _ in range(100_000):
        fate = fault.new_conn(s)
        if fate == "ok":
            break
        attempt = cost.failed_attempt(fate, s, fault.failover_s)
        if attempt is None:
            notes.append("the reconnect lands on the hung backend and waits forever")
            return Prediction(None, "never", detect, "; ".join(notes))
        s, why = attempt
        failed.append(why)
    if failed:
        notes.append(
            f"{len(failed)} reconnect(s) before the failover at {fmt_s(fault.failover_s)} "
            f"fail ({failed[0]})"
        )
    outage = s + reconnect_s
    notes.append(f"error at {fmt_s(detect)}, reconnect +{reconnect_s:.2f}s -> {fmt_s(outage)}")
    return Prediction(outage, mech, detect, "; ".join(notes))
