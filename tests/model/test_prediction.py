"""The outage model's pure functions and predict(), without a kernel.

Reference numbers: tcp_model_timeout from net/ipv4/tcp_timer.c and ip-sysctl.rst (924.6 s);
measured outages from shared/docs/recipe-host-nftables.md §5 (pymysql through the nft LB) and
tests/test_model_kernel.py (this VM, HZ=250, tcpi_rto 204 ms).
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lab import model
from lab.config.settings import (
    ClientSettings,
    FaultSettings,
    LbSettings,
    LoadSettings,
    TrialSettings,
)
from lab.load import oltp

MECHANISMS = {
    "retries2", "user_timeout", "read_timeout", "write_timeout", "keepalive", "reset",
    "lb_reset", "drain_reset", "never",
}


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


# --- kernel rules ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("retries", "seconds"),
    [(3, 3.0), (5, 12.6), (6, 25.4), (8, 102.2), (9, 204.6), (10, 324.6), (15, 924.6)],
)
def test_tcp_model_timeout(retries: int, seconds: float) -> None:
    assert model.tcp_model_timeout(retries) == pytest.approx(seconds)


def test_tcp_model_timeout_follows_rto_max() -> None:
    # Linux >= 6.15 tcp_rto_max_ms=5000: thresh = ilog2(25) = 4 -> 31*0.2 + 11*5
    assert model.tcp_model_timeout(15, rto_max_s=5.0) == pytest.approx(61.2)


def test_timer_wheel_lateness() -> None:
    # level 0 (< 63 jiffies): 1 jiffy late; level 1: (8+1)/2; level 2: (64+1)/2 jiffies
    assert model.timer_delay(0.204) == pytest.approx(0.208)
    assert model.timer_delay(0.408) == pytest.approx((102 + 4.5) / 250)
    assert model.timer_delay(3.264) == pytest.approx((816 + 32.5) / 250)
    assert model.timer_delay(3.264, wheel=False) == 3.264


def test_retransmissions_start_with_a_tail_loss_probe() -> None:
    ideal = model.retransmission_times(0.204, 6, wheel=False)
    assert ideal == pytest.approx([0.204 * 2**k for k in range(6)])
    # tcpdump of the recipe's tcp_retries2=5 blackhole (t=0: the original send)
    seen = [0.208, 0.416, 0.852, 1.684, 3.348, 6.868]
    for want, got in zip(seen, model.retransmission_times(0.204, 6), strict=True):
        assert got == pytest.approx(want, abs=max(0.05 * want, 0.03))


@pytest.mark.parametrize("rto", [0.204, 0.212, 0.268, 0.5, 1.0])
def test_rto_from_backoffs_inverts_the_retransmission_plan(rto: float) -> None:
    sends = model.retransmit_plan(rto, retries2=8).sends
    gaps = [b - a for a, b in itertools.pairwise(sends[1:])]  # from the probe on
    assert model.rto_from_backoffs(gaps) == pytest.approx(math.ceil(rto * 250 - 1e-9) / 250)


def test_rto_from_backoffs_of_a_tcg_netem_trial() -> None:
    """The VM's netem 50 ms trial (2026-12-03): first unacked send -> ETIMEDOUT 17.526 s.
    The raw gaps over 2^k (0.281 s) put the abort at 18.64 s: the wheel's lateness twice."""
    gaps = [0.293, 0.535, 1.122, 2.270, 4.352, 8.660]
    rto = model.rto_from_backoffs(gaps)
    assert rto == pytest.approx(0.268)
    assert model.rto_abort_time(5, rto) == pytest.approx(17.526, abs=0.1)
    with pytest.raises(ValueError):
        model.rto_from_backoffs([])


def test_rto_max_caps_the_gaps() -> None:
    times = model.retransmission_times(0.204, 16, wheel=False)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert max(gaps) == pytest.approx(120.0)


