"""`python -m lab.cli`: arguments, exit codes and the one error line, run as a user runs it.

Exit codes: 0 done, 1 a trial failed or a comparison regressed, 2 a usage or LabError (one
line on stderr, "lab: <problem> -- <fix>"), 3 a trial disagrees with the model. Nothing here
starts a trial: the commands that run are the ones that only read (keys, report, compare) on
files made here, or a `lab run` refused before it builds anything.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lab.cli.main import run_exit_code
from lab.config import scenario
from lab.experiment import rundir
from lab.experiment.matrix import MatrixRun
from lab.experiment.trial import verdict
from lab.model import Prediction

ROOT = Path(__file__).resolve().parents[2]
SUMMARY = ("trial", "lb", "fault", "predicted_outage_s", "predicted_mechanism",
           "measured_outage_s", "detect_s", "recover_s", "errors", "reconnects", "verdict")


def lab(*args: str | Path, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lab.cli", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The last stderr line; a LabError must be the only one."""
    lines = proc.stderr.strip().splitlines()
    assert lines, proc
    return lines[-1]


def lab_error(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 2, proc
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr  # no traceback
    return error_line(proc)


def make_run(root: Path, name: str, outage_s: float | None) -> Path:
    """A finished run of one trial as `lab run` leaves it: summary.csv and the trial's CSVs."""
    run_dir = root / name
    trial = run_dir / "switchover"
    trial.mkdir(parents=True)
    with (run_dir / "summary.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=SUMMARY)
        writer.writeheader()
        writer.writerow({
            "trial": "switchover", "lb": "nft", "fault": "switchover",
            "predicted_outage_s": 13.5, "predicted_mechanism": "retries2",
            "measured_outage_s": "" if outage_s is None else outage_s, "detect_s": 1.0,
            "recover_s": 0.5, "errors": 1, "reconnects": 1, "verdict": "ok"})
    (trial / "timeline.csv").write_text(
        "t_s,qps\n" + "".join(f"{t},{0 if 5 <= t < 19 else 100}\n" for t in range(25)))
    (trial / "events.csv").write_text("t_s,event\n5.0,fault\n")
    return run_dir


def test_help_lists_every_command() -> None:
    proc = lab("--help")
    assert proc.returncode == 0, proc
    assert proc.stdout.startswith("usage: lab ")
    for command in ("run", "report", "compare", "keys", "clean", "doctor", "image", "tm", "vm"):
        assert f"    {command} " in proc.stdout, command


def test_no_command_and_an_unknown_command_are_usage_errors() -> None:
    proc = lab()
    assert proc.returncode == 2
    assert error_line(proc) == "lab: error: the following arguments are required: command"
    proc = lab("frobnicate")
    assert proc.returncode == 2
    assert error_line(proc).startswith(
        "lab: error: argument command: invalid choice: 'frobnicate'")


def test_run_of_a_missing_scenario_file(tmp_path: Path) -> None:
    missing = tmp_path / "nothere.toml"
    assert lab_error(lab("run", missing)) == (
        f"lab: scenario file {missing} not found -- give a path such as scenarios/*.toml")


def test_run_with_an_unknown_set_key(tmp_path: Path) -> None:
    scen = tmp_path / "one.toml"
    scen.write_text('[[trial]]\nname = "t1"\n')
    line = lab_error(lab("run", scen, "--set", "client.tcp_retries=5", "--out", tmp_path))
    assert line == (f"lab: {scen}: trial 't1': client.tcp_retries: unknown key (did you mean "
                    "client.tcp_retries2?) -- 'lab keys' lists the valid keys")
    assert lab_error(lab("run", scen, "--set", "client.tcp_retries2")) == (
        "lab: --set 'client.tcp_retries2' is not key=value -- "
        "write e.g. --set client.tcp_retries2=5")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.toml"]  # no run dir was made


def test_resume_of_a_missing_run_dir(tmp_path: Path) -> None:
    scen = tmp_path / "one.toml"
    scen.write_text('[[trial]]\nname = "t1"\n')
    missing = tmp_path / "run-x"
    assert lab_error(lab("run", scen, "--resume", missing)) == (
        f"lab: --resume {missing}: no such run directory (no run.json) -- give a "
        "results/<run> directory that 'lab run' made")


def test_resume_with_other_settings_is_refused_before_anything_runs(tmp_path: Path) -> None:
    path = tmp_path / "one.toml"
    path.write_text('[[trial]]\nname = "t1"\n')
    earlier = scenario.load(path, ["client.tcp_retries2=5"])
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "run.json").write_text(json.dumps(rundir.identity(earlier)))
    line = lab_error(lab("run", path, "--set", "client.tcp_retries2=6", "--resume", run_dir))
    assert line == (f"lab: --resume {run_dir}: it ran with --set ['client.tcp_retries2=5'], "
                    "this run has ['client.tcp_retries2=6'] -- resume with the same --set "
                    "values, or start a new run")
    assert sorted(p.name for p in run_dir.iterdir()) == ["run.json"]


def test_out_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "out").write_text("")
    line = lab_error(lab("run", ROOT / "scenarios" / "ci-short.toml", "--out", tmp_path / "out"))
    assert line == f"lab: --out {tmp_path / 'out'} is a file, not a directory -- give a " \
        "directory for results"


@pytest.mark.parametrize("option", [["--parallel", "0"], ["--parallel", "65"],
                                    ["--parallel", "two"], ["--every", "nan"],
                                    ["--every", "-1"]])
