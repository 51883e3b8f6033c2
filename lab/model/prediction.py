"""The model's answer (`Prediction`, `Mechanism`) and the timing conventions both LB models share.

Timing conventions (the trial must inject faults this way for the numbers to hold):
- load.shape "busy": a query is outstanding when the fault hits; its send is t=0.
- load.shape "idle": the fault hits `idle_elapsed_s` (default 0: right after a transaction
  completed) into the driver's `idle_s` sleep; the next query goes out at
  t_q = idle_s - idle_elapsed_s (`first_query_at`). Until then the socket is idle and only
  keepalive probes leave it; an application only *sees* a dead socket when it next uses it, so
  the earliest possible outage of an idle connection is t_q (even without any fault the first
  transaction after the fault starts at t_q).
- outage = fault -> first successful transaction after it = detect_s + reconnect_s, where
  detect_s is when the client's driver gets the error, and reconnect_s covers TCP connect,
  MySQL handshake and the first transaction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from lab.config.settings import FaultSettings, LoadSettings

# Reconnect + MySQL handshake + first transaction on a healthy backend (same-host namespaces).
DEFAULT_RECONNECT_S = 0.05
# A follow-up failover "F s after the fault" takes effect this much later: the trial runs it
# after inject() returned, and an nft transaction takes ~10 ms. A busy client's query that is
# outstanding at the fault therefore still reaches the old backend even with F=0.
FAILOVER_LAG_S = 0.01

Mechanism = Literal[
    "retries2",  # the kernel gave up retransmitting: tcp_retries2 budget, ETIMEDOUT
    "user_timeout",  # TCP_USER_TIMEOUT expired while retransmitting, ETIMEDOUT
    "read_timeout",  # the driver's socket read timed out (PyMySQL read_timeout)
    "write_timeout",  # sendall() timed out: needs a full send buffer; OLTP never gets there
    "keepalive",  # keepalive probes went unanswered
    "reset",  # the backend's kernel (or a rejecting path) sent a TCP reset / FIN
    "lb_reset",  # the LB reset the old connection (expire_nodest_conn=1)
    "drain_reset",  # the LB reset the old connection at the end of its drain
    "never",  # nothing ever ends it
]


@dataclass(frozen=True)
class Prediction:
    """The model's answer for one trial.

    outage_s: fault -> first successful transaction (None: never, within any horizon; a long
      but finite outage is given as its number, the trial compares it with its deadline).
    mechanism: what ends the outage (what makes the client's connection fail).
    detect_s: fault -> the driver sees its connection error (None: never).
    detail: one human-readable line with the numbers.
    A switchover to a draining LB whose old backend is alive is "drain_reset" with an outage of
    ~0 (only the idle wait): the old connection keeps working; detect_s is then when the
    drain's reset reaches the client (None: never).
    """

    outage_s: float | None
    mechanism: Mechanism
    detect_s: float | None
    detail: str


def fmt_s(x: float | None) -> str:
    """A time for a Prediction's detail: seconds to 10 ms, or "never" (None or inf)."""
    if x is None or math.isinf(x):
        return "never"
    return f"{x:.2f}s"


def describe(p: Prediction) -> str:
    """One line for reports."""
    return f"{fmt_s(p.outage_s)} via {p.mechanism} (detect {fmt_s(p.detect_s)}): {p.detail}"


def never(notes: list[str]) -> Prediction:
    """Nothing ever ends the old connection's wait: no outage figure, no detection."""
    return Prediction(None, "never", None, "; ".join([*notes, "nothing ever ends it"]))


def first_query_at(load: LoadSettings, idle_elapsed_s: float) -> float:
    """t_q: when the client next sends on its old connection (0: busy, a query is out)."""
    return 0.0 if load.shape == "busy" else max(0.0, load.idle_s - idle_elapsed_s)


def seen_at(t: float, load: LoadSettings, t_q: float) -> float:
    """When a reset that reaches the old connection at `t` is seen: at once while busy, else
    at the first query after it (queries go out at t_q, t_q + idle_s, ...)."""
    if load.shape == "busy":
        return t
    return t_q + math.ceil(max(0.0, t - t_q) / load.idle_s) * load.idle_s


def failover_at(fault: FaultSettings) -> float:
    """When new connections start going to the other backend (a switchover does it at once)."""
    return 0.0 if fault.kind == "switchover" else fault.failover_after_s + FAILOVER_LAG_S


def tolerance(predicted_s: float) -> float:
    """How close a measurement must be to its prediction for the verdict "ok": 5 % or 0.5 s,
    whichever is larger (0.5 s covers a reconnect and the 0.1 s sampling on a busy host)."""
    return max(0.05 * predicted_s, 0.5)
