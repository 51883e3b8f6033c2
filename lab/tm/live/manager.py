"""The live loop's decisions: measurements and health in, a new shift table and its reasons out.

Pure and deterministic (no clock, no network), so every rule here is tested without a lab.

* `step` builds a lab.tm.model.State from the sites' measurements and runs lab.tm.shift.plan
  (reverts first, then the overloaded sites). Two rules wrap it:
  - a site without a valid report is left out, together with every site it shares shifts
    with (its connected component in the shift graph): the measured sites' own traffic is
    then measured completely, nothing is shifted on missing data, and the left-out sites
    keep their shifts untouched;
  - taking traffic back is limited to `ramp` of the site's own traffic per step, spent in the
    algorithm's order (highest plan first), so a recovered site gets its traffic back
    gradually and its most valuable traffic first; a site still shifting out accepts no new
    traffic.
* `fail` withdraws a site that failed its health checks: shifts into it are dropped, and its
  own traffic that it still served (the busiest of its last few measurements: the window
  that saw it die is partly empty) is placed like lab.tm.predict places a withdrawn site's:
  highest plan first into the nearest survivors, each up to its target (predict fills to max
  to ask whether the loss fits at all; filled to max, a survivor would shed again at the next
  step's noise); what fits nowhere goes to the nearest survivor (it must go somewhere). In
  the State a down site shifts out all of its traffic, so the algorithm keeps those shifts
  ("serves no traffic").
* `recover` puts a healthy-again site back with a canary: it takes back `canary` of its own
  traffic, lowest plan first (if it is not really well, Free traffic finds out), so its
  capacity can be measured; the ramped reverts of the next steps bring the rest back.
"""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction

from lab.tm.live.stats import Measured
from lab.tm.model import Plan, Shift, Site, State, Thresholds, fmt_ms, fmt_pct, fmt_u
from lab.tm.shift import ZERO, place, plan, weights

Key = tuple[str, Plan, str]  # (source, plan, destination)
MIN_UTILISATION = Fraction(1, 1000)  # an idle site: the model divides by utilisation
OWN_HISTORY = 5  # steps of own traffic kept; a failed site's traffic is sized by the busiest


@dataclass
class Outcome:
    """One decision: the complete new table, whether it changed, and why."""

    table: dict[Key, Fraction]
    reasons: list[str] = field(default_factory=list)
    changed: bool = False


def describe(table: Mapping[Key, Fraction]) -> str:
    """'A free -> B 100%, A pro -> C 28.6%' (or 'none')."""
    keys = sorted(table, key=lambda k: (k[0], k[1], k[2]))
    return ", ".join(f"{s} {p.label} -> {d} {fmt_pct(table[(s, p, d)])}" for s, p, d in keys) or (
        "none"
    )


