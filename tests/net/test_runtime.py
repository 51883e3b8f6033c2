"""lab.net.runtime: run identity, address slots and the state `lab clean` reads.

Every test works in its own state dir (BHL_STATE_DIR's variable, pointed at tmp_path), so a
user's run on this machine, its slots and its records, are never seen or touched.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.errors import LabError
from lab.net import runtime
from lab.net.runtime import ADDRESS_POOL, MAX_SLOTS, new_run, pid_alive


@pytest.fixture
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private STATE_DIR: what BHL_STATE_DIR sets when the module is imported."""
    state = tmp_path / "state"
    monkeypatch.setenv("BHL_STATE_DIR", str(state))
    monkeypatch.setattr(runtime, "STATE_DIR", state)
    return state


@pytest.fixture
def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


@pytest.fixture
def sleeper() -> Iterator[int]:
    """The pid of a live process that is not this one (another run's owner)."""
    proc = subprocess.Popen(["sleep", "60"])
    yield proc.pid
    proc.kill()
    proc.wait()


def _hold_slot(state: Path, slot: int, pid: int, text: str | None = None) -> None:
    slots = state / "slots"
    slots.mkdir(parents=True, exist_ok=True)
    (slots / str(slot)).write_text(text if text is not None else json.dumps(
        {"pid": pid, "run_id": f"other{slot}"}))


def test_state_dir_comes_from_the_environment(tmp_path: Path) -> None:
    code = "from lab.net import runtime; print(runtime.STATE_DIR); print(runtime.CACHE_DIR)"
    env = {**os.environ, "BHL_STATE_DIR": str(tmp_path / "s"),
           "BHL_CACHE_DIR": str(tmp_path / "c")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True).stdout.split()
    assert out == [str(tmp_path / "s"), str(tmp_path / "c")]


@pytest.mark.root
def test_new_run_claims_a_slot_and_records_itself(state_dir: Path, tmp_path: Path) -> None:
    run = new_run(tmp_path)
    try:
        assert run.slot == 0  # the lowest free one
        owner = json.loads((state_dir / "slots" / "0").read_text())
        assert owner == {"pid": os.getpid(), "run_id": run.run_id}
        record = json.loads(run.state_file.read_text())
        assert run.state_file == state_dir / f"run-{run.run_id}.json"
        assert record == {"run_id": run.run_id, "pid": os.getpid(), "slot": 0,
                          "workdir": str(run.workdir), "namespaces": []}
        assert run.workdir.parent == tmp_path and run.workdir.is_dir()
        assert run.workdir.stat().st_mode & 0o777 == 0o755
        assert run.prefix == f"bhl-{run.run_id}-"
        assert run.subnet.subnet_of(ADDRESS_POOL) and run.subnet.prefixlen == 21
        links = [run.link_subnet(i) for i in range(8)]
        assert all(link.subnet_of(run.subnet) and link.prefixlen == 24 for link in links)
        assert len(set(links)) == 8
        assert runtime.recorded_runs() == [record]
    finally:
        run.release()
    assert not run.workdir.exists() and not run.state_file.exists()
    assert not (state_dir / "slots" / "0").exists()
    assert runtime.recorded_runs() == []


@pytest.mark.root
def test_two_runs_get_different_slots_and_ids(state_dir: Path, tmp_path: Path) -> None:
    a = new_run(tmp_path)
    b = new_run(tmp_path)
    try:
        assert a.run_id != b.run_id and a.slot != b.slot
        assert not a.subnet.overlaps(b.subnet)
        a.release()
        c = new_run(tmp_path)  # a's slot is free again
        assert c.slot == a.slot and c.run_id not in (a.run_id, b.run_id)
        c.release()
    finally:
        a.release()
        b.release()


@pytest.mark.root
def test_slots_of_dead_or_half_written_owners_are_reclaimed(
    state_dir: Path, tmp_path: Path, dead_pid: int, sleeper: int
) -> None:
    _hold_slot(state_dir, 0, sleeper)  # a live run: skipped
    _hold_slot(state_dir, 1, dead_pid)  # its run was killed: reclaimed
    run = new_run(tmp_path)
    try:
        assert run.slot == 1
        assert json.loads((state_dir / "slots" / "1").read_text())["pid"] == os.getpid()
    finally:
        run.release()
    _hold_slot(state_dir, 1, 0, text='{"pid": ')  # its writer died mid-write
    run = new_run(tmp_path)
    try:
        assert run.slot == 1
    finally:
        run.release()
    assert (state_dir / "slots" / "0").exists()  # the live run's slot was left alone


@pytest.mark.root
def test_all_slots_taken_is_a_clear_error(state_dir: Path, tmp_path: Path, sleeper: int) -> None:
    for slot in range(MAX_SLOTS):
        _hold_slot(state_dir, slot, sleeper)
    with pytest.raises(LabError, match=f"all {MAX_SLOTS} address slots are in use"):
        new_run(tmp_path)
    assert list(tmp_path.glob("bhl-*")) == []  # no scratch dir made


def test_live_runs(state_dir: Path, dead_pid: int, sleeper: int) -> None:
    state_dir.mkdir()
    for run_id, pid in (("live", sleeper), ("dead", dead_pid), ("mine", os.getpid())):
        (state_dir / f"run-{run_id}.json").write_text(json.dumps({"run_id": run_id, "pid": pid}))
    (state_dir / "run-torn.json").write_text("{")  # unreadable: skipped
    assert [r["run_id"] for r in runtime.recorded_runs()] == ["dead", "live", "mine"]
    live = runtime.live_runs(exclude_pids=(os.getpid(),))
    assert [r["run_id"] for r in live] == ["live"]


def test_pid_alive(dead_pid: int, sleeper: int) -> None:
    assert pid_alive(os.getpid()) and pid_alive(sleeper)
    assert not pid_alive(dead_pid)
    # 0 and -1 are not processes: os.kill would signal a whole group / every process
    assert not pid_alive(0)
    assert not pid_alive(-1)