@pytest.mark.parametrize(
    ("retries2", "measured"),
    [(3, 6.8), (5, 13.5)],  # recipe §5: 6.73-6.84 s and 13.36-13.52 s
)
def test_rto_abort_time_matches_recipe(retries2: int, measured: float) -> None:
    assert model.rto_abort_time(retries2, 0.207) == pytest.approx(measured, abs=0.25)


def test_retries2_3_costs_one_more_backoff_than_the_formula() -> None:
    # at the 4th RTO the time since the first RTO retransmission is 2.91 s < 3.0 s
    plan = model.retransmit_plan(0.204, retries2=3)
    assert plan.deadline_from_s == pytest.approx(0.416)
    assert plan.sends[5] - plan.deadline_from_s < 3.0
    assert plan.abort_s > 2 * model.tcp_model_timeout(3)


def test_retries2_15_is_not_924_6() -> None:
    t = model.rto_abort_time(15)
    assert 925.0 < t < 945.0  # TLP + first RTO before the budget starts, plus timer slack


def test_user_timeout_matches_recipe() -> None:
    # recipe §5: TCP_USER_TIMEOUT=3000 -> 3.42 s after the first dropped send
    assert model.user_timeout_abort_time(3.0) == pytest.approx(3.42, abs=0.05)
    # the clamp: the abort lands ~U after the first RTO retransmission, not at a backoff step
    plan = model.retransmit_plan(0.204, user_timeout_s=3.0)
    assert plan.abort_s - plan.deadline_from_s == pytest.approx(3.0, abs=0.02)


def test_user_timeout_replaces_retries2_even_when_longer() -> None:
    # retransmits_timed_out() uses the user timeout *instead of* the tcp_retries2 model
    # 2*rto + U, the clamped last timer firing up to one wheel granule late
    assert model.rto_abort_time(3, user_timeout_s=30.0) == pytest.approx(30.5, abs=0.15)
    assert model.rto_abort_time(3, user_timeout_s=30.0) > model.rto_abort_time(3)
    assert model.rto_abort_time(3, user_timeout_s=5.0) == model.rto_abort_time(
        15, user_timeout_s=5.0
    )


def test_keepalive_detect_time() -> None:
    assert model.keepalive_detect_time(2, 1, 3, wheel=False) == 5.0
    assert model.keepalive_detect_time(2, 1, 3) == pytest.approx(5.07, abs=0.02)
    # TCP_USER_TIMEOUT replaces the probe count: first firing with elapsed >= U
    assert model.keepalive_detect_time(2, 1, 9, 3.5, wheel=False) == 4.0
    # ... but at least one probe must be out: never before idle + intvl
    assert model.keepalive_detect_time(10, 5, 9, 1.0, wheel=False) == 15.0
    assert model.keepalive_detect_time(7200, 75, 9, wheel=False) == 7875.0


def test_syn_abort_time_matches_measurements() -> None:
    # measured on this VM (tcp_syn_linear_timeouts=4): 1 -> 3.07, 2 -> 7.15, 3 -> 19.57,
    # 6 -> 133.41 s
    for retries, measured in ((1, 3.07), (2, 7.15), (3, 19.57), (6, 133.41)):
        assert model.syn_abort_time(retries) == pytest.approx(measured, rel=0.05)


def test_default_rto_is_the_measured_one() -> None:
    assert pytest.approx(0.204) == model.DEFAULT_RTO_S


# --- predict() -------------------------------------------------------------------------------

R3 = {"tcp_retries2": 3}
KA = {"tcp_keepalive_time": 2, "tcp_keepalive_intvl": 1, "tcp_keepalive_probes": 3}

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
    ("hang: keepalive answered until the LB fails over (1e6 s)",
     trial(KA, fault={"kind": "hang", "failover_after_s": 1e6}), "keepalive", 1e6),
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
    p = model.predict(settings)
    assert p.mechanism == mechanism, p.detail
    if outage is None:
        assert p.outage_s is None, p.detail
    else:
        assert p.outage_s == pytest.approx(outage, abs=max(0.02 * outage, 0.03)), p.detail
    assert "\n" not in p.detail


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


