"""Run-vs-run comparison: per trial present in both runs, what changed; a CI gates on it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lab.errors import LabError
from lab.experiment.rundata import read_run, to_float

COMPARED = ("measured_outage_s", "detect_s", "recover_s", "errors")


@dataclass(frozen=True)
class Change:
    trial: str
    metric: str
    a: float | None
    b: float | None
    regression: bool

    @property
    def delta(self) -> float | None:
        return None if self.a is None or self.b is None else self.b - self.a


def regressed(a: float | None, b: float | None, rel_tol: float, abs_tol: float) -> bool:
    """Worse = larger (outages, errors); not recovering where A recovered is worse too."""
    if b is None:
        return a is not None
    if a is None:
        return False
    return b > a + max(abs(a) * rel_tol, abs_tol)


def compare(
    run_a: Path,
    run_b: Path,
    metric: str = "measured_outage_s",
    rel_tol: float = 0.10,
    abs_tol: float = 0.5,
) -> tuple[list[Change], list[str]]:
    """Per trial present in both runs: each compared metric; only `metric` can regress."""
    if metric not in COMPARED:
        raise LabError(f"unknown metric {metric!r}", f"use one of {', '.join(COMPARED)}")
    a_rows = {r["trial"]: r for r in read_run(run_a)}
    b_rows = {r["trial"]: r for r in read_run(run_b)}
    if not set(a_rows) & set(b_rows):
        raise LabError(f"{run_a} and {run_b} share no trial, so there is nothing to compare",
                       "compare two runs of the same scenario")
    notes = [f"trial {t} only in {run_a}" for t in a_rows if t not in b_rows]
    notes += [f"trial {t} only in {run_b}" for t in b_rows if t not in a_rows]
    changes = []
    for trial in (t for t in a_rows if t in b_rows):
        for m in COMPARED:
            a, b = to_float(a_rows[trial].get(m)), to_float(b_rows[trial].get(m))
            changes.append(
                Change(trial, m, a, b, m == metric and regressed(a, b, rel_tol, abs_tol))
            )
    return changes, notes
