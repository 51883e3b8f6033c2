"""The live loop's decisions, without a lab: measurements and health in, a shift table out."""

from __future__ import annotations

from fractions import Fraction as F

from lab.tm.live.manager import Manager, describe
from lab.tm.live.stats import Measured
from lab.tm.model import Plan, Thresholds

FREE, PRO, BUSINESS, ENTERPRISE = Plan
TH = Thresholds(max=F(8, 10), target=F(7, 10), acceptable=F(6, 10))
LATENCY = {frozenset("AB"): F(10), frozenset("AC"): F(30), frozenset("BC"): F(20)}


def manager(ramp: F = F(1), canary: F = F(1, 4)) -> Manager:
    return Manager({s: TH for s in "ABC"}, LATENCY, list(Plan), ramp, canary)


def m(u: str, **cpu: float) -> Measured:
    """m("0.9", A_free=20): utilisation 0.9, 20 ms/s of A's free traffic served here."""
    table = {}
    for key, ms in cpu.items():
        home, plan = key.split("_")
        table[(home, Plan.parse(plan))] = F(ms)
    return Measured(t=0.0, span_s=2.0, budget_ms_per_s=F(200), utilisation=F(u), cpu=table)


A_OVER = m("0.9", A_free=20, A_pro=30, A_business=40, A_enterprise=30)  # 120 ms/s, cap 133.3
B_HALF = m("0.5", B_free=25, B_pro=25, B_business=25, B_enterprise=25)  # 100, cap 200
C_LOW = m("0.3", C_free=15, C_pro=15, C_business=15, C_enterprise=15)  # 60, cap 200


def test_overload_sheds_free_then_pro_nearest_first() -> None:
    mgr = manager()
    out = mgr.step({"A": A_OVER, "B": B_HALF, "C": C_LOW})
    assert out.changed
    # shed 120 - 120 * 0.7 / 0.9 = 26.67 ms/s: all 20 of Free, 6.67 of Pro (2/9 of it);
    # Pro (the higher plan) goes to the nearest site B first, Free fills B's spare (20) then C
    assert out.table == {("A", PRO, "B"): F(2, 9), ("A", FREE, "B"): F(2, 3),
                         ("A", FREE, "C"): F(1, 3)}
    assert "A: utilisation 0.9 > max 0.8: shift 26.7 of 120 ms/s" in out.reasons[0]
    assert mgr.weights("A", FREE) == {"A": 0, "B": F(2, 3), "C": F(1, 3)}
    assert mgr.weights("A", ENTERPRISE) == {"A": 1, "B": 0, "C": 0}
    assert describe(out.table) == "A free -> B 66.7%, A free -> C 33.3%, A pro -> B 22.2%"


def test_a_site_without_a_valid_report_is_left_out_with_its_component() -> None:
    mgr = manager()
    out = mgr.step({"A": A_OVER, "B": B_HALF, "C": "report ignored: allowed_ms is nan"})
    assert out.reasons[0] == (
        "C: not measured (report ignored: allowed_ms is nan): left out of this step, no shift "
        "to or from it"
    )
    assert {d for _, _, d in out.table} == {"B"}  # C has spare, but nothing goes there
    # once A shares shifts with B, a missing B leaves A out too: A's table is kept as it is
    before = dict(out.table)
    out = mgr.step({"A": m("0.95", A_free=20, A_pro=30), "B": "no report for 3.0 s",
                    "C": C_LOW})
    assert out.table == before and not out.changed
    assert "A share shifts with it, left out too" in out.reasons[0]


