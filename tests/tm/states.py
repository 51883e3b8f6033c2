"""Hypothesis strategies for random traffic-manager states (exact fractions throughout)."""

from __future__ import annotations

from fractions import Fraction
from itertools import combinations

from hypothesis import strategies as st

from lab.tm.model import Plan, Shift, Site, State, Thresholds


@st.composite
def thresholds(draw: st.DrawFn) -> Thresholds:
    acceptable = draw(st.integers(20, 70))
    target = draw(st.integers(acceptable, 85))
    top = draw(st.integers(target + 1, 98))
    return Thresholds(Fraction(top, 100), Fraction(target, 100), Fraction(acceptable, 100))


@st.composite
def sites(draw: st.DrawFn, name: str) -> Site:
    cpu = {p: Fraction(draw(st.integers(0, 5000))) for p in Plan}
    if not any(cpu.values()):
        cpu[Plan.FREE] = Fraction(1)
    return Site(name, Fraction(draw(st.integers(1, 100)), 100), cpu, draw(thresholds()))


@st.composite
def states(draw: st.DrawFn, with_shifts: bool = False) -> State:
    """2-6 sites with random load and latencies; optionally active shifts.

    Active shifts only go from a set of sources to a disjoint set of destinations, so that
    what a source takes back depends on its own spare alone.
    """
    n = draw(st.integers(2, 6))
    names = [f"s{i}" for i in range(n)]
    by_name = {name: draw(sites(name)) for name in names}
    latency = {
        frozenset(pair): Fraction(draw(st.integers(1, 200))) for pair in combinations(names, 2)
    }
    shifts: list[Shift] = []
    if with_shifts:
        sources = draw(st.lists(st.sampled_from(names), unique=True, max_size=n - 1))
        destinations = [x for x in names if x not in sources]
        for source in sources:
            for p in Plan:
                if by_name[source].own(p) == 0:
                    continue
                left = 100
                for destination in draw(
                    st.lists(st.sampled_from(destinations), unique=True, max_size=2)
                ):
                    share = draw(st.integers(0, left))
                    if share:
                        shifts.append(Shift(source, p, destination, Fraction(share, 100)))
                        left -= share
    return State(by_name, latency, tuple(sorted(shifts)))
