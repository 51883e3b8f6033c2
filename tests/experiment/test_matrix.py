"""A matrix interrupted midway resumes without redoing its finished trials (issue 3)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from lab.config import scenario
from lab.experiment.matrix import MatrixRun
from lab.experiment.rundir import new_run_dir

ROOT = Path(__file__).resolve().parents[2]


def test_runs_started_in_the_same_second_get_their_own_directory(tmp_path: Path) -> None:
    paths = [new_run_dir(tmp_path / "results", "ci-short") for _ in range(4)]
    assert len(set(paths)) == 4 and all(p.is_dir() for p in paths)
    by_second: dict[str, list[str]] = {}
    for p in paths:  # <UTC stamp>-<scenario>[-n]; the stamp is YYYYmmdd-HHMMSS
        by_second.setdefault(p.name[:15], []).append(p.name[16:])
    for names in by_second.values():  # the first of a second plain, then -2, -3, ...
        assert names == ["ci-short", *(f"ci-short-{n}" for n in range(2, len(names) + 1))]
    assert max(len(n) for n in by_second.values()) >= 2  # (4 calls span at most 2 seconds)


@pytest.mark.root
def test_interrupted_matrix_resumes_only_what_did_not_finish(tmp_path: Path) -> None:
    scen = scenario.load(ROOT / "scenarios" / "compare-short.toml")
    fast, slow = "expire-nodest-conn", "user-timeout"  # ~6 s and ~9 s of trial
    first = MatrixRun(scen, tmp_path)
    runner = threading.Thread(target=first.run)
    runner.start()
    deadline = time.monotonic() + 60
    while fast not in first.rows and time.monotonic() < deadline:
        time.sleep(0.05)
    assert fast in first.rows and slow not in first.rows
    first.stop.set()  # what Ctrl-C does: every running trial tears itself down
    runner.join(timeout=60)
    assert not runner.is_alive()
    assert first.statuses[slow].phase == "interrupted"
    assert not (tmp_path / slow / "trial.json").exists()
    done_before = (tmp_path / fast / "trial.json").stat().st_mtime_ns

    again = MatrixRun(scen, tmp_path)
    rows = again.run()
    assert again.resumed == [fast]  # not run again ...
    assert (tmp_path / fast / "trial.json").stat().st_mtime_ns == done_before
    assert [r["trial"] for r in rows] == [t.name for t in scen.trials]  # ... and all there
    assert float(next(r for r in rows if r["trial"] == slow)["measured_outage_s"]) > 3