def test_reverts_are_ramped_highest_plan_and_farthest_first() -> None:
    mgr = manager(ramp=F(1, 10))
    mgr.table = {("A", PRO, "B"): F(1, 3), ("A", FREE, "B"): F(1, 2), ("A", FREE, "C"): F(1, 2)}
    # A (own: free 20, pro 30, business 40, enterprise 30 = 120 ms/s) could take all 30 ms/s
    # back; the ramp allows 12 ms/s: Pro first (10), then Free from the farthest site (C)
    a = m("0.2", A_pro=20, A_business=40, A_enterprise=30)
    out = mgr.step({"A": a, "B": m("0.5", A_free=10, A_pro=10, B_free=80),
                    "C": m("0.3", A_free=10, C_free=50)})
    assert out.table == {("A", FREE, "B"): F(1, 2), ("A", FREE, "C"): F(2, 5)}
    assert "A: ramp: takes back at most 10% of its own traffic per step (12 of the 30 ms/s it " \
        "could), highest plan first" in out.reasons


def test_failover_places_highest_plans_nearest_and_keeps_them_while_down() -> None:
    mgr = manager()
    mgr.step({"A": m("0.6", A_free=20, A_pro=30, A_business=40, A_enterprise=30),
              "B": B_HALF, "C": C_LOW})
    mgr.table = {("B", FREE, "A"): F(1, 5)}  # B had shifted to A
    out = mgr.fail("A", "2 failed health probes")
    # B takes its Free back; A's 120 ms/s: B has 200 * 0.7 - 100 - 5 = 35 ms/s under target
    assert ("B", FREE, "A") not in out.table
    assert out.table[("A", ENTERPRISE, "B")] == 1
    assert out.table[("A", BUSINESS, "B")] == F(5, 40)
    assert out.table[("A", BUSINESS, "C")] == F(35, 40)
    for p in Plan:
        assert sum(f for (s, q, _), f in out.table.items() if s == "A" and q == p) == 1
    assert mgr.weights("A", FREE)["A"] == 0
    # while A is down the algorithm keeps its shifts; B and C are measured as usual
    out = mgr.step({"A": "no report", "B": m("0.6", B_free=25, B_pro=25, B_business=25,
                                              B_enterprise=25, A_enterprise=30, A_business=5),
                    "C": m("0.5", C_free=15, C_pro=15, C_business=15, C_enterprise=15,
                           A_free=20, A_pro=30, A_business=35)})
    assert "A: down: keeps its failover shifts" in out.reasons
    assert not out.changed


def test_recovery_starts_with_a_canary_of_low_plans() -> None:
    mgr = manager(canary=F(1, 4))
    mgr.step({"A": A_OVER, "B": B_HALF, "C": C_LOW})  # A's own: 20/30/40/30 ms/s
    mgr.fail("A", "down")
    out = mgr.recover("A", "4 probes ok")
    away = {p: sum(f for (s, q, _), f in out.table.items() if s == "A" and q == p) for p in Plan}
    # a quarter of 120 ms/s: all of Free (20) and 10 of Pro's 30 come home first
    assert away == {FREE: 0, PRO: F(2, 3), BUSINESS: 1, ENTERPRISE: 1}
    assert "canary: it takes back 25% of its own traffic (30 ms/s), lowest plan first" in \
        out.reasons[0]
    mgr.fail("A", "down")
    out = mgr.recover("A", "4 probes ok", canary=False)
    assert not any(s == "A" for s, _, _ in out.table)


def test_a_site_still_shifting_out_takes_nothing_in() -> None:
    mgr = manager(ramp=F(1, 10))
    mgr.table = {("C", FREE, "B"): F(1)}
    # C reverts (slowly), B overloads: A has little spare, so C would take the rest if its
    # revert were whole (the algorithm's working table has C shifting nothing out)
    out = mgr.step({
        "A": m("0.55", A_free=60),
        "B": m("1", B_free=60, B_pro=60, B_business=60, C_free=40),
        "C": m("0.1", C_pro=20),
    })
    assert out.table.get(("C", FREE, "B")) == F(17, 20)  # 10 % of C's 60 ms/s: 6 of Free's 40
    assert not any(d == "C" for _, _, d in out.table)
    assert any("-> C stays at 0%: C still shifts traffic out (ramp)" in r for r in out.reasons)
    assert ("B", FREE, "A") in out.table
