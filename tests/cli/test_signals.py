"""Stopping `lab run`: one line and exit 130 at any moment of its start-up, in a terminal or
in the background of a script; nothing the run built stays (issue 13, point 7). And output
that goes away (`| head -2`) changes no measurement (point 4)."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.leftovers import as_from_a_background_script, as_from_a_terminal, leftovers, snapshot

ROOT = Path(__file__).resolve().parents[2]
# one short trial: the lb resets the dead connection, the client reconnects at once
SHORT = """
[defaults]
deadline_s = 20
after_s = 2
capture = false
fault.at_s = 3
lb.expire_nodest_conn = 1
[[trial]]
name = "short"
"""


def start_lab(tmp_path: Path, started: Callable[[], None], *extra: str) -> subprocess.Popen[str]:
    path = tmp_path / "short.toml"
    path.write_text(SHORT)
    return subprocess.Popen(
        [sys.executable, "-m", "lab.cli", "run", str(path), "--out", str(tmp_path / "out"),
         "--plain", *extra], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, preexec_fn=started)


@pytest.mark.root
@pytest.mark.parametrize("delay_s", [0.15, 0.3, 0.5, 0.8, 1.5, 3.5])
@pytest.mark.parametrize("started", [as_from_a_terminal, as_from_a_background_script],
                         ids=["terminal", "background"])
def test_ctrl_c_at_any_moment_of_start_up(tmp_path: Path, delay_s: float,
                                          started: Callable[[], None]) -> None:
    """From the interpreter's imports to the build of the namespaces and servers."""
    existing = snapshot()
    proc = start_lab(tmp_path, started)
    time.sleep(delay_s)
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=90)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith("lab: interrupted"), err
    assert leftovers(existing) == ("", "")


@pytest.mark.root
def test_a_second_signal_does_not_interrupt_the_teardown(tmp_path: Path) -> None:
    existing = snapshot()
    proc = start_lab(tmp_path, as_from_a_terminal)
    assert proc.stdout is not None
    assert proc.stdout.readline().startswith("run ")
    time.sleep(2.5)  # building
    proc.send_signal(signal.SIGINT)
    time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=90)
    assert proc.returncode == 130, err
    assert "Traceback" not in err, err
    assert leftovers(existing) == ("", "")


@pytest.mark.root
def test_a_closed_pipe_changes_no_measurement(tmp_path: Path) -> None:
    """`lab run --plain | head -2`: the reader goes after two lines; the trial still sees its
    client recover, records the outage, and the exit code is the verdict's."""
    path = tmp_path / "short.toml"
    path.write_text(SHORT)
    proc = subprocess.run(
        ["bash", "-c", f"{sys.executable} -m lab.cli run {path} --out {tmp_path / 'out'} "
         "--plain | head -2; echo rc=${PIPESTATUS[0]} >&2"],
        cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert proc.stdout.count("\n") == 2
    assert proc.stderr.strip().splitlines()[-1] == "rc=0", proc.stderr
    (run_dir,) = (tmp_path / "out").iterdir()
    with open(run_dir / "summary.csv") as f:
        (row,) = list(csv.DictReader(f))
    assert row["verdict"].startswith("ok"), row["verdict"]
    assert 0 < float(row["measured_outage_s"]) < 2.0
    trial = json.loads((run_dir / "short" / "trial.json").read_text())
    recovered = [e for e in (run_dir / "short" / "events.csv").read_text().splitlines()
                 if ",recovered," in e]
    assert recovered and trial["measured"]["outage_s"] == pytest.approx(
        float(row["measured_outage_s"]), abs=1e-3)
