"""Run dirs: made atomically, written by one lab at a time, resumed only by the same scenario
and settings (issue 13, point 3). Nothing here builds a trial."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lab.config import scenario
from lab.errors import LabError
from lab.experiment import rundir
from lab.experiment.matrix import MatrixRun

SCENARIO = """
[defaults]
deadline_s = 30
[[trial]]
name = "a"
[[trial]]
name = "b"
"""


def scen(tmp_path: Path, text: str = SCENARIO, overrides: list[str] | None = None
         ) -> scenario.Scenario:
    path = tmp_path / "s.toml"
    path.write_text(text)
    return scenario.load(path, overrides)


def recorded_run(tmp_path: Path, s: scenario.Scenario) -> Path:
    """A run dir as an earlier `lab run` of `s` leaves it (run.json, no trial finished)."""
    run_dir = rundir.new_run_dir(tmp_path / "results", s.name)
    (run_dir / "run.json").write_text(json.dumps({"scenario": s.source, **rundir.identity(s)}))
    return run_dir


def test_out_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "results").write_text("not a dir")
    with pytest.raises(LabError, match="is a file, not a directory"):
        rundir.new_run_dir(tmp_path / "results", "s")


def test_identity_records_the_file_hash_and_the_set_list(tmp_path: Path) -> None:
    a = scen(tmp_path, overrides=["client.tcp_retries2=5"])
    assert rundir.identity(a) == {"scenario_sha256": a.digest,
                                  "overrides": ["client.tcp_retries2=5"]}
    assert len(a.digest) == 64


def test_resume_with_the_same_scenario_and_settings_is_accepted(tmp_path: Path) -> None:
    s = scen(tmp_path, overrides=["client.tcp_retries2=5"])
    rundir.check_resume(recorded_run(tmp_path, s), s)


def test_resume_with_other_set_values_is_refused(tmp_path: Path) -> None:
    run_dir = recorded_run(tmp_path, scen(tmp_path, overrides=["client.tcp_retries2=5"]))
    with pytest.raises(LabError, match=r"ran with --set \['client.tcp_retries2=5'\]"):
        rundir.check_resume(run_dir, scen(tmp_path, overrides=["client.tcp_retries2=6"]))


def test_resume_with_another_scenario_file_is_refused(tmp_path: Path) -> None:
    run_dir = recorded_run(tmp_path, scen(tmp_path))
    with pytest.raises(LabError, match="ran another scenario file"):
        rundir.check_resume(run_dir, scen(tmp_path, SCENARIO.replace("30", "31")))


def test_resume_of_a_run_without_a_hash_is_refused(tmp_path: Path) -> None:
    run_dir = tmp_path / "old"
    run_dir.mkdir()
    (run_dir / "run.json").write_text(json.dumps({"scenario": {}}))
    with pytest.raises(LabError, match="records no scenario hash"):
        rundir.check_resume(run_dir, scen(tmp_path))


def test_a_held_run_dir_is_refused_naming_its_holder(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; "
         "from lab.experiment.rundir import RunDirLock; lock = RunDirLock(Path(sys.argv[1]));"
         " lock.acquire();"
         " print('held', flush=True); time.sleep(60)", str(tmp_path)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        with pytest.raises(LabError, match=f"in use by another lab \\(pid {holder.pid}\\)"):
            rundir.RunDirLock(tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait()
    deadline = time.monotonic() + 5  # the kernel drops a dead holder's flock
    with rundir.RunDirLock(tmp_path):
        assert time.monotonic() < deadline


def test_matrix_run_refuses_a_held_dir_before_writing_anything(tmp_path: Path) -> None:
    s = scen(tmp_path)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with rundir.RunDirLock(run_dir), pytest.raises(LabError, match="in use by another lab"):
        MatrixRun(s, run_dir).run()
    assert sorted(p.name for p in run_dir.iterdir()) == [".lock"]


def test_matrix_run_refuses_other_settings_before_writing_anything(tmp_path: Path) -> None:
    run_dir = recorded_run(tmp_path, scen(tmp_path, overrides=["client.tcp_retries2=5"]))
    before = (run_dir / "run.json").read_text()
    with pytest.raises(LabError, match="ran with --set"):
        MatrixRun(scen(tmp_path, overrides=["client.tcp_retries2=6"]), run_dir).run()
    assert (run_dir / "run.json").read_text() == before
