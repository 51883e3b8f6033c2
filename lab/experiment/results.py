"""Result files: the contract for comparing runs (README "Result files" describes each).

    results/<run-id>/run.json, summary.csv
    results/<run-id>/<trial>/timeline.csv, events.csv, trial.json
(the capture's files are lab.capture.evidence's; report/ is lab.experiment.report's)
Times are seconds relative to the trial's load start; the fault time is in events.csv.
"""

from __future__ import annotations

import csv
import json
import platform
import subprocess
import sys
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from lab import model, version
from lab.experiment.trial import TrialResult

TIMELINE_COLUMNS = [
    "t_s", "tps", "qps", "reads", "writes", "other", "lat_p95_ms", "err_per_s", "reconn_per_s",
]
# summary column <- evidence fact (the first blackholed flow; empty without a capture)
EVIDENCE_COLUMNS = {
    "retrans_count": "bh.count", "tlp": "bh.tlp", "first_rto_s": "bh.first_rto_s",
    "last_gap_s": "bh.last_gap_s", "retrans_missing": "retrans.missing",
}


def _r(x: float | None, nd: int = 3) -> float | str:
    return "" if x is None else round(x, nd)


def write_trial(result: TrialResult, trial_dir: Path) -> dict[str, Any]:
    """timeline.csv, events.csv and trial.json (with the summary row a resumed run reads back,
    finished_row); returns that row."""
    trial_dir.mkdir(parents=True, exist_ok=True)
    t0 = result.t0
    with open(trial_dir / "timeline.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(TIMELINE_COLUMNS)
        for s in result.samples:
            w.writerow([
                _r(s["t"] - t0), s["tps"], s["qps"], s["reads"], s["writes"], s["other"],
                s["lat_p95_ms"], s["errors"], s["reconnects"],
            ])
    with open(trial_dir / "events.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["t_s", "event", "detail"])
        for t, event, detail in sorted(result.events, key=lambda e: e[0]):
            w.writerow([_r(t - t0), event, detail])
    row = summary_row(result)
    record = {**trial_record(result), "summary": row}
    (trial_dir / "trial.json").write_text(json.dumps(record, indent=2) + "\n")
    return row


def finished_row(trial_dir: Path) -> dict[str, Any] | None:
    """The summary row of a trial that finished in an earlier (interrupted) run."""
    try:
        record = json.loads((trial_dir / "trial.json").read_text())
    except (OSError, ValueError):
        return None
    row = record.get("summary")
    return row if isinstance(row, dict) else None


def trial_record(result: TrialResult) -> dict[str, Any]:
    p = result.prediction
    return {
        "trial": result.settings.name,
        "settings": result.settings.model_dump(),
        "engine": result.engine,
        "engine_why": result.engine_why,
        "fault_t_s": _r(None if result.fault_t is None else result.fault_t - result.t0),
        "fault_apply_ms": result.fault_apply_ms,
        "fault_detail": result.fault_detail or next(
            (d for _, e, d in result.events if e == "fault"), ""),
        "prediction": {"outage_s": p.outage_s, "mechanism": p.mechanism,
                       "detect_s": p.detect_s, "detail": p.detail,
                       # the model's reasoning in one line, and how close "ok" must be
                       "reasoning": model.describe(p),
                       "tolerance_s": None if p.outage_s is None else round(
                           model.tolerance(p.outage_s), 3)},
        "measured": {"outage_s": result.measured_outage_s, "detect_s": result.detect_s,
                     "recover_s": result.recover_s, "errors": result.errors,
                     "reconnects": result.reconnects},
        "verdict": result.verdict,
        "facts": result.facts,
        "evidence": result.evidence,
    }


def summary_row(result: TrialResult) -> dict[str, Any]:
    s = result.settings
    row: dict[str, Any] = {
        "trial": s.name, "backend": s.backend, "driver": s.load.driver,
        "lb": result.engine, "fault": s.fault.kind,
    }
    for key, value in s.flat().items():
        if key != "name":
            row[key] = "" if value is None else value
    row.update({
        "predicted_outage_s": _r(result.prediction.outage_s),
        "predicted_mechanism": result.prediction.mechanism,
        "measured_outage_s": _r(result.measured_outage_s),
        "detect_s": _r(result.detect_s),
        "recover_s": _r(result.recover_s),
        "errors": result.errors,
        "reconnects": result.reconnects,
        # how long the fault took to be in place: a slow one shifts the measured outage
        "fault_apply_ms": "" if result.fault_apply_ms is None else result.fault_apply_ms,
    })
    for column, fact in EVIDENCE_COLUMNS.items():
        value = result.evidence.get(fact)
        row[column] = "" if value is None else (_r(value) if isinstance(value, float) else value)
    row["verdict"] = result.verdict
    return row


def write_summary(run_dir: Path, rows: list[dict[str, Any]]) -> None:
    """summary.csv, one row per finished trial; the columns of every row (a row resumed from
    an older lab may lack one the newer rows have: it stays empty there)."""
    if not rows:
        return
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with open(run_dir / "summary.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, restval="")
        w.writeheader()
        w.writerows(rows)


def read_summary(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "summary.csv", newline="") as f:
        return list(csv.DictReader(f))


def _version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "not found"
    return out.strip().splitlines()[0] if out.strip() else "unknown"


def host_facts() -> dict[str, Any]:
    pkgs = {}
    for name in ("pyroute2", "PyMySQL", "pydantic", "scapy"):
        try:
            pkgs[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pkgs[name] = "not installed"
    return {
        "lab": {"version": version.version(), "commit": version.git_commit()},
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "mariadbd": _version(["mariadbd", "--version"]),
        "nft": _version(["nft", "--version"]),
        "packages": pkgs,
    }


def write_run(run_dir: Path, scenario: dict[str, Any], meta: dict[str, Any]) -> None:
    data = {"scenario": scenario, **meta, "written": datetime.now(UTC).isoformat()}
    (run_dir / "run.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
