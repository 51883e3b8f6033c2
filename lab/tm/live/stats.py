"""The sites' reports: read, validate, and turn cumulative counters into rates over a window.

A report that is not what lab.tm.live.site writes (cut-off JSON, a string where a number
belongs, NaN, a counter that went backwards, someone else's name) or that has not been
renewed for `stale_after_s` makes the site *unmeasured*: `poll` returns the reason as one
line, the history is dropped, and the site needs fresh valid reports before it is measured
again. Nothing here raises on bad input: a broken reporter must not stop the loop.
"""

from __future__ import annotations

import json
import math
import time
from collections import deque
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from lab.tm.model import Plan

MIN_SPAN_S = 0.5  # a rate over less than this is too noisy to act on


class BadReport(ValueError):
    """The reason a report was ignored (one line)."""


@dataclass(frozen=True)
class Report:
    site: str
    t: float
    seq: int
    budget_ms_per_s: float
    allowed_ms: float
    cpu_ms: dict[tuple[str, Plan], float]  # cumulative, per (home site, plan)
    requests: dict[tuple[str, Plan], int]


@dataclass(frozen=True)
class Measured:
    """A site over a window: utilisation and CPU ms/s per (home, plan) it served."""

    t: float
    span_s: float
    budget_ms_per_s: Fraction
    utilisation: Fraction
    cpu: dict[tuple[str, Plan], Fraction]

    @property
    def cpu_total(self) -> Fraction:
        return sum(self.cpu.values(), Fraction(0))


def _number(doc: dict[str, Any], key: str) -> float:
    value = doc.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadReport(f"{key} is {value!r}, not a number")
    if not math.isfinite(value) or value < 0:
        raise BadReport(f"{key} is {value!r}")
    return float(value)


def _counters(
    doc: dict[str, Any], key: str, sites: frozenset[str]
) -> dict[tuple[str, Plan], float]:
    table = doc.get(key)
    if not isinstance(table, dict):
        raise BadReport(f"{key} is {type(table).__name__}, not a table")
    out: dict[tuple[str, Plan], float] = {}
    for name in table:
        home, _, plan = str(name).partition("/")
        if home not in sites or plan.upper() not in Plan.__members__:
            raise BadReport(f"{key} has an unknown key {name!r} (want HOME/PLAN)")
        out[(home, Plan.parse(plan))] = _number(table, name)
    return out


def parse_report(text: str, site: str, sites: frozenset[str]) -> Report:
    """Validate one report of `site`; raises BadReport with the reason."""
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise BadReport(f"not JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise BadReport(f"not a JSON object but {type(doc).__name__}")
    if doc.get("site") != site:
        raise BadReport(f"it names site {doc.get('site')!r}")
    seq = doc.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool):
        raise BadReport(f"seq is {seq!r}, not an integer")
    budget = _number(doc, "budget_ms_per_s")
    if budget <= 0:
        raise BadReport("budget_ms_per_s is 0")
    return Report(
        site=site,
        t=_number(doc, "t"),
        seq=seq,
        budget_ms_per_s=budget,
        allowed_ms=_number(doc, "allowed_ms"),
        cpu_ms=_counters(doc, "cpu_ms", sites),
        requests={k: int(v) for k, v in _counters(doc, "requests", sites).items()},
    )


def _q(x: float, per: int = 1000) -> Fraction:
    """A measured float as an exact, short fraction (the algorithm works in Fractions)."""
    return Fraction(round(x * per), per)


class SiteStats:
    """One site's report file and the history of its valid reports."""

    def __init__(
        self, site: str, path: Path, sites: frozenset[str], stale_after_s: float, keep_s: float
    ) -> None:
        self.site = site
        self.path = path
        self.sites = sites
        self.stale_after_s = stale_after_s
        self.keep_s = keep_s
        self.history: deque[Report] = deque()
        self.error: str | None = "no report yet"

    def _bad(self, reason: str) -> str:
        self.history.clear()
        self.error = reason
        return reason

    def poll(self, now: float) -> str | None:
        """Read the file; None if the site is measured, else why not (one line)."""
        report = self._read(now)
        if isinstance(report, str):
            return self._bad(report)
        last = self.history[-1] if self.history else None
        if last is not None and report.seq != last.seq:
            regression = _went_back(last, report)
            if regression is not None:
                return self._bad(regression)
        if last is None or report.seq != last.seq:
            self.history.append(report)
        while self.history and self.history[0].t < report.t - self.keep_s:
            self.history.popleft()
        if len(self.history) < 2 or report.t - self.history[0].t < MIN_SPAN_S:
            self.error = "not enough reports yet"
            return self.error
        self.error = None
        return None

    def _read(self, now: float) -> Report | str:
        """The current report if it is valid and fresh, else why not."""
        try:
            age = time.time() - self.path.stat().st_mtime  # silence first: whatever is there
            text = self.path.read_text()
        except FileNotFoundError:
            return "no report file"
        except OSError as exc:
            return f"report unreadable ({exc.strerror})"
        if age > self.stale_after_s:
            return f"no report for {age:.1f} s"
        try:
            report = parse_report(text, self.site, self.sites)
        except BadReport as exc:
            return f"report ignored: {exc}"
        if now - report.t > self.stale_after_s:
            return f"no report for {now - report.t:.1f} s"
        return report

    def measure(self, window_s: float) -> Measured | None:
        """Rates between the newest report and the oldest one within `window_s` of it that
        has the same budget: a window across a capacity change would average two capacities
        (and shed too little after a cut, take back too little after a rise)."""
        if self.error is not None or len(self.history) < 2:
            return None
        new = self.history[-1]
        old = new
        for r in reversed(self.history):
            if r.t < new.t - window_s - 0.05 or r.budget_ms_per_s != new.budget_ms_per_s:
                break
            old = r
        return between(old, new)


def _went_back(last: Report, report: Report) -> str | None:
    """Why a new report (another seq) cannot follow the last one, if it cannot."""
    if report.seq < last.seq or report.t <= last.t:
        return "report ignored: it went back in time"
    if report.allowed_ms < last.allowed_ms or any(
        report.cpu_ms.get(k, 0.0) < v for k, v in last.cpu_ms.items()
    ):
        return "report ignored: a counter went backwards"
    return None


def between(old: Report, new: Report) -> Measured | None:
    """Utilisation (CPU used / CPU allowed) and CPU ms/s per (home, plan) from old to new."""
    span = new.t - old.t
    allowed = new.allowed_ms - old.allowed_ms
    if span < MIN_SPAN_S or allowed <= 0:
        return None
    cpu = {k: v - old.cpu_ms.get(k, 0.0) for k, v in new.cpu_ms.items()}
    used = sum(cpu.values())
    return Measured(
        t=new.t,
        span_s=span,
        budget_ms_per_s=_q(new.budget_ms_per_s),
        utilisation=_q(used / allowed, 10000),
        cpu={k: _q(v / span) for k, v in cpu.items() if v > 0},
    )