class Manager:
    def __init__(
        self,
        thresholds: Mapping[str, Thresholds],
        latency: Mapping[frozenset[str], Fraction],
        plans: Sequence[Plan],
        ramp: Fraction,
        canary: Fraction,
    ) -> None:
        self.sites = sorted(thresholds)
        self.thresholds = dict(thresholds)
        self.latency = dict(latency)
        self.plans = tuple(plans)
        self.ramp = ramp
        self.canary = canary
        self.table: dict[Key, Fraction] = {}
        self.down: set[str] = set()
        self.own: dict[str, dict[Plan, Fraction]] = {}  # last measured own traffic per site
        # the last few measurements: a site that just died has part of its window empty
        self.own_history: dict[str, deque[dict[Plan, Fraction]]] = defaultdict(
            lambda: deque(maxlen=OWN_HISTORY)
        )
        self.load: dict[str, Fraction] = {}  # last modelled load and capacity per site
        self.capacity: dict[str, Fraction] = {}

    # --- helpers -----------------------------------------------------------------------
    def latency_ms(self, a: str, b: str) -> Fraction:
        return self.latency[frozenset((a, b))]

    def nearest(self, source: str, names: Iterable[str]) -> list[str]:
        return sorted(names, key=lambda n: (self.latency_ms(source, n), n))

    def shifts(self) -> tuple[Shift, ...]:
        return tuple(sorted(Shift(s, p, d, f) for (s, p, d), f in self.table.items()))

    def weights(self, home: str, p: Plan) -> dict[str, Fraction]:
        """Fractions of new connections of (home, p) per site (lab.tm.shift.weights)."""
        out = dict.fromkeys(self.sites, ZERO)
        out.update(weights(self.shifts(), home, p))
        return out

    def component(self, seeds: Iterable[str]) -> set[str]:
        """`seeds` and every site connected to them by a shift (either direction)."""
        out = set(seeds)
        grew = True
        while grew:
            grew = False
            for s, _, d in self.table:
                if (s in out) != (d in out):
                    out |= {s, d}
                    grew = True
        return out

    def _finish(self, new: dict[Key, Fraction], reasons: list[str]) -> Outcome:
        changed = new != self.table
        self.table = new
        return Outcome(dict(new), reasons, changed)

    # --- one control step ----------------------------------------------------------------
    def _included(self, measured: Mapping[str, Measured | str]) -> tuple[list[str], set[str]]:
        """Why each unmeasured site is left out, and the set of sites left out with it."""
        reasons: list[str] = []
        missing: dict[str, str] = {}
        for s in self.sites:
            m = measured.get(s, "no report")
            if s not in self.down and not isinstance(m, Measured):
                missing[s] = m
        left_out = self.component(missing)
        for s, why in sorted(missing.items()):
            others = sorted(self.component([s]) - {s})
            tail = f"; {', '.join(others)} share shifts with it, left out too" if others else ""
            reasons.append(
                f"{s}: not measured ({why}): left out of this step, no shift to or from it{tail}"
            )
        return reasons, left_out

    def observe(self, measured: Mapping[str, Measured | str]) -> None:
        """Update the measured own traffic, loads and capacities without deciding anything."""
        _, left_out = self._included(measured)
        included = [s for s in self.sites if s not in left_out]
        if included:
            self._state(included, measured)

    def step(self, measured: Mapping[str, Measured | str]) -> Outcome:
        """Decide from this interval's measurements (a string: why a site is unmeasured)."""
        reasons, left_out = self._included(measured)
        included = [s for s in self.sites if s not in left_out]
        if not included:
            reasons.append("no measured site: no change")
            return self._finish(dict(self.table), reasons)
        state = self._state(included, measured)
        decision = plan(state)
        for r in decision.reasons:
            if any(r.startswith(f"{d}: keeps") for d in self.down):
                r = f"{r.split(':', 1)[0]}: down: keeps its failover shifts"
            reasons.append(r)
        new = {k: f for k, f in self.table.items() if k[0] in left_out or k[2] in left_out}
        new.update({(s.source, s.plan, s.destination): s.fraction for s in decision.shifts})
        new = self._ramp(new, reasons)
        return self._finish(new, reasons)

    def _state(self, included: list[str], measured: Mapping[str, Measured | str]) -> State:
        up = [s for s in included if s not in self.down]
        own: dict[str, dict[Plan, Fraction]] = {s: {} for s in included}
        for x in up:
            m = measured[x]
            assert isinstance(m, Measured)
            for (home, p), ms in m.cpu.items():
                if home in own:
                    own[home][p] = own[home].get(p, ZERO) + ms
        sites = {}
        for s in included:
            th = self.thresholds[s]
            if s in self.down:
                u = th.acceptable  # serves nothing: the model keeps its shifts
            else:
                m = measured[s]
                assert isinstance(m, Measured)
                u = max(m.utilisation, MIN_UTILISATION)
            sites[s] = Site(s, u, own[s], th)
            self.own[s] = own[s]
            if s not in self.down:
                self.own_history[s].append(own[s])
        shifts = tuple(
            Shift(s, p, d, f)
            for (s, p, d), f in sorted(self.table.items())
            if s in included and d in included
        )
        state = State(sites, self.latency, shifts)
        for s in up:
            self.load[s] = state.served(s)
            self.capacity[s] = state.capacity(s)
        return state

    def _take_back(
        self, source: str, wanted: Mapping[Key, Fraction], budget: Fraction, low_first: bool
    ) -> dict[Key, Fraction]:
        """Fractions taken back per key, up to `budget` ms/s in all, plan by plan (highest
        first, or lowest with `low_first`), the farthest destination first within a plan."""
        own = self.own.get(source, {})
        out: dict[Key, Fraction] = {}
        order = sorted(wanted, key=lambda k: (
            k[1] if low_first else -k[1], -self.latency_ms(source, k[2]), k[2]))
        for key in order:
            ms = own.get(key[1], ZERO)
            if ms == 0:  # the plan carries no traffic: nothing to spend on it
                out[key] = wanted[key]
                continue
            take = min(wanted[key] * ms, budget)
            out[key] = take / ms
            budget -= take
        return out

    def _ramp(self, new: dict[Key, Fraction], reasons: list[str]) -> dict[Key, Fraction]:
        """Take back at most `ramp` of a site's own traffic per step, highest plan first (the
        algorithm's order); who still shifts out takes nothing in."""
        out = dict(new)
        for source in sorted({s for s, _, _ in self.table}):
            own = self.own.get(source, {})
            wanted = {k: f - out.get(k, ZERO) for k, f in self.table.items()
                      if k[0] == source and f > out.get(k, ZERO)}
            asked = sum((f * own.get(k[1], ZERO) for k, f in wanted.items()), ZERO)
            budget = self.ramp * sum(own.values(), ZERO)
            if not wanted or asked <= budget:
                continue
            for key, back in self._take_back(source, wanted, budget, low_first=False).items():
                out[key] = self.table[key] - back
            reasons.append(
                f"{source}: ramp: takes back at most {fmt_pct(self.ramp)} of its own traffic "
                f"per step ({fmt_ms(budget)} of the {fmt_ms(asked)} ms/s it could), highest "
                "plan first"
            )
        sources = {s for s, _, _ in out}
        for key in list(out):
            old = self.table.get(key, ZERO)
            if key[2] in sources and out[key] > old:
                reasons.append(
                    f"{key[0]}: {key[1].label} -> {key[2]} stays at {fmt_pct(old)}: "
                    f"{key[2]} still shifts traffic out (ramp)"
                )
                if old == 0:
                    del out[key]
                else:
                    out[key] = old
        return {k: f for k, f in out.items() if f > 0}

    # --- failover ------------------------------------------------------------------------
    def fail(self, site: str, detail: str) -> Outcome:
        """Withdraw `site`: its own traffic goes to the nearest survivors with headroom."""
        reasons = [f"{site}: down ({detail}): withdrawn from every service"]
        self.down.add(site)
        new = dict(self.table)
        load = dict(self.load)
        self._drop_shifts_into(site, new, load, reasons)
        survivors = [s for s in self.sites if s not in self.down]
        if not survivors:
            reasons.append("no site is up: nothing to fail over to")
            return self._finish(new, reasons)
        for key in [k for k in new if k[0] == site and k[2] in self.down]:
            del new[key]  # its shifts to other down sites must move too
        own = max(self.own_history[site], key=lambda o: sum(o.values(), ZERO), default={})
        # the fraction of each plan still served at `site`
        share = {p: 1 - sum((f for (s, q, _), f in new.items() if s == site and q == p), ZERO)
                 for p in self.plans}
        available = {p: own.get(p, ZERO) * share[p] for p in self.plans}
        placed = {p: ZERO for p in self.plans}
        for p, to, ms in place(available, self._headroom(site, survivors, load)):
            fraction = ms / own[p]
            new[(site, p, to)] = new.get((site, p, to), ZERO) + fraction
            placed[p] += fraction
            reasons.append(
                f"{site}: {p.label} {fmt_pct(fraction)} ({fmt_ms(ms)} ms/s) -> {to} "
                f"({fmt_ms(self.latency_ms(site, to))} ms away)"
            )
        rest = {p: share[p] - placed[p] for p in self.plans}
        self._to_nearest(site, self.nearest(site, survivors)[0], rest, own, new, reasons)
        return self._finish(new, reasons)

    def _drop_shifts_into(self, site: str, new: dict[Key, Fraction],
                          load: dict[str, Fraction], reasons: list[str]) -> None:
        """Every other site takes back what it shifted to the failed `site` (its load grows)."""
        for key in sorted(new):
            if key[2] == site and key[0] != site:
                load[key[0]] = load.get(key[0], ZERO) + new[key] * self.own.get(key[0], {}).get(
                    key[1], ZERO
                )
                reasons.append(
                    f"{key[0]}: takes back its {key[1].label} {fmt_pct(new[key])} from {site}"
                    f" ({site} is down)"
                )
                del new[key]

    def _headroom(self, site: str, survivors: list[str], load: Mapping[str, Fraction]
                  ) -> list[tuple[str, Fraction]]:
        """(survivor, ms/s it can take up to its target), nearest to `site` first."""
        headroom = []
        for s in self.nearest(site, survivors):
            if s in self.capacity:
                room = self.capacity[s] * self.thresholds[s].target - load.get(s, ZERO)
                if room > 0:
                    headroom.append((s, room))
        return headroom

    def _to_nearest(self, site: str, nearest: str, rest: Mapping[Plan, Fraction],
                    own: Mapping[Plan, Fraction], new: dict[Key, Fraction],
                    reasons: list[str]) -> None:
        """What fits under no survivor's target goes to the nearest one: it must go somewhere."""
        for p in self.plans:
            if rest[p] > 0:
                new[(site, p, nearest)] = new.get((site, p, nearest), ZERO) + rest[p]
                ms = rest[p] * own.get(p, ZERO)
                why = "fits under no survivor's target" if ms > 0 else "no measured traffic"
                reasons.append(
                    f"{site}: {p.label} {fmt_pct(rest[p])} ({fmt_ms(ms)} ms/s) -> {nearest}, "
                    f"the nearest survivor ({why})"
                )

    def recover(self, site: str, detail: str, canary: bool = True) -> Outcome:
        """Put `site` back; with `canary` it takes back that share of its own traffic at
        first, lowest plan first (if it is not really well, Free traffic finds out)."""
        self.down.discard(site)
        new = dict(self.table)
        keys = [k for k in new if k[0] == site]
        if not canary:
            for key in keys:
                del new[key]
            return self._finish(
                new, [f"{site}: up ({detail}): back with its static weights, shifts dropped"]
            )
        own = max(self.own_history[site], key=lambda o: sum(o.values(), ZERO), default={})
        self.own[site] = own
        budget = self.canary * sum(own.values(), ZERO)
        taken = self._take_back(site, {k: new[k] for k in keys}, budget, low_first=True)
        for key, back in taken.items():
            new[key] -= back
            if new[key] == 0:
                del new[key]
        if budget == 0:  # its traffic was never measured: a share of each plan instead
            for key in keys:
                new[key] = self.table[key] * (1 - self.canary)
        reasons = [
            f"{site}: up ({detail}): back in every service; canary: it takes back "
            f"{fmt_pct(self.canary)} of its own traffic ({fmt_ms(budget)} ms/s), lowest plan "
            "first; the ramp brings back the rest, highest plan first"
        ]
        reasons += [
            f"{site}: canary: {k[1].label} {fmt_pct(back)} back from {k[2]}"
            for k, back in sorted(taken.items()) if back > 0
        ]
        return self._finish(new, reasons)

    def utilisation_note(self, measured: Mapping[str, Measured | str]) -> str:
        """'A 0.62, B 0.31, C -' for the log."""
        parts = []
        for s in self.sites:
            m = measured.get(s)
            parts.append(f"{s} {fmt_u(m.utilisation)}" if isinstance(m, Measured) else f"{s} -")
        return ", ".join(parts)
