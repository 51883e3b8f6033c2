"""Run-vs-run comparison: per trial present in both runs, what changed and which settings
differ (so a change in the numbers comes with its cause); a CI gates on the regressions.

Only the result files are read (summary.csv, run.json, each trial's trial.json), so any two
runs compare, from any machine and any lab version that wrote them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab.errors import LabError
from lab.experiment.rundata import read_run, run_facts, to_float

COMPARED = ("measured_outage_s", "detect_s", "recover_s", "errors", "reconnects")
COUNTS = frozenset({"errors", "reconnects"})  # integers: shown and written as such
# run.json entries that say when, where or what ran, not how: never a difference worth
# showing (a shard's split, a merged run's shards: lab.experiment.shard, .merge)
RUN_IGNORED = frozenset({"scenario", "started", "written", "ended", "trials", "resumed",
                         "failures", "shard", "shards", "merged"})
Diff = dict[str, tuple[Any, Any]]  # key -> (value in A, value in B)


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

    @property
    def percent(self) -> float | None:
        """The change relative to A, in percent; None where A is 0 or a side is missing."""
        if self.a is None or self.b is None or self.a == 0:
            return None
        return 100 * (self.b - self.a) / abs(self.a)

    def as_dict(self) -> dict[str, Any]:
        def value(x: float | None) -> float | int | None:
            return int(x) if x is not None and self.metric in COUNTS else x
        return {"trial": self.trial, "metric": self.metric, "a": value(self.a),
                "b": value(self.b), "delta": value(self.delta), "percent": self.percent,
                "regression": self.regression}


@dataclass(frozen=True)
class Comparison:
    """What changed from run A to run B, and what differs in how they ran."""

    changes: list[Change]
    notes: list[str]
    run: Diff = field(default_factory=dict)  # run.json facts: scenario, --set, lab, host
    every_trial: Diff = field(default_factory=dict)  # settings that differ alike in each trial
    trials: dict[str, Diff] = field(default_factory=dict)  # the other differences, per trial

    @property
    def regressions(self) -> list[Change]:
        return [c for c in self.changes if c.regression]


def regressed(a: float | None, b: float | None, rel_tol: float, abs_tol: float) -> bool:
    """Worse = larger (outages, errors); not recovering where A recovered is worse too."""
    if b is None:
        return a is not None
    if a is None:
        return False
    return b > a + max(abs(a) * rel_tol, abs_tol)


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"client": {"tcp_retries2": 5}} -> {"client.tcp_retries2": 5}."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{dotted}."))
        else:
            out[dotted] = value
    return out


def _diff(a: dict[str, Any], b: dict[str, Any]) -> Diff:
    return {k: (a.get(k), b.get(k)) for k in dict.fromkeys([*a, *b]) if a.get(k) != b.get(k)}


def trial_settings(trial_dir: Path) -> dict[str, Any] | None:
    """A trial's settings as dotted keys, with the lb engine it ran on (trial.json); None when
    the trial has no readable trial.json."""
    try:
        record = json.loads((trial_dir / "trial.json").read_text())
        settings = record["settings"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(settings, dict):
        return None
    flat = flatten(settings)
    flat.pop("name", None)
    flat["engine_used"] = record.get("engine")  # what lb.engine = "auto" picked
    return flat


def _run_diff(run_a: Path, run_b: Path) -> Diff:
    def facts(run_dir: Path) -> dict[str, Any]:
        data = {k: v for k, v in run_facts(run_dir).items() if k not in RUN_IGNORED}
        return flatten(data)
    return _diff(facts(run_a), facts(run_b))


def _settings_diff(run_a: Path, run_b: Path, common: list[str]
                   ) -> tuple[Diff, dict[str, Diff], list[str]]:
    """(differences alike in every common trial, the others per trial, notes)."""
    per_trial: dict[str, Diff] = {}
    notes = []
    for trial in common:
        a, b = trial_settings(run_a / trial), trial_settings(run_b / trial)
        if a is None or b is None:
            where = run_a if a is None else run_b
            notes.append(f"trial {trial}: no trial.json in {where}, its settings not compared")
            continue
        per_trial[trial] = _diff(a, b)
    diffs = list(per_trial.values())
    every = {k: v for k, v in diffs[0].items() if all(d.get(k) == v for d in diffs)} \
        if diffs else {}
    rest = {t: {k: v for k, v in d.items() if k not in every} for t, d in per_trial.items()}
    return every, {t: d for t, d in rest.items() if d}, notes


def compare_runs(
    run_a: Path,
    run_b: Path,
    metric: str = "measured_outage_s",
    rel_tol: float = 0.10,
    abs_tol: float = 0.5,
) -> Comparison:
    """Per trial present in both runs: each compared metric (only `metric` can regress), and
    the settings and run facts that differ."""
    if metric not in COMPARED:
        raise LabError(f"unknown metric {metric!r}", f"use one of {', '.join(COMPARED)}")
    a_rows = {r["trial"]: r for r in read_run(run_a)}
    b_rows = {r["trial"]: r for r in read_run(run_b)}
    common = [t for t in a_rows if t in b_rows]
    if not common:
        raise LabError(f"{run_a} and {run_b} share no trial, so there is nothing to compare",
                       "compare two runs of the same scenario")
    notes = [f"trial {t} only in {run_a}" for t in a_rows if t not in b_rows]
    notes += [f"trial {t} only in {run_b}" for t in b_rows if t not in a_rows]
    changes = []
    for trial in common:
        for m in COMPARED:
            a, b = to_float(a_rows[trial].get(m)), to_float(b_rows[trial].get(m))
            changes.append(
                Change(trial, m, a, b, m == metric and regressed(a, b, rel_tol, abs_tol)))
    every, per_trial, more = _settings_diff(run_a, run_b, common)
    return Comparison(changes, notes + more, _run_diff(run_a, run_b), every, per_trial)