def test_run_options_out_of_range_are_usage_errors(tmp_path: Path, option: list[str]) -> None:
    proc = lab("run", ROOT / "scenarios" / "ci-short.toml", *option, "--out", tmp_path)
    assert proc.returncode == 2, proc
    assert error_line(proc).startswith(f"lab run: error: argument {option[0]}: ")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.root
def test_not_root_is_one_line_before_anything_is_built(tmp_path: Path) -> None:
    """As a user without root (setpriv drops to nobody): one line, exit 2, no run dir."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv (util-linux) not installed")
    out = tmp_path / "out"
    proc = subprocess.run(
        [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-m",
         "lab.cli", "run", str(ROOT / "scenarios" / "ci-short.toml"), "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, "HOME": "/tmp"})  # a user has a home; nobody has none
    assert lab_error(proc) == ("lab: the lab needs root (network namespaces, nftables) -- "
                               "run it with sudo")
    assert not out.exists()


def test_keys_lists_every_setting_with_its_default() -> None:
    proc = lab("keys")
    assert proc.returncode == 0, proc
    lines = proc.stdout.splitlines()
    assert all(" = " in line for line in lines)
    keys = dict(line.split(" = ", 1) for line in lines)
    assert keys["backend"] == "'mariadb'" and keys["provider"] == "'process'"
    assert "client.tcp_retries2" in keys and "fault.kind" in keys


def test_report_of_a_finished_run(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path, "run-a", 14.0)
    proc = lab("report", run_dir)
    assert proc.returncode == 0, proc
    assert "switchover" in proc.stdout  # the summary table
    wrote = [line.removeprefix("wrote ") for line in proc.stdout.splitlines()
             if line.startswith("wrote ")]
    assert wrote == [str(run_dir / "report" / "timelines.png"),
                     str(run_dir / "report" / "predicted_vs_measured.png"),
                     str(run_dir / "switchover" / "timeline.png")]
    for path in map(Path, wrote):
        assert path.read_bytes().startswith(b"\x89PNG")


def test_report_of_a_folder_that_is_no_run(tmp_path: Path) -> None:
    assert lab_error(lab("report", tmp_path)) == (
        f"lab: {tmp_path} has no summary.csv -- give a results/<run-id> directory of a "
        "finished run (or finish it with lab run --resume)")


@pytest.mark.parametrize(("outage_b", "rc", "verdict"), [
    (14.2, 0, "0 regression(s) in measured_outage_s"),  # within 10 % / 0.5 s
    (20.0, 1, "1 regression(s) in measured_outage_s"),
    (None, 1, "1 regression(s) in measured_outage_s"),  # B never recovered
])
def test_compare_exit_code_is_the_regression(
    tmp_path: Path, outage_b: float | None, rc: int, verdict: str
) -> None:
    a, b = make_run(tmp_path, "run-a", 14.0), make_run(tmp_path, "run-b", outage_b)
    proc = lab("compare", a, b)
    assert proc.returncode == rc, proc
    assert proc.stdout.strip().splitlines()[-1] == verdict
    assert ("REGRESSION" in proc.stdout) == (rc == 1)


def test_compare_of_runs_with_no_trial_in_common_is_bad_input(tmp_path: Path) -> None:
    a, b = make_run(tmp_path, "run-a", 14.0), make_run(tmp_path, "run-b", 14.0)
    (b / "switchover").rename(b / "other")
    summary = (b / "summary.csv").read_text().replace("\nswitchover,", "\nother,")
    (b / "summary.csv").write_text(summary)
    assert lab_error(lab("compare", a, b)) == (
        f"lab: {a} and {b} share no trial, so there is nothing to compare -- compare two "
        "runs of the same scenario")


def test_help_documents_the_exit_codes() -> None:
    proc = lab("--help")
    text = " ".join(proc.stdout.split())
    for code, meaning in [("0", "every trial ran and agrees with the model"),
                          ("1", "the lab failed"), ("2", "bad input"),
                          ("3", "a trial disagrees with the model"), ("130", "interrupted")]:
        assert f"{code} {meaning}" in text, code


def test_compare_arguments(tmp_path: Path) -> None:
    a = make_run(tmp_path, "run-a", 14.0)
    proc = lab("compare", a, a, "--metric", "qps")
    assert proc.returncode == 2
    assert error_line(proc).startswith(
        "lab compare: error: argument --metric: invalid choice: 'qps'")
    assert lab_error(lab("compare", a, tmp_path / "nothere")).startswith(
        f"lab: {tmp_path / 'nothere'} has no summary.csv -- ")


def _matrix(tmp_path: Path, failures: dict[str, str]) -> MatrixRun:
    path = tmp_path / "s.toml"
    path.write_text('[[trial]]\nname = "t1"\n')
    matrix = MatrixRun(scenario.load(path), tmp_path)
    matrix.failures.update(failures)
    return matrix


PREDICTED_14 = Prediction(14.0, "retries2", 1.0, "test")


@pytest.mark.parametrize(("measured", "failures", "code"), [
    (14.2, {}, 0),                          # within the tolerance of the model
    (20.0, {}, 3),                          # disagrees with the model
    (None, {}, 3),                          # did not recover when the model said it would
    (14.2, {"t2": "RuntimeError: x"}, 1),  # a trial could not run: that comes first
])
def test_run_exit_code(tmp_path: Path, measured: float | None, failures: dict[str, str],
                       code: int) -> None:
    rows = [{"trial": "t1", "verdict": verdict(PREDICTED_14, measured, deadline_s=30)}]
    assert run_exit_code(_matrix(tmp_path, failures), rows) == code
