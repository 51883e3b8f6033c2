"""Outage predictor: from a trial's settings, when does the client get its service back, and why.

The modules, bottom to top (each imports only those before it):
- prediction: the answer (`Prediction`, `Mechanism`, `describe`) and the timing conventions;
- kernel: the kernel's TCP timers as pure functions (RTO back-off, tcp_retries2,
  TCP_USER_TIMEOUT, SYN retries, timer-wheel rounding), checked against the real kernel by
  tests/model/test_kernel.py;
- path: what the old connection's path does to a packet, over time since the fault;
- keepalive: the keepalive timer run against that path;
- proxy: lb.engine "proxy" (HAProxy), where the proxy terminates the client's connection;
- outage: `predict(trial)`, the fault and LB options turned into a path, the client's timers
  run against it, then the reconnects until the failover.
This package re-exports the names callers use (`model.predict`, `model.rto_abort_time`, ...).
"""

from __future__ import annotations

from lab.model.keepalive import DRIVER_SO_KEEPALIVE, keepalive_detect_time
from lab.model.kernel import (
    DEFAULT_RTO_S,
    HZ,
    KEEPALIVE_INTVL_S,
    KEEPALIVE_PROBES,
    KEEPALIVE_TIME_S,
    SYN_LINEAR_TIMEOUTS,
    TCP_RETRIES2,
    TCP_RTO_MAX_S,
    TCP_RTO_MIN_S,
    TCP_SYN_RETRIES,
    TCP_TIMEOUT_INIT_S,
    VETH_RTT_S,
    RetransmitPlan,
    retransmission_times,
    retransmit_plan,
    rto_abort_time,
    rto_from_backoffs,
    rto_with_latency,
    syn_abort_time,
    tcp_model_timeout,
    timer_delay,
    user_timeout_abort_time,
)
from lab.model.outage import CONNECT_ATTEMPT_COST_S, RECONNECT_PAUSE_S, ConnFate, predict
from lab.model.path import PathState
from lab.model.prediction import (
    DEFAULT_RECONNECT_S,
    FAILOVER_LAG_S,
    Mechanism,
    Prediction,
    describe,
    tolerance,
)
from lab.model.proxy import PROXY_CONNECT_TIMEOUT_S

__all__: list[str] = [
    "CONNECT_ATTEMPT_COST_S",
    "DEFAULT_RECONNECT_S",
    "DEFAULT_RTO_S",
    "DRIVER_SO_KEEPALIVE",
    "FAILOVER_LAG_S",
    "HZ",
    "KEEPALIVE_INTVL_S",
    "KEEPALIVE_PROBES",
    "KEEPALIVE_TIME_S",
    "PROXY_CONNECT_TIMEOUT_S",
    "RECONNECT_PAUSE_S",
    "SYN_LINEAR_TIMEOUTS",
    "TCP_RETRIES2",
    "TCP_RTO_MAX_S",
    "TCP_RTO_MIN_S",
    "TCP_SYN_RETRIES",
    "TCP_TIMEOUT_INIT_S",
    "VETH_RTT_S",
    "ConnFate",
    "Mechanism",
    "PathState",
    "Prediction",
    "RetransmitPlan",
    "describe",
    "keepalive_detect_time",
    "predict",
    "retransmission_times",
    "retransmit_plan",
    "rto_abort_time",
    "rto_from_backoffs",
    "rto_with_latency",
    "syn_abort_time",
    "tcp_model_timeout",
    "timer_delay",
    "tolerance",
    "user_timeout_abort_time",
]
