"""What the model's test modules share: a trial built from per-section dicts, and the check
of one predicted case (mechanism, outage within 2 % or 30 ms, one-line detail)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import strategies as st

from lab import model
from lab.config.settings import (
    ClientSettings,
    FaultSettings,
    LbSettings,
    LoadSettings,
    TrialSettings,
)

MECHANISMS = {
    "retries2", "user_timeout", "read_timeout", "write_timeout", "keepalive", "reset",
    "lb_reset", "drain_reset", "never",
}
R3 = {"tcp_retries2": 3}
KA = {"tcp_keepalive_time": 2, "tcp_keepalive_intvl": 1, "tcp_keepalive_probes": 3}


def trial(
    client: dict[str, Any] | None = None,
    lb: dict[str, Any] | None = None,
    load: dict[str, Any] | None = None,
    fault: dict[str, Any] | None = None,
) -> TrialSettings:
    return TrialSettings(
        client=ClientSettings(**(client or {})), lb=LbSettings(**(lb or {})),
        load=LoadSettings(**(load or {})), fault=FaultSettings(**(fault or {})),
    )


def check_prediction(settings: TrialSettings, mechanism: str, outage: float | None) -> None:
    p = model.predict(settings)
    assert p.mechanism == mechanism, p.detail
    if outage is None:
        assert p.outage_s is None, p.detail
    else:
        assert p.outage_s == pytest.approx(outage, abs=max(0.02 * outage, 0.03)), p.detail
    assert "\n" not in p.detail


# hypothesis strategies: any client / lb / load / fault section the settings accept
client_st = st.fixed_dictionaries({}, optional={
    "tcp_retries2": st.integers(1, 15),
    "tcp_user_timeout_ms": st.integers(100, 100_000),
    "so_keepalive": st.booleans(),
    "tcp_keepidle": st.integers(1, 100),
    "tcp_keepintvl": st.integers(1, 100),
    "tcp_keepcnt": st.integers(1, 20),
    "read_timeout_s": st.floats(0.1, 100),
    "connect_timeout_s": st.floats(0.5, 30),
})
lb_st = st.fixed_dictionaries({}, optional={
    "expire_nodest_conn": st.sampled_from([0, 1]),
    "drain_timeout_s": st.floats(0, 100),
    "engine": st.sampled_from(["auto", "nft", "ipvs", "proxy"]),
    "proxy_timeout_server_s": st.floats(0.5, 100),
    "proxy_health_check": st.booleans(),
})
load_st = st.fixed_dictionaries({}, optional={
    "shape": st.sampled_from(["busy", "idle"]), "idle_s": st.floats(0.1, 60),
})
fault_st = st.fixed_dictionaries({}, optional={
    "kind": st.sampled_from(["switchover", "crash", "kill", "hang", "partition"]),
    "partition_mode": st.sampled_from(["drop", "reject"]),
    "failover_after_s": st.floats(0, 60),
})
