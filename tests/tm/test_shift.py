"""The control step: the issue's two worked examples exactly, then the rules as properties."""

from __future__ import annotations

from dataclasses import replace
from fractions import Fraction as F
from pathlib import Path

from hypothesis import given, settings

from lab.tm import model, shift
from lab.tm.model import Plan, Shift, Site, State, Thresholds

from .states import states

SCENARIOS = Path(__file__).resolve().parents[2] / "scenarios" / "tm"
DEFAULT = Thresholds(F("0.9"), F("0.85"), F("0.65"))


def site(name: str, utilisation: str, cpu: dict[Plan, int], th: Thresholds = DEFAULT) -> Site:
    return Site(name, F(utilisation), {p: F(v) for p, v in cpu.items()}, th)


def even(total: int) -> dict[Plan, int]:
    return {p: total // 4 for p in Plan}


def latencies(pairs: dict[str, int]) -> dict[frozenset[str], F]:
    return {frozenset(k.split("-")): F(v) for k, v in pairs.items()}


def table(decision: shift.Decision) -> dict[tuple[str, Plan, str], F]:
    return {(s.source, s.plan, s.destination): s.fraction for s in decision.shifts}


# --- the issue's examples, exactly ---------------------------------------------------------------


def test_18000_at_090_towards_085_shifts_exactly_1000() -> None:
    assert shift.amount_to_shift(F(18000), F("0.90"), F("0.85")) == 1000
    hot = site("hot", "0.9", even(18000), Thresholds(F("0.88"), F("0.85"), F("0.65")))
    cold = site("cold", "0.1", even(1000))
    state = State({"hot": hot, "cold": cold}, latencies({"hot-cold": 10}))
    decision = shift.plan(state)
    moved = sum(s.fraction * hot.own(s.plan) for s in decision.shifts)
    assert moved == 1000
    assert decision.utilisation["hot"] == F("0.85")
    assert "shift 1000 of 18000 ms/s" in decision.reasons[0]


def test_worked_example_selection_and_spare() -> None:
    plans = {Plan.FREE: F(500), Plan.PRO: F(400), Plan.BUSINESS: F(200), Plan.ENTERPRISE: F(1000)}
    assert shift.select(plans, F(1000)) == {Plan.FREE: 500, Plan.PRO: 400, Plan.BUSINESS: 100}
    assert shift.spare(F(1000), F("0.5"), F("0.65")) == 300
    assert shift.spare(F(1000), F("0.325"), F("0.65")) == 1000
    assert shift.spare(F(1000), F("0.7"), F("0.65")) == 0


def test_worked_example_placement() -> None:
    selected = {Plan.FREE: F(500), Plan.PRO: F(400), Plan.BUSINESS: F(100)}
    placed = shift.place(selected, [("B", F(300)), ("C", F(300)), ("D", F(1000))])
    assert placed == [
        (Plan.BUSINESS, "B", F(100)),
        (Plan.PRO, "B", F(200)),
        (Plan.PRO, "C", F(200)),
        (Plan.FREE, "C", F(100)),
        (Plan.FREE, "D", F(400)),
    ]


def test_worked_example_file_gives_the_issue_result() -> None:
    decision = shift.plan(model.load(SCENARIOS / "worked-example.toml"))
    assert table(decision) == {
        ("A", Plan.BUSINESS, "B"): F(1, 2),
        ("A", Plan.PRO, "B"): F(1, 2),
        ("A", Plan.PRO, "C"): F(1, 2),
        ("A", Plan.FREE, "C"): F(1, 5),
        ("A", Plan.FREE, "D"): F(4, 5),
    }
    assert decision.utilisation == {"A": F("0.44"), "B": F("0.65"), "C": F("0.65"), "D": F("0.455")}
    assert any("business 50% (100 ms/s) -> B" in r for r in decision.reasons)


def test_weights_map_the_table_onto_lb_weights() -> None:
    decision = shift.plan(model.load(SCENARIOS / "worked-example.toml"))
    assert shift.weights(decision.shifts, "A", Plan.FREE) == {"A": 0, "C": F(1, 5), "D": F(4, 5)}
    assert shift.weights(decision.shifts, "A", Plan.BUSINESS) == {"A": F(1, 2), "B": F(1, 2)}
    assert shift.weights(decision.shifts, "A", Plan.ENTERPRISE) == {"A": 1}


# --- reverting --------------------------------------------------------------------------------


def test_four_sites_reverts_first_then_sheds() -> None:
    decision = shift.plan(model.load(SCENARIOS / "four-sites.json"))
    # fra has 1200 ms/s spare: all of business (1000) back from ams, then 200 of pro from cdg
    assert table(decision) == {
        ("fra", Plan.PRO, "cdg"): F(2, 5),
        ("lhr", Plan.PRO, "ams"): F(4, 5),
        ("lhr", Plan.FREE, "ams"): F(1, 6),
        ("lhr", Plan.FREE, "cdg"): F(5, 6),
    }
    assert decision.reasons[0].startswith("fra: utilisation 0.5 < acceptable 0.6")
    assert decision.utilisation["lhr"] == F("0.8")


def _reverting_state(out_fraction: str) -> State:
    """R (nearest to S) has shifted some free traffic to far-away X; S is over max."""
    r = site("R", "0.2", {Plan.FREE: 1000, Plan.PRO: 1000})
    s = site("S", "0.95", even(4000))
    x = site("X", "0.5", even(1000))
    lat = latencies({"R-S": 5, "S-X": 50, "R-X": 60})
    shifts = (Shift("R", Plan.FREE, "X", F(out_fraction)),)
    return State({"R": r, "S": s, "X": x}, lat, shifts)


def test_a_site_takes_its_own_traffic_back_before_accepting() -> None:
    # R serves 1500 at 0.2 -> capacity 7500, spare 7500 * 0.65 - 1500 = 3375 > 500 out
    decision = shift.plan(_reverting_state("0.5"))
    new = table(decision)
    assert ("R", Plan.FREE, "X") not in new  # all taken back
    assert any(k[0] == "S" and k[2] == "R" for k in new)  # then it accepts S's traffic
    assert decision.reasons[1] == "R: takes back free 50% (500 ms/s) from X"


def test_a_site_still_shifting_out_accepts_nothing() -> None:
    state = _reverting_state("0.5")
    # R serves 1500 at 0.6 -> capacity 2500, spare 2500 * 0.65 - 1500 = 125 < 500 out
    busier = replace(state.sites["R"], utilisation=F("0.6"))
    state = replace(state, sites={**state.sites, "R": busier})
    decision = shift.plan(state)
    new = table(decision)
    assert new[("R", Plan.FREE, "X")] == F("0.375")  # 125 of its 500 back ...
    assert not any(k[0] == "S" and k[2] == "R" for k in new)  # ... so S skips R


def test_hysteresis_keeps_shifts_between_acceptable_and_max() -> None:
    state = _reverting_state("0.5")
    warm = replace(state.sites["R"], utilisation=F("0.8"))
    calm = replace(state.sites["S"], utilisation=F("0.7"))
    decision = shift.plan(replace(state, sites={**state.sites, "R": warm, "S": calm}))
    assert table(decision) == {("R", Plan.FREE, "X"): F("0.5")}
    assert decision.reasons == (
        "R: keeps 1 shift(s): utilisation 0.8 is not below acceptable 0.65",
    )


def test_nothing_to_do_says_so() -> None:
    a, b = site("a", "0.7", even(100)), site("b", "0.7", even(100))
    decision = shift.plan(State({"a": a, "b": b}, latencies({"a-b": 1})))
    assert decision.shifts == ()
    assert decision.reasons == (
        "no site above its max threshold and no shifts to take back: no change",
    )


# --- limits --------------------------------------------------------------------------------------


def test_short_of_spare_shifts_the_lowest_plans_only() -> None:
    hot = site("hot", "0.9", even(18000), Thresholds(F("0.88"), F("0.85"), F("0.65")))
    small = site("small", "0.6", even(1200))  # spare 1200 * 0.65 / 0.6 - 1200 = 100
    state = State({"hot": hot, "small": small}, latencies({"hot-small": 3}))
    decision = shift.plan(state)
    assert table(decision) == {("hot", Plan.FREE, "small"): F(100, 4500)}
    assert any("can shift only 100 ms/s" in r and "small 100" in r for r in decision.reasons)


def test_short_of_own_traffic_shifts_all_of_it() -> None:
    # "hot" serves mostly what "src" shifted to it; its own traffic is only 100 ms/s
    src = site("src", "0.7", {Plan.FREE: 1000})
    hot = site("hot", "0.99", {Plan.PRO: 100})
    cold = site("cold", "0.1", even(1000))
    lat = latencies({"src-hot": 5, "src-cold": 9, "hot-cold": 7})
    shifts = (Shift("src", Plan.FREE, "hot", F(1)),)
    decision = shift.plan(State({"src": src, "hot": hot, "cold": cold}, lat, shifts))
    assert table(decision)[("hot", Plan.PRO, "cold")] == 1
    assert any("all of its own traffic not yet shifted" in r for r in decision.reasons)


def test_plan_is_deterministic_and_order_free() -> None:
    state = model.load(SCENARIOS / "four-sites.json")
    shuffled = replace(state, sites=dict(reversed(list(state.sites.items()))))
    assert shift.plan(state) == shift.plan(state) == shift.plan(shuffled)


# --- properties -------------------------------------------------------------------------------


def _start(state: State) -> tuple[dict[str, F], dict[str, F]]:
    """(need, spare) per site from the rule formulas on the measured state."""
    need, spare = {}, {}
    for name, s in state.sites.items():
        total = state.served(name)
        need[name] = shift.amount_to_shift(total, s.utilisation, s.thresholds.target)
        spare[name] = shift.spare(total, s.utilisation, s.thresholds.acceptable)
    return need, spare


def _moved(state: State, decision: shift.Decision) -> dict[tuple[str, Plan, str], F]:
    """ms/s newly moved per (source, plan, destination) by this step."""
    before = {(s.source, s.plan, s.destination): s.fraction for s in state.shifts}
    after = table(decision)
    out = {}
    for key in before.keys() | after.keys():
        delta = after.get(key, F(0)) - before.get(key, F(0))
        if delta:
            out[key] = delta * state.sites[key[0]].own(key[1])
    return out


@settings(max_examples=300, deadline=None)
@given(states())
def test_property_amounts_within_need_and_spare(state: State) -> None:
    decision = shift.plan(state)
    need, spare = _start(state)
    moved = _moved(state, decision)
    overloaded = {n for n, s in state.sites.items() if s.utilisation > s.thresholds.max}
    candidates = {n for n, s in state.sites.items() if s.utilisation < s.thresholds.acceptable}
    assert all(ms > 0 for ms in moved.values())
    for name in state.sites:
        out = sum((ms for (s, _, _), ms in moved.items() if s == name), F(0))
        into = sum((ms for (_, _, d), ms in moved.items() if d == name), F(0))
        assert out <= need[name]
        assert into <= spare[name]
        assert out == 0 or name in overloaded
        assert into == 0 or name in candidates
    assert sum(moved.values(), F(0)) <= sum(spare[c] for c in candidates)
    assert all(0 < fraction <= 1 for fraction in table(decision).values())
    for name in overloaded:  # work-conserving: short of need only when nothing more fits
        out = sum((ms for (s, _, _), ms in moved.items() if s == name), F(0))
        if out < need[name]:
            all_own = all(
                sum((f for (s, q, _), f in table(decision).items() if s == name and q == p), F(0))
                == 1
                for p in Plan
                if state.sites[name].own(p) > 0
            )
            full = all(
                decision.utilisation[c] >= state.sites[c].thresholds.acceptable
                for c in candidates
                if c != name
            )
            assert all_own or full


@settings(max_examples=300, deadline=None)
@given(states())
def test_property_plan_and_latency_order(state: State) -> None:
    decision = shift.plan(state)
    moved = _moved(state, decision)
    _, spare = _start(state)
    for source in {k[0] for k in moved}:
        fractions = {
            p: sum((f for (s, q, _), f in table(decision).items() if s == source and q == p), F(0))
            for p in Plan
        }
        # lowest priority first: any plan shifted means every lower plan with traffic is all out
        for p in Plan:
            if fractions[p] > 0:
                assert all(
                    fractions[q] == 1 for q in Plan if q < p and state.sites[source].own(q) > 0
                )
        # highest priority nearest: a higher plan never lands farther than a lower one
        lat = {
            p: [state.latency_ms(source, d) for (s, q, d) in moved if s == source and q == p]
            for p in Plan
        }
        for hi in Plan:
            for lo in Plan:
                if lo < hi and lat[hi] and lat[lo]:
                    assert max(lat[hi]) <= min(lat[lo])
        # nearest first: every candidate nearer than a used destination ends up full
        farthest = max(state.latency_ms(source, d) for (s, _, d) in moved if s == source)
        for c, room in spare.items():
            if room > 0 and c != source and state.latency_ms(source, c) < farthest:
                assert decision.utilisation[c] == state.sites[c].thresholds.acceptable


@settings(max_examples=300, deadline=None)
@given(states(with_shifts=True))
def test_property_reverting_before_accepting(state: State) -> None:
    decision = shift.plan(state)
    moved = _moved(state, decision)
    _, spare = _start(state)
    new = table(decision)
    for name, s in state.sites.items():
        mine = [x for x in state.shifts if x.source == name]
        still_out = any(k[0] == name for k in new)
        receives = any(d == name and ms > 0 for (_, _, d), ms in moved.items())
        assert not (still_out and receives)
        if not mine or spare[name] == 0:
            continue
        shifted_out = sum((x.fraction * s.own(x.plan) for x in mine), F(0))
        back = -sum((ms for (src, _, _), ms in moved.items() if src == name), F(0))
        assert back == min(spare[name], shifted_out)
        # highest plan first: a plan is taken back only once every higher plan is all back
        for x in mine:
            if new.get((name, x.plan, x.destination), F(0)) < x.fraction:
                assert not any(k[0] == name and k[1] > x.plan for k in new)


def test_a_site_serving_nothing_keeps_its_shifts() -> None:
    gone = site("gone", "0.05", {Plan.FREE: 100})
    other = site("other", "0.5", even(1000))
    shifts = (Shift("gone", Plan.FREE, "other", F(1)),)
    decision = shift.plan(
        State({"gone": gone, "other": other}, latencies({"gone-other": 1}), shifts)
    )
    assert decision.shifts == shifts
    assert decision.reasons == (
        "gone: keeps 1 shift(s): it serves no traffic now, so its capacity cannot be estimated",
    )
