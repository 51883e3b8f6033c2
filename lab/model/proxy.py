"""lb.engine "proxy" (HAProxy, mode tcp): the proxy terminates the client's connection.

DERIVED from lab/lb/proxy.py and HAProxy's documentation; NOT checked against a run yet.
The proxy's kernel ACKs and answers everything the client sends, so the client's
tcp_retries2, TCP_USER_TIMEOUT and keepalive never fire; only its read timeout does. The
client's connection ends when HAProxy closes it, which happens when its server-side session
ends: the server's RST (kill / reject), `timeout server` (inactivity, counted here from the
forwarded query), the lb namespace's tcp_retries2 (kernel default 15) on a silent path, a
health check marking the server DOWN (`fall` failed checks `inter` apart, ~inter/2 to the
first one; silent failures take a whole `inter` each) with shutdown-sessions, or the LB's
`shutdown sessions` (expire_nodest_conn=1 at removal, drain_timeout_s after it). Removal
alone (drain state) keeps sessions on the old server. Reconnects succeed once the failover
sends new sessions to backend2 (the trial adds backend2 only then, so a DOWN mark alone does
not help new sessions); a refused reconnect before that holds the client for HAProxy's
`retries` (3, one second apart) before it is closed.
"""

from __future__ import annotations

import math

from lab.config.settings import LbSettings, TrialSettings
from lab.model.kernel import TCP_RETRIES2, rto_abort_time

# the same helpers as outage.py (an import list, not a copy of logic): both models build
# their Predictions from them
from lab.model.prediction import (
    Mechanism,
    Prediction,
    failover_at,
    first_query_at,
    fmt_s,
    never,
    seen_at,
)

# HAProxy (lb.engine "proxy", lab/lb/proxy.py): `timeout connect 5000`, default `retries 3`.
PROXY_CONNECT_TIMEOUT_S = 5.0
PROXY_RETRIES = 3
# HAProxy's `retries` documentation: "a turn-around timer of min("timeout connect", one
# second) is applied before a retry occurs"; without `option redispatch` (not set) every
# retry goes to the same server. A session whose server refuses at once therefore ends after
# retries x that timer, when HAProxy closes the client's connection (bench_scale.py --mix:
# kill behind the proxy, failover at 2 s, measured 3.42 s; 3 s of retries + the reconnect).
PROXY_REFUSED_SESSION_S = PROXY_RETRIES * min(PROXY_CONNECT_TIMEOUT_S, 1.0)
SILENT = ("crash", "partition-drop")  # the server side's packets vanish
REFUSING = ("kill", "partition-reject")  # the server side is reset at once

# when HAProxy closes the client's session, why (the Prediction's mechanism), and a note
Close = tuple[float, Mechanism, str]


def predict_proxy(
    trial: TrialSettings, *, rto_s: float, reconnect_s: float, idle_elapsed_s: float, hz: int
) -> Prediction:
    """The outage of `trial` behind HAProxy: the first close of the client's session, the
    client's own read timeout if sooner, then reconnects until the failover."""
    t_q = first_query_at(trial.load, idle_elapsed_s)
    kind = _fault_kind(trial)
    closes = _server_side_closes(trial.lb, kind, t_q, rto_s, hz)
    closes += _lb_closes(trial.lb, kind, failover_at(trial.fault))
    close_t, mech, why = min(closes, key=lambda x: x[0], default=(math.inf, "never", ""))
    if kind == "switchover" and mech != "lb_reset":
        # the old backend is alive and sessions keep flowing to it
        seen = None if math.isinf(close_t) else seen_at(close_t, trial.load, t_q)
        return Prediction(
            t_q, "drain_reset", seen,
            f"proxy, switchover: no outage - sessions stay on the live old backend ({why or 'no'}"
            " close)")
    detect, notes = max(close_t, t_q), [f"proxy ({kind}): {why}" if why else f"proxy ({kind})"]
    read_timeout = trial.client.read_timeout_s
    if kind not in REFUSING and read_timeout is not None and t_q + read_timeout < detect:
        detect, mech = t_q + read_timeout, "read_timeout"
        notes.append(f"client read timeout {read_timeout:g}s")
    if math.isinf(detect):
        return never(notes)
    return _reconnect(trial, kind, detect, mech, reconnect_s, notes)


