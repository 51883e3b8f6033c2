"""One control step of the traffic manager: take own traffic back, then shed overload.

The rules, all in exact fractions:

* A site above its max threshold sheds `amount_to_shift` so its load falls to its target
  (load scales linearly with utilisation).
* It sheds the lowest-priority plans first (all of Free, then Pro, ...); the last in part.
* Candidates are sites below acceptable that shift nothing out; each offers `spare`. They are
  filled nearest first, with the shed plans placed highest priority first, so the most
  valuable traffic lands nearest.
* Before anything else, a site with active shifts and spare capacity takes its own traffic
  back, highest priority first; only once all of it is back may it accept other sites'.

Shifts are fractions of each plan's own traffic at the source, so `weights` turns the table
straight into per-plan load-balancer weights.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction

from lab.tm.model import (
    PLANS_HIGH_FIRST,
    PLANS_LOW_FIRST,
    Plan,
    Shift,
    State,
    fmt_ms,
    fmt_pct,
    fmt_u,
)

ZERO = Fraction(0)

Key = tuple[str, Plan, str]  # (source, plan, destination)


@dataclass(frozen=True)
class Decision:
    """The outcome of one step: the complete new shift table and why it changed."""

    shifts: tuple[Shift, ...]
    reasons: tuple[str, ...]
    utilisation: Mapping[str, Fraction]  # projected per site once the new table applies


def amount_to_shift(total: Fraction, utilisation: Fraction, target: Fraction) -> Fraction:
    """CPU time to move so that utilisation falls to target (0.9, 0.85, 18000 -> 1000)."""
    return max(ZERO, total - total * target / utilisation)


def spare(total: Fraction, utilisation: Fraction, acceptable: Fraction) -> Fraction:
    """CPU time a site can take before it reaches its acceptable threshold."""
    return max(ZERO, total * acceptable / utilisation - total)


def select(available: Mapping[Plan, Fraction], amount: Fraction) -> dict[Plan, Fraction]:
    """Take `amount` from the lowest-priority plans up; the last plan taken in part."""
    out: dict[Plan, Fraction] = {}
    left = amount
    for p in PLANS_LOW_FIRST:
        take = min(available.get(p, ZERO), left)
        if take > 0:
            out[p] = take
            left -= take
    return out


def place(
    selected: Mapping[Plan, Fraction], candidates: Sequence[tuple[str, Fraction]]
) -> list[tuple[Plan, str, Fraction]]:
    """Fill `candidates` (nearest first, each with its spare) with the highest plan first.

    Returns (plan, destination, ms/s) in placement order; what does not fit is left out.
    """
    names = [name for name, _ in candidates]
    room = [spare_ms for _, spare_ms in candidates]
    out: list[tuple[Plan, str, Fraction]] = []
    i = 0
    for p in PLANS_HIGH_FIRST:
        left = selected.get(p, ZERO)
        while left > 0 and i < len(names):
            put = min(left, room[i])
            if put > 0:
                out.append((p, names[i], put))
                left -= put
                room[i] -= put
            if room[i] <= 0:
                i += 1
    return out


def weights(shifts: Iterable[Shift], source: str, p: Plan) -> dict[str, Fraction]:
    """Per-destination weights (summing to 1) for `p`'s traffic arriving at `source`."""
    out = {source: Fraction(1)}
    for s in shifts:
        if s.source == source and s.plan == p:
            out[s.destination] = out.get(s.destination, ZERO) + s.fraction
            out[source] -= s.fraction
    return out


