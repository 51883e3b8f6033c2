"""Every Prediction is well-formed, whatever the settings (lab.model.prediction), and the
timing conventions both LB models share."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings

from lab import model
from lab.config.settings import FaultSettings, LoadSettings
from lab.model.prediction import FAILOVER_LAG_S, failover_at, first_query_at, seen_at
from tests.model.cases import MECHANISMS, client_st, fault_st, lb_st, load_st, trial


@settings(max_examples=200, deadline=None)
@given(client=client_st, lb=lb_st, load=load_st, fault=fault_st)
def test_predict_is_consistent(
    client: dict[str, Any], lb: dict[str, Any], load: dict[str, Any], fault: dict[str, Any]
) -> None:
    p = model.predict(trial(client, lb, load, fault))
    assert p.mechanism in MECHANISMS
    assert p.detail and "\n" not in p.detail
    if p.outage_s is None:
        assert p.mechanism == "never"
        return
    assert p.outage_s >= 0
    if p.mechanism != "drain_reset":  # a drain with a live backend has no outage at all
        assert p.detect_s is not None
        assert p.outage_s >= p.detect_s
    # a read timeout ends any wait on the old connection: outage bounded by it + reconnects
    if (fault.get("kind", "switchover") == "switchover" and "read_timeout_s" in client
            and p.mechanism != "drain_reset"):
        t_q = 0.0 if load.get("shape", "busy") == "busy" else load.get("idle_s", 5.0)
        assert p.detect_s <= t_q + client["read_timeout_s"] + 1e-6


def test_describe_reads_never_for_a_missing_time() -> None:
    assert model.describe(model.Prediction(5.05, "reset", 5.0, "kill")) == (
        "5.05s via reset (detect 5.00s): kill")
    assert model.describe(model.Prediction(None, "never", None, "hang")) == (
        "never via never (detect never): hang")


def test_first_query_follows_the_load_shape() -> None:
    assert first_query_at(LoadSettings(), idle_elapsed_s=3.0) == 0.0  # busy: a query is out
    idle = LoadSettings(shape="idle", idle_s=5.0)
    assert first_query_at(idle, idle_elapsed_s=3.0) == 2.0
    assert first_query_at(idle, idle_elapsed_s=7.0) == 0.0


def test_an_idle_client_sees_a_reset_at_its_next_query() -> None:
    assert seen_at(12.0, LoadSettings(), t_q=0.0) == 12.0
    idle = LoadSettings(shape="idle", idle_s=5.0)
    assert [seen_at(t, idle, t_q=5.0) for t in (3.0, 5.0, 10.0, 12.0)] == [5.0, 5.0, 10.0, 15.0]


def test_failover_lags_the_fault_except_a_switchover() -> None:
    assert failover_at(FaultSettings(kind="switchover", failover_after_s=5)) == 0.0
    assert failover_at(FaultSettings(kind="crash", failover_after_s=5)) == pytest.approx(
        5.0 + FAILOVER_LAG_S)