def _fault_kind(trial: TrialSettings) -> str:
    """The fault as the proxy's server side sees it: a partition is silent or refusing."""
    fault = trial.fault
    return fault.kind if fault.kind != "partition" else f"partition-{fault.partition_mode}"


def _server_side_closes(
    lb: LbSettings, kind: str, t_q: float, rto_s: float, hz: int
) -> list[Close]:
    """The server-side session ends: the backend path's reset, the lb kernel's tcp_retries2,
    HAProxy's `timeout server` (counted from the forwarded query)."""
    closes: list[Close] = []
    if kind in REFUSING:
        closes.append((0.0, "reset", "backend path resets the proxy's server side"))
    if kind in SILENT:
        closes.append((t_q + rto_abort_time(TCP_RETRIES2, rto_s, hz=hz), "retries2",
                       "lb kernel gives up the server side (tcp_retries2=15)"))
    if lb.proxy_timeout_server_s is not None and kind != "switchover":
        closes.append((t_q + lb.proxy_timeout_server_s, "read_timeout",
                       f"HAProxy timeout server {lb.proxy_timeout_server_s:g}s"))
    return closes


def _lb_closes(lb: LbSettings, kind: str, failover_s: float) -> list[Close]:
    """HAProxy shuts the sessions down: a health check marks the server DOWN
    (shutdown-sessions), or the LB removes it (`shutdown sessions` at once or after a drain)."""
    closes: list[Close] = []
    if lb.proxy_health_check and kind in (*SILENT, *REFUSING):
        inter = lb.proxy_check_inter_s
        down_t = inter / 2 + (lb.proxy_check_fall - (0 if kind in SILENT else 1)) * inter
        closes.append((down_t, "lb_reset", f"health check DOWN after ~{down_t:.1f}s, "
                       "shutdown-sessions"))
    if lb.drain_timeout_s is not None:
        closes.append((failover_s + lb.drain_timeout_s, "drain_reset",
                       "shutdown sessions after drain"))
    elif lb.expire_nodest_conn:
        closes.append((failover_s, "lb_reset", "shutdown sessions at removal"))
    return closes


def _reconnect(
    trial: TrialSettings, kind: str, detect: float, mech: Mechanism, reconnect_s: float,
    notes: list[str],
) -> Prediction:
    """New sessions reach backend2 only from the failover (the trial adds backend1 alone at
    first); before it a hung backend holds each reconnect until a timeout ends it."""
    ready = failover_at(trial.fault)
    start = max(detect, ready)
    # (failover_after_s 0: the failover follows the fault within the ms the client's error
    # takes to arrive, so its reconnect already goes to backend2)
    if kind in REFUSING and detect < ready and trial.fault.failover_after_s > 0:
        cycle = PROXY_REFUSED_SESSION_S
        start = detect + math.ceil((ready - detect) / cycle) * cycle
        notes.append(f"each reconnect before the failover is refused {PROXY_RETRIES}x, "
                     f"{cycle / PROXY_RETRIES:g}s apart (HAProxy retries), then closed")
    if kind == "hang" and detect < ready:
        waits = [x for x in (trial.client.read_timeout_s, trial.lb.proxy_timeout_server_s)
                 if x is not None]
        if not waits:
            notes.append("the reconnect lands on the hung backend and waits forever")
            return Prediction(None, "never", detect, "; ".join(notes))
        start = detect + math.ceil((ready - detect) / min(waits)) * min(waits)
        notes.append(f"reconnects before the failover hang, each ends after {min(waits):g}s")
    outage = start + reconnect_s
    notes.append(f"client error at {fmt_s(detect)}, new sessions go to backend2 from "
                 f"{fmt_s(ready)} -> {fmt_s(outage)}")
    return Prediction(outage, mech, detect, "; ".join(notes))