def test_keepalive_default_follows_the_driver() -> None:
    """so_keepalive=None: PyMySQL and libmariadb switch SO_KEEPALIVE on, http.client does not,
    so short netns keepalive sysctls only rescue the database drivers' idle connections."""
    ka = {"tcp_keepalive_time": 1, "tcp_keepalive_intvl": 1, "tcp_keepalive_probes": 1}
    oltp = model.predict(trial(ka, load={"shape": "idle"}))
    http = model.predict(TrialSettings(
        backend="nginx", client=ClientSettings(**ka),
        load=LoadSettings(shape="idle", driver="http"),
    ))
    assert (oltp.mechanism, http.mechanism) == ("keepalive", "retries2")


def test_sysbench_reconnect_waits_for_the_syn_retries() -> None:
    # sysbench sets no connect timeout: a reconnect into the crashed backend takes the whole
    # SYN retry budget (6 -> ~133 s), not PyMySQL's 10 s connect_timeout
    t = TrialSettings(client=ClientSettings(tcp_retries2=3), load=LoadSettings(driver="sysbench"),
                      fault=FaultSettings(kind="crash", failover_after_s=20))
    p = model.predict(t)
    assert p.outage_s == pytest.approx(
        model.rto_abort_time(3) + model.syn_abort_time(6) + 0.001 + 0.05)


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
    test_predict(settings, mechanism, outage)


# --- properties ------------------------------------------------------------------------------

rtos = st.floats(min_value=0.2, max_value=1.0)


@settings(max_examples=60, deadline=None)
@given(rto=rtos, n=st.integers(min_value=1, max_value=20), more=st.integers(1, 5))
def test_more_retries_never_abort_sooner(rto: float, n: int, more: int) -> None:
    assert model.rto_abort_time(n + more, rto) >= model.rto_abort_time(n, rto)
    # and never before the model budget, counted from the first RTO retransmission
    plan = model.retransmit_plan(rto, retries2=n)
    assert plan.abort_s - plan.deadline_from_s >= model.tcp_model_timeout(n) - 1e-6


@settings(max_examples=60, deadline=None)
@given(rto=rtos, n=st.integers(min_value=1, max_value=20),
       frac=st.floats(min_value=0.05, max_value=1.0))
def test_user_timeout_within_the_budget_never_predicts_longer(
    rto: float, n: int, frac: float
) -> None:
    """A user timeout <= tcp_model_timeout(retries2) never makes a blackhole last longer.
    (A *larger* one does: it replaces retries2, see test_user_timeout_replaces_retries2.)"""
    u = round(frac * model.tcp_model_timeout(n), 3)
    assert model.rto_abort_time(n, rto, user_timeout_s=u) <= model.rto_abort_time(n, rto) + 1e-9
    assert model.rto_abort_time(n, rto, user_timeout_s=u) >= u


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 15), more=st.integers(1, 5),
       uto=st.one_of(st.none(), st.integers(500, 60_000)))
def test_predict_blackhole_monotone_in_retries2(n: int, more: int, uto: int | None) -> None:
    a = model.predict(trial({"tcp_retries2": n, "tcp_user_timeout_ms": uto}))
    b = model.predict(trial({"tcp_retries2": n + more, "tcp_user_timeout_ms": uto}))
    assert a.outage_s is not None and b.outage_s is not None
    assert b.outage_s >= a.outage_s


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
    assert model.RECONNECT_PAUSE_S == oltp.RECONNECT_PAUSE_S


def test_rearmed_syn_timers_fire_on_known_buckets() -> None:
    # 250 jiffies from a level-1 bucket fire 256 later: tcp_syn_retries=1 aborts at
    # 1.018 (first, average) + 2 * 1.024 s; measured 3.071-3.076 s, back to back
    assert model.syn_abort_time(1) == pytest.approx(3.066)
    assert model.syn_abort_time(1, wheel=False) == pytest.approx(3.0)
