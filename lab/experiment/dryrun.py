"""`lab run --dry-run`: what each trial of a scenario should show, from the model alone.

Nothing is built and no root is needed, so a user can check a matrix (its predicted outages,
mechanisms and length) before giving it a machine for an hour.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from lab import lb
from lab.config.scenario import Scenario
from lab.config.settings import TrialSettings
from lab.errors import LabError

if TYPE_CHECKING:
    from lab.model import Prediction


def _engine(requested: str) -> tuple[str, str]:
    """(engine, note): what `auto` picks here; an engine this host lacks is still predicted
    (the note says a real run here would stop)."""
    try:
        return lb.choose_engine(requested)[0], ""
    except LabError:
        return requested, f"no {requested} engine on this host: a run here stops before it"


def plan(scen: Scenario) -> list[dict[str, Any]]:
    """Each trial's predicted outage and mechanism, and how long its load runs (fault time +
    outage, capped by the deadline, + after_s), from the model alone."""
    out = []
    for t in scen.trials:
        engine, note = _engine(t.lb.engine)
        p = _predict(t, engine)
        if p.outage_s is None or p.outage_s > t.deadline_s:
            note = note or "not recovered by the deadline"
        out.append({"trial": t.name, "lb": engine, "fault": t.fault.kind,
                    "predicted_outage_s": _round(p.outage_s), "mechanism": p.mechanism,
                    "detect_s": _round(p.detect_s), "detail": p.detail,
                    "deadline_s": t.deadline_s,
                    "observed_s": round(_length(t, p), 3), "note": note})
    return out


def _predict(t: TrialSettings, engine: str) -> Prediction:
    from lab.experiment.trial import IDLE_QUIET_S, predict
    # an idle load's fault comes IDLE_QUIET_S into an idle period, as in the trial
    return predict(t, engine, IDLE_QUIET_S if t.load.shape == "idle" else 0.0)


def _length(t: TrialSettings, p: Prediction) -> float:
    ends = t.deadline_s if p.outage_s is None else min(p.outage_s, t.deadline_s)
    return t.fault.at_s + ends + t.after_s


def load_length_s(t: TrialSettings, engine: str) -> float:
    """How long the trial's load runs on `engine` (fault time + the model's outage, capped
    by the deadline, + after_s): the model alone, nothing of the host is looked at."""
    return _length(t, _predict(t, engine))


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


def wall_estimate(lengths: Sequence[float], parallel: int) -> float:
    """The run's length with `parallel` slots taking the trials in order (as MatrixRun)."""
    slots = [0.0] * max(1, min(parallel, len(lengths) or 1))
    for length in lengths:
        slots[slots.index(min(slots))] += length
    return max(slots)
