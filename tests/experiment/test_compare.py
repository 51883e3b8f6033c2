"""`lab compare` on runs written by the lab's own result writers (results.write_trial,
write_summary, write_run): the change in percent, counts as integers, the settings that
differ (for the whole run, in every trial alike, or per trial) and the --fail-on gate."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from lab.config import scenario
from lab.config.settings import TrialSettings
from lab.experiment import compare, results, rundir
from lab.experiment.trial import TrialResult, predict

ROOT = Path(__file__).resolve().parents[2]


def write_run(root: Path, name: str, trials: dict[str, dict[str, Any]],
              overrides: list[str] | None = None) -> Path:
    """A finished run: for each trial {outage, errors, settings...}, its trial.json and its
    summary row, and run.json; as MatrixRun writes them."""
    run_dir = root / name
    run_dir.mkdir()
    rows = []
    for trial, spec in trials.items():
        settings = TrialSettings.model_validate({"name": trial, **spec.get("settings", {})})
        result = TrialResult(settings, "nft", "test", predict(settings, "nft"), t0=100.0,
                             fault_t=105.0, recover_s=spec["outage"], detect_s=spec["outage"],
                             errors=spec.get("errors", 1), reconnects=1, verdict="ok")
        rows.append(results.write_trial(result, run_dir / trial))
    results.write_summary(run_dir, rows)
    path = root / f"{name}.toml"
    path.write_text("[[trial]]\nname = 'x'\n")
    scen = scenario.load(path, overrides or [])
    results.write_run(run_dir, scen.source, {"scenario_name": "s", **rundir.identity(scen),
                                             "host": {"lab": {"commit": name}}})
    return run_dir


def lab(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lab.cli", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def runs(tmp_path: Path) -> tuple[Path, Path]:
    """A and B: B ran with tcp_retries2=8 everywhere and a longer deadline in one trial."""
    a = write_run(tmp_path, "a", {
        "one": {"outage": 10.0, "errors": 1, "settings": {"client": {"tcp_retries2": 5}}},
        "two": {"outage": 2.0, "errors": 2, "settings": {"client": {"tcp_retries2": 5}}}})
    b = write_run(tmp_path, "b", {
        "one": {"outage": 12.0, "errors": 3, "settings": {"client": {"tcp_retries2": 8}}},
        "two": {"outage": 2.1, "errors": 2,
                "settings": {"client": {"tcp_retries2": 8}, "deadline_s": 90}}},
        overrides=["client.tcp_retries2=8"])
    return a, b


def test_settings_that_differ_for_the_run_every_trial_and_one(runs: tuple[Path, Path]) -> None:
    c = compare.compare_runs(*runs)
    assert c.every_trial == {"client.tcp_retries2": (5, 8)}
    assert c.trials == {"two": {"deadline_s": (60.0, 90.0)}}
    assert c.run["overrides"] == ([], ["client.tcp_retries2=8"])
    assert c.run["host.lab.commit"] == ("a", "b")
    assert "scenario_sha256" not in c.run  # the same file
    assert not c.notes


def test_percent_change_and_the_fail_on_threshold(runs: tuple[Path, Path]) -> None:
    one = {c.metric: c for c in compare.compare_runs(*runs).changes if c.trial == "one"}
    assert one["measured_outage_s"].percent == pytest.approx(20.0)
    assert one["errors"].percent == pytest.approx(200.0)
    # +20 % regresses at the default 10 %, not at --fail-on 25 (rel_tol 0.25)
    assert [c.trial for c in compare.compare_runs(*runs).regressions] == ["one"]
    assert compare.compare_runs(*runs, rel_tol=0.25).regressions == []


def test_a_percent_of_nothing_is_none() -> None:
    assert compare.Change("t", "errors", 0.0, 3.0, False).percent is None
    assert compare.Change("t", "errors", None, 3.0, False).percent is None


def test_cli_prints_counts_as_integers_the_percent_and_what_differs(
        runs: tuple[Path, Path]) -> None:
    proc = lab("compare", *runs)
    assert proc.returncode == 1, proc
    lines = proc.stdout.splitlines()
    errors = next(line for line in lines if "one" in line and "errors" in line)
    assert " 1 " in errors and " 3 " in errors and "+2 " in errors and "+200.0 %" in errors
    assert "1.0" not in errors and "3.00" not in errors
    outage = next(line for line in lines if "one" in line and "measured_outage_s" in line)
    assert "10.00" in outage and "12.00" in outage and "+20.0 %" in outage
    assert "  every trial: client.tcp_retries2: 5 -> 8" in lines
    assert "  trial two: deadline_s: 60.0 -> 90.0" in lines
    assert "  run: overrides: [] -> ['client.tcp_retries2=8']" in lines
    assert lines[-1] == "1 regression(s) in measured_outage_s"
    assert lab("compare", *runs, "--fail-on", "25").returncode == 0
    # the older spelling a CI script may still use: a fraction
    assert lab("compare", *runs, "--rel-tol", "0.25").returncode == 0
    assert lab("compare", *runs, "--rel-tol", "0.1").returncode == 1


def test_cli_json(runs: tuple[Path, Path]) -> None:
    proc = lab("compare", *runs, "--json")
    assert proc.returncode == 1, proc
    data = json.loads(proc.stdout)
    assert [(r["trial"], r["metric"]) for r in data["regressions"]] == [
        ("one", "measured_outage_s")]
    errors = next(c for c in data["changes"] if c["trial"] == "one" and c["metric"] == "errors")
    assert errors == {"trial": "one", "metric": "errors", "a": 1, "b": 3, "delta": 2,
                      "percent": 200.0, "regression": False}
    assert data["differs"]["every_trial"] == {"client.tcp_retries2": {"a": 5, "b": 8}}
    assert data["differs"]["trials"] == {"two": {"deadline_s": {"a": 60.0, "b": 90.0}}}
    assert data["fail_on_pct"] == 10.0


def test_a_trial_without_trial_json_is_noted(runs: tuple[Path, Path]) -> None:
    a, b = runs
    (b / "two" / "trial.json").unlink()
    c = compare.compare_runs(a, b)
    assert c.notes == [f"trial two: no trial.json in {b}, its settings not compared"]
    assert c.every_trial == {"client.tcp_retries2": (5, 8)}
