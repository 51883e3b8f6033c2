"""The kernel's TCP timers (lab.model.kernel) against Linux's rules and the lab's measurements.

Reference numbers: tcp_model_timeout from net/ipv4/tcp_timer.c and ip-sysctl.rst (924.6 s);
measured outages from pymysql through the nft LB on this project's hosts and from
tests/model/test_kernel.py (HZ=250, tcpi_rto 204 ms).
"""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lab import model


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


def test_syn_abort_time_matches_measurements() -> None:
    # measured on this VM (tcp_syn_linear_timeouts=4): 1 -> 3.07, 2 -> 7.15, 3 -> 19.57,
    # 6 -> 133.41 s
    for retries, measured in ((1, 3.07), (2, 7.15), (3, 19.57), (6, 133.41)):
        assert model.syn_abort_time(retries) == pytest.approx(measured, rel=0.05)


def test_rearmed_syn_timers_fire_on_known_buckets() -> None:
    # 250 jiffies from a level-1 bucket fire 256 later: tcp_syn_retries=1 aborts at
    # 1.018 (first, average) + 2 * 1.024 s; measured 3.071-3.076 s, back to back
    assert model.syn_abort_time(1) == pytest.approx(3.066)
    assert model.syn_abort_time(1, wheel=False) == pytest.approx(3.0)


def test_default_rto_is_the_measured_one() -> None:
    assert pytest.approx(0.204) == model.DEFAULT_RTO_S


# --- properties -----------------------------------------------------------------------------


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
