"""Reading a finished run's result files (what lab.experiment.results wrote).

Only the files, never the lab's state, so it works on any run, old or new, and on runs copied
from another machine.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from lab.errors import LabError


def to_float(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v


def read_run(run_dir: Path) -> list[dict[str, str]]:
    path = run_dir / "summary.csv"
    if not path.exists():
        raise LabError(
            f"{run_dir} has no summary.csv",
            "give a results/<run-id> directory "
            "of a finished run (or finish it with lab run --resume)",
        )
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def read_csv(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def fault_time(trial_dir: Path) -> float | None:
    for e in read_csv(trial_dir / "events.csv"):
        if e["event"] == "fault":
            return to_float(e["t_s"])
    return None


def run_facts(run_dir: Path) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads((run_dir / "run.json").read_text())
        return data
    except (OSError, ValueError):
        return {}


def typed(value: Any) -> Any:
    """A summary.csv string read back as what it was written from: "" (nothing) is None,
    "True"/"False" a boolean, a finite number a number (for --json and other readers)."""
    if not isinstance(value, str):
        return value
    if value == "":
        return None
    if value in ("True", "False"):
        return value == "True"
    for kind in (int, float):
        try:
            number = kind(value)
        except ValueError:
            continue
        return number if math.isfinite(number) else value
    return value


def typed_row(row: dict[str, Any]) -> dict[str, Any]:
    return {k: (v if k == "trial" else typed(v)) for k, v in row.items()}
