"""lab.net.runtime: run identity, address slots, claims and the state `lab clean` reads.

Every test works in its own state dir (the `state_dir` fixture), so a user's run on this
machine, its slots and its records, are never seen or touched; claims are machine-wide, so a
test only asks about the run ids it made itself.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.errors import LabError
from lab.net import runtime
from lab.net.runtime import ADDRESS_POOL, MAX_SLOTS, Claim, new_run, pid_alive

# a process that holds a claim (and a child of its own) until killed
HOLD_CLAIM = """
import subprocess, sys, time
from lab.net.runtime import Claim
claim = Claim.take(sys.argv[1])
child = subprocess.Popen(["sleep", "60"])
print(claim is not None, child.pid, flush=True)
time.sleep(60)
"""


@pytest.fixture
def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


@pytest.fixture
def sleeper() -> Iterator[int]:
    """The pid of a live process that is not this one (an older lab's run owner)."""
    proc = subprocess.Popen(["sleep", "60"])
    yield proc.pid
    proc.kill()
    proc.wait()


@pytest.fixture
def held() -> Iterator[Claim]:
    """A claim this process holds, of a fresh id (a live run without the rest of one)."""
    claim = runtime._new_claim()
    yield claim
    claim.close()


def hold_in_child(run_id: str) -> tuple[subprocess.Popen[str], int]:
    """A subprocess holding run_id's claim; returns it and the pid of its own child."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD_CLAIM, run_id], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None
    with proc.stdout:
        took, child = proc.stdout.readline().split()
    assert took == "True"
    return proc, int(child)


def _hold_slot(state: Path, slot: int, owner: dict[str, object] | None = None,
               text: str | None = None) -> None:
    slots = state / "slots"
    slots.mkdir(parents=True, exist_ok=True)
    (slots / str(slot)).write_text(text if text is not None else json.dumps(owner))


def test_state_dir_comes_from_the_environment(tmp_path: Path) -> None:
    code = "from lab.net import runtime; print(runtime.STATE_DIR); print(runtime.CACHE_DIR)"
    env = {**os.environ, "BHL_STATE_DIR": str(tmp_path / "s"),
           "BHL_CACHE_DIR": str(tmp_path / "c")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True).stdout.split()
    assert out == [str(tmp_path / "s"), str(tmp_path / "c")]


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


@pytest.mark.root
def test_new_run_claims_a_slot_and_records_itself(state_dir: Path, tmp_path: Path) -> None:
    run = new_run(tmp_path)
    try:
        assert run.slot == 0  # the lowest free one
        owner = json.loads((state_dir / "slots" / "0").read_text())
        assert owner == {"pid": os.getpid(), "run_id": run.run_id, "netns": runtime.netns_id()}
        record = json.loads(run.state_file.read_text())
        assert run.state_file == state_dir / f"run-{run.run_id}.json"
        assert record == {"run_id": run.run_id, "pid": os.getpid(),
                          "netns": runtime.netns_id(), "slot": 0,
                          "workdir": str(run.workdir), "namespaces": []}
        assert run.workdir.parent == tmp_path and run.workdir.is_dir()
        assert run.prefix == f"bhl-{run.run_id}-"
        assert runtime.run_id_of(f"{run.prefix}client") == run.run_id
        assert run.run_id in runtime.claimed_run_ids()
        assert Claim.take(run.run_id) is None  # held: nobody else can take the id
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
    assert run.run_id not in runtime.claimed_run_ids()


@pytest.mark.root
def test_scratch_and_state_are_root_only(state_dir: Path, tmp_path: Path) -> None:
    """Scratch dir and STATE_DIR 0700, state files 0600, even where an older lab left 0755."""
    state_dir.mkdir(mode=0o755)
    os.chmod(state_dir, 0o755)
    run = new_run(tmp_path)
    try:
        assert mode(run.workdir) == 0o700
        assert mode(state_dir) == mode(state_dir / "slots") == 0o700
        assert mode(run.state_file) == 0o600
        assert mode(state_dir / "slots" / "0") == mode(state_dir / "slots" / ".lock") == 0o600
        run.record()  # rewritten: still 0600
        assert mode(run.state_file) == 0o600
    finally:
        run.release()


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
        a.release()  # again: c's slot is not a's to free
        assert json.loads((state_dir / "slots" / str(c.slot)).read_text())["run_id"] == c.run_id
        c.release()
    finally:
        a.release()
        b.release()


@pytest.mark.root
def test_new_run_skips_an_id_a_live_run_holds(
    state_dir: Path, tmp_path: Path, held: Claim, monkeypatch: pytest.MonkeyPatch
) -> None:
    fresh = runtime._new_claim()
    fresh_id = fresh.run_id
    fresh.close()
    ids = iter([held.run_id, fresh_id])
    monkeypatch.setattr(runtime.secrets, "token_hex", lambda n: next(ids))
    run = new_run(tmp_path)
    try:
        assert run.run_id == fresh_id
    finally:
        run.release()


@pytest.mark.root
def test_slots_of_dead_or_half_written_owners_are_reclaimed(
    state_dir: Path, tmp_path: Path, held: Claim, dead_pid: int, sleeper: int
) -> None:
    here = runtime.netns_id()
    _hold_slot(state_dir, 0, {"pid": os.getpid(), "run_id": held.run_id, "netns": here})
    _hold_slot(state_dir, 1, {"pid": sleeper, "run_id": "older"})  # an older lab's: by pid
    # a killed run whose pid was recycled (a live process): its claim is gone, so it is dead
    _hold_slot(state_dir, 2, {"pid": sleeper, "run_id": "0dead0", "netns": here})
    _hold_slot(state_dir, 3, {"pid": dead_pid, "run_id": "older2"})
    run = new_run(tmp_path)
    try:
        assert run.slot == 2
        assert json.loads((state_dir / "slots" / "2").read_text())["pid"] == os.getpid()
        other = new_run(tmp_path)
        assert other.slot == 3
        other.release()
    finally:
        run.release()
    _hold_slot(state_dir, 2, text='{"pid": ')  # its writer died mid-write
    run = new_run(tmp_path)
    try:
        assert run.slot == 2
    finally:
        run.release()
    assert (state_dir / "slots" / "0").exists()  # the live runs' slots were left alone
    assert (state_dir / "slots" / "1").exists()


@pytest.mark.root
def test_all_slots_taken_is_a_clear_error(state_dir: Path, tmp_path: Path, held: Claim) -> None:
    for slot in range(MAX_SLOTS):
        _hold_slot(state_dir, slot, {"pid": os.getpid(), "run_id": held.run_id,
                                     "netns": runtime.netns_id()})
    claimed = set(runtime.claimed_run_ids())
    with pytest.raises(LabError, match=f"all {MAX_SLOTS} address slots are in use"):
        new_run(tmp_path)
    assert list(tmp_path.glob("bhl-*")) == []  # no scratch dir made
    assert set(runtime.claimed_run_ids()) <= claimed  # nor a claim kept


def test_claim_is_exclusive_and_dies_with_its_process() -> None:
    """The kernel frees a claim when its holder dies, though a child of the holder lives on
    (sockets are close-on-exec): an orphaned server does not keep a killed run alive."""
    claim = runtime._new_claim()
    run_id = claim.run_id
    assert Claim.take(run_id) is None
    claim.close()
    proc, child = hold_in_child(run_id)
    try:
        assert Claim.take(run_id) is None and run_id in runtime.claimed_run_ids()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert pid_alive(child)
        assert run_id not in runtime.claimed_run_ids()
        again = Claim.take(run_id)
        assert again is not None
        again.close()
    finally:
        proc.kill()
        proc.wait()
        os.kill(child, signal.SIGKILL)


def free_id() -> str:
    """A run id no one holds now."""
    claim = runtime._new_claim()
    claim.close()
    return claim.run_id


@pytest.mark.root
def test_live_runs(state_dir: Path, dead_pid: int, sleeper: int, tmp_path: Path) -> None:
    """Live by claim where a record has one, by pid for an older lab's record: a recycled
    pid does not keep a killed run alive."""
    state_dir.mkdir()
    here = runtime.netns_id()
    theirs = free_id()
    proc, child = hold_in_child(theirs)
    mine = new_run(tmp_path)
    try:
        records = {
            theirs: {"pid": proc.pid, "netns": here},  # held by another process
            "recycled": {"pid": sleeper, "netns": here},  # claim gone, its pid reused
            "older": {"pid": sleeper},  # an older lab's record: by its pid
            "olderdead": {"pid": dead_pid},
        }
        for run_id, record in records.items():
            (state_dir / f"run-{run_id}.json").write_text(json.dumps({"run_id": run_id,
                                                                      **record}))
        (state_dir / "run-torn.json").write_text("{")  # unreadable: skipped
        assert len(runtime.recorded_runs()) == 5
        live = {r["run_id"] for r in runtime.live_runs(exclude_pids=(os.getpid(),))}
        assert live == {theirs, "older"}
        assert mine.run_id in {r["run_id"] for r in runtime.live_runs()}
    finally:
        mine.release()
        proc.kill()
        proc.wait()
        os.kill(child, signal.SIGKILL)


@pytest.mark.root
def test_live_run_ids_see_every_state_dir(state_dir: Path, tmp_path: Path) -> None:
    """A run of another state dir, held by another process, is alive here and foreign; this
    process's own runs are not foreign, however alive."""
    other = {**os.environ, "BHL_STATE_DIR": str(tmp_path / "other")}
    code = ("import time; from lab.net.runtime import new_run; r = new_run(); "
            "print(r.run_id, flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code], env=other, stdout=subprocess.PIPE,
                            text=True)
    mine = new_run(tmp_path)
    try:
        assert proc.stdout is not None
        with proc.stdout:
            theirs = proc.stdout.readline().strip()
        assert runtime.recorded_runs() == [json.loads(mine.state_file.read_text())]
        assert {theirs, mine.run_id} <= runtime.live_run_ids()
        assert theirs not in runtime.live_run_ids((proc.pid,))
        assert mine.run_id not in runtime.live_run_ids((os.getpid(), None))
        foreign = runtime.foreign_run_ids((os.getpid(),))
        assert theirs in foreign and mine.run_id not in foreign
        assert theirs not in runtime.foreign_run_ids((os.getpid(), proc.pid))
        # a record of another pid (a user's run killed meanwhile) is not this test's either
        (state_dir / "run-killed.json").write_text(json.dumps({"run_id": "killed", "pid": 1}))
        assert "killed" in runtime.foreign_run_ids((os.getpid(),))
    finally:
        mine.release()
        proc.kill()
        proc.wait()
    assert theirs not in runtime.live_run_ids()


def test_run_id_of() -> None:
    assert runtime.run_id_of("bhl-0a1b2c-client") == "0a1b2c"
    assert runtime.run_id_of("bhl-0a1b2c") == "0a1b2c"
    assert runtime.run_id_of("bhl-doctor-1234") is None  # no run can have made it
    assert runtime.run_id_of("bhl--x") is None
    assert runtime.run_id_of("other-0a1b2c-client") is None


def test_pid_alive(dead_pid: int, sleeper: int) -> None:
    assert pid_alive(os.getpid()) and pid_alive(sleeper)
    assert not pid_alive(dead_pid)
    # 0 and -1 are not processes: os.kill would signal a whole group / every process
    assert not pid_alive(0)
    assert not pid_alive(-1)