class _Step:
    """Working copy of loads and the shift table while one decision is made."""

    def __init__(self, state: State) -> None:
        self.state = state
        self.load = {name: state.served(name) for name in state.sites}
        self.cap = {name: state.capacity(name) for name in state.sites}
        self.table: dict[Key, Fraction] = {
            (s.source, s.plan, s.destination): s.fraction for s in state.shifts
        }
        self.reasons: list[str] = []

    def utilisation(self, name: str) -> Fraction:
        if self.cap[name] == 0:  # carries no traffic: nothing to scale, keep the measurement
            return self.state.sites[name].utilisation
        return self.load[name] / self.cap[name]

    def room(self, name: str, threshold: Fraction) -> Fraction:
        """CPU time until `threshold` (negative above it): spare when threshold = acceptable."""
        return self.cap[name] * threshold - self.load[name]

    def outgoing(self, name: str) -> list[Key]:
        return [key for key in self.table if key[0] == name]

    def move(self, key: Key, ms: Fraction) -> None:
        """Serve `ms` more of the keyed traffic at its destination (negative: back at source)."""
        source, p, destination = key
        fraction = self.table.get(key, ZERO) + ms / self.state.sites[source].own(p)
        if fraction == 0:
            self.table.pop(key, None)
        else:
            self.table[key] = fraction
        self.load[source] -= ms
        self.load[destination] += ms

    def revert(self, name: str) -> None:
        site = self.state.sites[name]
        keys = self.outgoing(name)
        acceptable = site.thresholds.acceptable
        u = self.utilisation(name)
        budget = self.room(name, acceptable)
        if self.cap[name] == 0:
            self.reasons.append(
                f"{name}: keeps {len(keys)} shift(s): it serves no traffic now, so its capacity "
                "cannot be estimated"
            )
            return
        if budget <= 0:
            if u <= site.thresholds.max:
                self.reasons.append(
                    f"{name}: keeps {len(keys)} shift(s): utilisation {fmt_u(u)} is not below "
                    f"acceptable {fmt_u(acceptable)}"
                )
            return
        out_ms = sum((self.table[k] * site.own(k[1]) for k in keys), ZERO)
        self.reasons.append(
            f"{name}: utilisation {fmt_u(u)} < acceptable {fmt_u(acceptable)}: spare "
            f"{fmt_ms(budget)} ms/s goes first to its own {fmt_ms(out_ms)} ms/s shifted out"
        )
        # highest plan first; within a plan the farthest destination first (worst latency)
        keys.sort(key=lambda k: (-k[1], -self.state.latency_ms(name, k[2]), k[2]))
        for key in keys:
            own = site.own(key[1])
            if own == 0:
                del self.table[key]
                self.reasons.append(
                    f"{name}: drops its {key[1].label} shift to {key[2]}: "
                    "the plan carries no traffic"
                )
                continue
            take = min(self.table[key] * own, budget)
            if take <= 0:
                break
            self.move(key, -take)
            budget -= take
            self.reasons.append(
                f"{name}: takes back {key[1].label} {fmt_pct(take / own)} ({fmt_ms(take)} ms/s) "
                f"from {key[2]}"
            )

    def candidates(self, source: str) -> list[tuple[str, Fraction]]:
        """Sites below acceptable that shift nothing out, nearest to `source` first."""
        out = []
        for name, site in self.state.sites.items():
            if name == source or self.outgoing(name):
                continue
            room = self.room(name, site.thresholds.acceptable)
            if room > 0:
                out.append((name, room))
        out.sort(key=lambda c: (self.state.latency_ms(source, c[0]), c[0]))
        return out

    def shed(self, name: str) -> None:
        site = self.state.sites[name]
        th = site.thresholds
        if self.cap[name] == 0:
            self.reasons.append(
                f"{name}: utilisation {fmt_u(site.utilisation)} > max "
                f"{fmt_u(th.max)} but it serves no traffic: nothing to shift"
            )
            return
        total, u = self.load[name], self.utilisation(name)
        need = amount_to_shift(total, u, th.target)
        self.reasons.append(
            f"{name}: utilisation {fmt_u(u)} > max {fmt_u(th.max)}: shift {fmt_ms(need)} of "
            f"{fmt_ms(total)} ms/s to reach target {fmt_u(th.target)} "
            f"({fmt_ms(total - need)} ms/s)"
        )
        shifted = {p: ZERO for p in Plan}
        for key in self.outgoing(name):
            shifted[key[1]] += self.table[key]
        available = {p: site.own(p) * (1 - shifted[p]) for p in Plan}
        own_left = sum(available.values(), ZERO)
        candidates = self.candidates(name)
        total_spare = sum((room for _, room in candidates), ZERO)
        amount = min(need, own_left, total_spare)
        if amount < need and own_left <= total_spare:
            self.reasons.append(
                f"{name}: can shift only {fmt_ms(amount)} ms/s: that is all "
                "of its own traffic not yet shifted"
            )
        elif amount < need:
            where = ", ".join(f"{c} {fmt_ms(r)}" for c, r in candidates) or "none"
            self.reasons.append(
                f"{name}: can shift only {fmt_ms(amount)} ms/s: the spare of the sites below "
                f"acceptable that shift nothing out ({where})"
            )
        for p, destination, ms in place(select(available, amount), candidates):
            room = self.room(destination, self.state.sites[destination].thresholds.acceptable)
            self.move((name, p, destination), ms)
            self.reasons.append(
                f"{name}: {p.label} {fmt_pct(ms / site.own(p))} ({fmt_ms(ms)} ms/s) -> "
                f"{destination} ({fmt_ms(self.state.latency_ms(name, destination))} ms away, "
                f"spare {fmt_ms(room)} ms/s)"
            )


def plan(state: State) -> Decision:
    """One deterministic control step: reverts first, then the overloaded sites, worst first."""
    step = _Step(state)
    for name in sorted(state.sites):
        if step.outgoing(name):
            step.revert(name)
    overloaded = [
        name for name, site in state.sites.items() if step.utilisation(name) > site.thresholds.max
    ]
    overloaded.sort(key=lambda n: (-step.utilisation(n), n))
    for name in overloaded:
        step.shed(name)
    if not step.reasons:
        step.reasons.append("no site above its max threshold and no shifts to take back: no change")
    shifts = tuple(sorted(Shift(s, p, d, f) for (s, p, d), f in step.table.items()))
    projected = {name: step.utilisation(name) for name in sorted(state.sites)}
    return Decision(shifts, tuple(step.reasons), projected)
