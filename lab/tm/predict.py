"""Failover predictor: where would a site's traffic go if it vanished, and would it fit?

For every site, and every pair of nearby sites (a correlated second failure), the traffic the
withdrawn sites serve now is placed the way the traffic manager places shifted traffic:
highest plan first into the nearest surviving sites. Here each survivor is filled up to its
*max* threshold rather than its acceptable one, because the question is whether the loss can
be absorbed at all without pushing anyone over max. Traffic that fits nowhere is the
thundering-herd risk: it would land on sites that then shed load themselves.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from itertools import combinations

from lab.tm.model import Plan, State
from lab.tm.shift import ZERO, place


@dataclass(frozen=True)
class Outcome:
    withdrawn: tuple[str, ...]
    traffic_ms: Fraction  # what the withdrawn sites serve now
    placements: tuple[tuple[str, Plan, str, Fraction], ...]  # (withdrawn, plan, to, ms/s)
    unabsorbed_ms: Fraction
    utilisation: Mapping[str, Fraction]  # of every receiving site afterwards

    @property
    def at_risk(self) -> bool:
        return self.unabsorbed_ms > 0

    def received(self) -> dict[str, Fraction]:
        """ms/s each receiving site takes, nearest first as placed."""
        out: dict[str, Fraction] = {}
        for _, _, to, ms in self.placements:
            out[to] = out.get(to, ZERO) + ms
        return out


def withdraw(state: State, names: Sequence[str]) -> Outcome:
    """Place the traffic of `names` on the other sites, each up to its max threshold."""
    load = {n: state.served(n) for n in state.sites}
    cap = {n: state.capacity(n) for n in state.sites}
    gone = sorted(names, key=lambda n: (-load[n], n))  # the bigger loss is placed first
    placements: list[tuple[str, Plan, str, Fraction]] = []
    unabsorbed = ZERO
    for name in gone:
        survivors = []
        for other, site in state.sites.items():
            headroom = cap[other] * site.thresholds.max - load[other]
            if other not in names and headroom > 0:
                survivors.append((other, headroom))
        survivors.sort(key=lambda c: (state.latency_ms(name, c[0]), c[0]))
        traffic = state.served_by_plan(name)
        placed = place(traffic, survivors)
        for p, to, ms in placed:
            load[to] += ms
            placements.append((name, p, to, ms))
        unabsorbed += sum(traffic.values(), ZERO) - sum((ms for _, _, ms in placed), ZERO)
    receivers = {to for _, _, to, _ in placements}
    return Outcome(
        withdrawn=tuple(sorted(names)),
        traffic_ms=sum((state.served(n) for n in names), ZERO),
        placements=tuple(placements),
        unabsorbed_ms=unabsorbed,
        utilisation={to: load[to] / cap[to] for to in sorted(receivers)},
    )


def predict(state: State, nearby_ms: Fraction | None = None) -> list[Outcome]:
    """Every single site, then every pair at most `nearby_ms` apart (all pairs if None)."""
    names = sorted(state.sites)
    out = [withdraw(state, [n]) for n in names]
    for a, b in combinations(names, 2):
        if nearby_ms is None or state.latency_ms(a, b) <= nearby_ms:
            out.append(withdraw(state, [a, b]))
    return out
