"""predict() for the LVS engines (lab.model.outage): each fault kind, the LB's options, idle
connections, the reconnects before the failover.

Measured outages from pymysql through the nft LB on this project's hosts and from
tests/model/test_kernel.py (HZ=250, tcpi_rto 204 ms).
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lab import model
from lab.config.settings import ClientSettings, FaultSettings, LoadSettings, TrialSettings
from lab.load import runtime
from tests.model.cases import KA, R3, check_prediction, client_st, load_st, trial

PREDICT_CASES: list[tuple[str, TrialSettings, str, float | None]] = [
    # switchover (LVS: ipvsadm -d old; -a new)
    ("switchover default", trial(), "retries2", 938.6),
    ("switchover retries2=3", trial(R3), "retries2", 6.77),
    ("switchover uto 3000", trial({"tcp_user_timeout_ms": 3000}), "user_timeout", 3.47),
    ("switchover uto + r3", trial({**R3, "tcp_user_timeout_ms": 3000}), "user_timeout", 3.47),
    ("switchover read_timeout", trial({"read_timeout_s": 5}), "read_timeout", 5.05),
    ("switchover expire_nodest", trial(lb={"expire_nodest_conn": 1}), "lb_reset", 0.05),
    ("switchover drain (live backend)", trial(lb={"drain_timeout_s": 10}), "drain_reset", 0.0),
    # crash: backend1 silent; the LB fails over F later
    ("crash", trial(R3, fault={"kind": "crash"}), "retries2", 6.77),
    ("crash + expire_nodest", trial(lb={"expire_nodest_conn": 1}, fault={"kind": "crash"}),
     "lb_reset", 0.26),
    ("crash + late failover: next retransmission is reset",
     trial(lb={"expire_nodest_conn": 1}, fault={"kind": "crash", "failover_after_s": 5}),
     "lb_reset", 6.77),
    ("crash + drain 30 s, retries2=8",
     trial({"tcp_retries2": 8}, lb={"drain_timeout_s": 30},
           fault={"kind": "crash", "failover_after_s": 5}), "drain_reset", 53.75),
    ("crash + read_timeout < failover: reconnects hang in SYN",
     trial({"read_timeout_s": 2}, fault={"kind": "crash", "failover_after_s": 20}),
     "read_timeout", 22.05),
    # kill -9: the backend's kernel resets
    ("kill", trial(fault={"kind": "kill"}), "reset", 0.05),
    ("kill + failover 3 s", trial(fault={"kind": "kill", "failover_after_s": 3}), "reset", 3.06),
    # hang: ACKed, never answered
    ("hang + read_timeout", trial({"read_timeout_s": 2}, fault={"kind": "hang"}),
     "read_timeout", 2.05),
    ("hang, no keepalive, no read timeout", trial({"so_keepalive": False},
                                                  fault={"kind": "hang"}), "never", None),
    ("hang: keepalive answered until the LB fails over (3600 s, the longest allowed)",
     trial(KA, fault={"kind": "hang", "failover_after_s": 3600}), "keepalive", 3600),
    ("hang, PyMySQL keepalive after the LB failover", trial(fault={"kind": "hang"}),
     "keepalive", 7949.8),
    ("hang, short keepalive after the LB failover", trial(KA, fault={"kind": "hang"}),
     "keepalive", 5.12),
    ("hang, keepalive probe reset by the LB", trial(KA, lb={"expire_nodest_conn": 1},
                                                    fault={"kind": "hang"}), "lb_reset", 2.07),
    ("hang + retries2 + user timeout do nothing",
     trial({**R3, "tcp_user_timeout_ms": 1000, "read_timeout_s": 4},
           fault={"kind": "hang", "failover_after_s": 30}), "read_timeout", 32.05),
    # partition of the lb <-> backend1 path
    ("partition drop", trial(R3, fault={"kind": "partition"}), "retries2", 6.77),
    ("partition drop + expire (nft: the partition rule drops first)",
     trial(R3, lb={"expire_nodest_conn": 1}, fault={"kind": "partition"}), "retries2", 6.77),
    ("partition drop + expire (ipvs)",
     trial(R3, lb={"expire_nodest_conn": 1, "engine": "ipvs"}, fault={"kind": "partition"}),
     "lb_reset", 0.26),
    ("partition reject", trial(fault={"kind": "partition", "partition_mode": "reject"}),
     "reset", 0.05),
    # idle connection: next query 5 s after the fault
    ("idle switchover", trial(load={"shape": "idle"}), "retries2", 943.6),
    ("idle + keepalive kills it first", trial(
        {"tcp_keepalive_time": 2, "tcp_keepalive_intvl": 1, "tcp_keepalive_probes": 2},
        load={"shape": "idle"}), "keepalive", 5.05),
    ("idle + keepalive too slow", trial(KA, load={"shape": "idle", "idle_s": 4.0}),
     "retries2", 942.6),
    ("idle + keepalive off", trial({**KA, "so_keepalive": False}, load={"shape": "idle"}),
     "retries2", 943.6),
    ("idle + expire_nodest", trial(lb={"expire_nodest_conn": 1}, load={"shape": "idle"}),
     "lb_reset", 5.05),
    ("idle kill", trial(load={"shape": "idle"}, fault={"kind": "kill"}), "reset", 5.05),
    ("idle hang + read_timeout", trial({"read_timeout_s": 3}, load={"shape": "idle"},
                                       fault={"kind": "hang"}), "read_timeout", 8.05),
]


@pytest.mark.parametrize(
    ("settings", "mechanism", "outage"), [c[1:] for c in PREDICT_CASES],
    ids=[c[0] for c in PREDICT_CASES],
)
def test_predict(settings: TrialSettings, mechanism: str, outage: float | None) -> None:
    check_prediction(settings, mechanism, outage)


def test_predict_drain_detects_the_reset_later() -> None:
    p = model.predict(trial(lb={"drain_timeout_s": 10}))
    assert p.detect_s == pytest.approx(10.0)
    idle = model.predict(trial(lb={"drain_timeout_s": 12}, load={"shape": "idle"}))
    assert (idle.outage_s, idle.detect_s) == (5.0, 15.0)  # queries at 5, 10, 15 s


def test_predict_idle_phase() -> None:
    late = model.predict(trial(lb={"expire_nodest_conn": 1}, load={"shape": "idle"}),
                         idle_elapsed_s=3.0)
    assert late.outage_s == pytest.approx(2.05)


def test_predict_uses_rto_and_reconnect() -> None:
    t = trial(R3)
    slow = model.predict(t, rto_s=0.3, reconnect_s=1.0)
    assert slow.outage_s == pytest.approx(model.rto_abort_time(3, 0.3) + 1.0)
    assert slow.detect_s == pytest.approx(model.rto_abort_time(3, 0.3))


def test_sysbench_reconnect_waits_for_the_syn_retries() -> None:
    # sysbench sets no connect timeout: a reconnect into the crashed backend takes the whole
    # SYN retry budget (6 -> ~133 s), not PyMySQL's 10 s connect_timeout
    t = TrialSettings(client=ClientSettings(tcp_retries2=3), load=LoadSettings(driver="sysbench"),
                      fault=FaultSettings(kind="crash", failover_after_s=20))
    p = model.predict(t)
    assert p.outage_s == pytest.approx(
        model.rto_abort_time(3) + model.syn_abort_time(6) + 0.001 + 0.05)


def test_each_failed_connect_costs_the_driver_its_setup() -> None:
    """A reconnect into a dropped SYN costs PyMySQL its TLS context and the driver's pause on
    top of the timeout; the model mirrors the oltp driver's pause."""
    t = trial({"tcp_user_timeout_ms": 2000, "tcp_syn_retries": 1, "connect_timeout_s": 30},
              fault={"kind": "crash", "failover_after_s": 6})
    p = model.predict(t)
    detect = p.detect_s
    assert detect is not None
    each = model.syn_abort_time(1) + model.CONNECT_ATTEMPT_COST_S["oltp"]
    assert p.outage_s == pytest.approx(detect + 2 * each + model.DEFAULT_RECONNECT_S)
    assert model.RECONNECT_PAUSE_S == runtime.RECONNECT_PAUSE_S


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 15), more=st.integers(1, 5),
       uto=st.one_of(st.none(), st.integers(500, 60_000)))
def test_predict_blackhole_monotone_in_retries2(n: int, more: int, uto: int | None) -> None:
    a = model.predict(trial({"tcp_retries2": n, "tcp_user_timeout_ms": uto}))
    b = model.predict(trial({"tcp_retries2": n + more, "tcp_user_timeout_ms": uto}))
    assert a.outage_s is not None and b.outage_s is not None
    assert b.outage_s >= a.outage_s


@settings(max_examples=60, deadline=None)
@given(client=client_st, load=load_st)
def test_user_timeout_never_longer_than_retries2_budget_in_predict(
    client: dict[str, Any], load: dict[str, Any]
) -> None:
    """For switchover blackholes: adding a user timeout within the tcp_retries2 budget never
    lengthens the predicted outage."""
    client = {k: v for k, v in client.items() if k != "tcp_user_timeout_ms"}
    base = model.predict(trial(client, load=load))
    budget = model.tcp_model_timeout(client.get("tcp_retries2", 15))
    with_uto = model.predict(trial({**client, "tcp_user_timeout_ms": int(budget * 500)},
                                   load=load))
    assert base.outage_s is not None and with_uto.outage_s is not None
    assert with_uto.outage_s <= base.outage_s + 1e-9
