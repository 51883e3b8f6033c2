"""predict() for lb.engine "proxy" (lab.model.proxy): HAProxy terminates the client's
connection, so only what closes HAProxy's session (or the client's read timeout) ends it."""

from __future__ import annotations

import pytest

from lab.config.settings import TrialSettings
from tests.model.cases import R3, check_prediction, trial

PROXY = {"engine": "proxy"}
PROXY_CASES: list[tuple[str, TrialSettings, str, float | None]] = [
    ("live backend drained: no outage", trial(lb=PROXY), "drain_reset", 0.0),
    ("client knobs do not matter behind a proxy",
     trial({**R3, "tcp_user_timeout_ms": 1000}, lb=PROXY, fault={"kind": "crash"}),
     "retries2", 938.6),
    ("timeout server", trial(lb={**PROXY, "proxy_timeout_server_s": 10},
                             fault={"kind": "crash"}), "read_timeout", 10.05),
    ("health check closes, failover later", trial(
        lb={**PROXY, "proxy_health_check": True}, fault={"kind": "crash", "failover_after_s": 60}),
     "lb_reset", 60.06),
    ("shutdown sessions", trial(lb={**PROXY, "expire_nodest_conn": 1},
                                fault={"kind": "crash"}), "lb_reset", 0.06),
    ("kill", trial(lb=PROXY, fault={"kind": "kill"}), "reset", 0.06),
    # reconnects before the failover are refused 3x a second apart, then closed: 3 s cycles
    ("kill, failover after 2 s: one refused session of 3 s", trial(
        lb=PROXY, fault={"kind": "kill", "failover_after_s": 2}), "reset", 3.05),
    ("partition reject, failover after 4 s: two refused sessions", trial(
        lb=PROXY, fault={"kind": "partition", "partition_mode": "reject",
                         "failover_after_s": 4}), "reset", 6.05),
    ("hang, nothing set", trial(lb=PROXY, fault={"kind": "hang"}), "never", None),
    ("hang + timeout server, reconnects hang too until the failover", trial(
        lb={**PROXY, "proxy_timeout_server_s": 5}, fault={"kind": "hang", "failover_after_s": 100}),
     "read_timeout", 105.05),
]


@pytest.mark.parametrize(
    ("settings", "mechanism", "outage"), [c[1:] for c in PROXY_CASES],
    ids=[c[0] for c in PROXY_CASES],
)
def test_predict_proxy(settings: TrialSettings, mechanism: str, outage: float | None) -> None:
    check_prediction(settings, mechanism, outage)
