"""The failover predictor: where a lost site's traffic lands and whether it fits under max."""

from __future__ import annotations

from fractions import Fraction as F
from pathlib import Path

from hypothesis import given, settings

from lab.tm import model, predict
from lab.tm.model import Plan, State

from .states import states

SCENARIOS = Path(__file__).resolve().parents[2] / "scenarios" / "tm"


def worked() -> State:
    return model.load(SCENARIOS / "worked-example.toml")


def test_losing_a_fills_the_nearest_sites_to_max_highest_plan_first() -> None:
    outcome = predict.withdraw(worked(), ["A"])
    # B and C (capacity 2000, serving 1000) each take 2000 * 0.9 - 1000 = 800 ms/s
    assert outcome.placements == (
        ("A", Plan.ENTERPRISE, "B", F(800)),
        ("A", Plan.ENTERPRISE, "C", F(200)),
        ("A", Plan.BUSINESS, "C", F(200)),
        ("A", Plan.PRO, "C", F(400)),
        ("A", Plan.FREE, "D", F(500)),
    )
    assert outcome.received() == {"B": 800, "C": 800, "D": 500}
    assert outcome.utilisation == {"B": F("0.9"), "C": F("0.9"), "D": F(1500 * 13, 40000)}
    assert outcome.traffic_ms == 2100 and outcome.unabsorbed_ms == 0 and not outcome.at_risk


def test_losing_b_and_c_is_a_thundering_herd() -> None:
    outcome = predict.withdraw(worked(), ["C", "B"])
    # only D survives near them: capacity 1000 / 0.325, headroom to 0.9 is 23000/13 ms/s
    assert outcome.withdrawn == ("B", "C")
    assert outcome.received() == {"D": F(23000, 13)}
    assert outcome.unabsorbed_ms == 2000 - F(23000, 13)
    assert outcome.at_risk


def test_predict_lists_every_site_then_nearby_pairs() -> None:
    everything = predict.predict(worked())
    assert [o.withdrawn for o in everything][:4] == [("A",), ("B",), ("C",), ("D",)]
    assert len(everything) == 4 + 6
    nearby = predict.predict(worked(), nearby_ms=F(100))
    assert [o.withdrawn for o in nearby][4:] == [("A", "B"), ("B", "C"), ("B", "D"), ("C", "D")]
    assert [o.withdrawn for o in nearby if o.at_risk] == [
        ("A", "B"),
        ("B", "C"),
        ("B", "D"),
        ("C", "D"),
    ]


def test_withdrawn_site_takes_what_others_shifted_to_it() -> None:
    state = model.load(SCENARIOS / "four-sites.json")
    outcome = predict.withdraw(state, ["ams"])
    assert outcome.traffic_ms == 6000  # its own 5000 + fra's business 1000
    assert sum(ms for _, p, _, ms in outcome.placements if p == Plan.BUSINESS) == 2000


@settings(max_examples=200, deadline=None)
@given(states(with_shifts=True))
def test_property_survivors_stay_under_max(state: State) -> None:
    for outcome in predict.predict(state):
        placed = sum((ms for *_, ms in outcome.placements), F(0))
        assert placed + outcome.unabsorbed_ms == outcome.traffic_ms
        assert outcome.at_risk == (outcome.unabsorbed_ms > 0)
        for to, u in outcome.utilisation.items():
            assert to not in outcome.withdrawn
            assert u <= state.sites[to].thresholds.max
