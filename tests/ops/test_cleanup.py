"""`lab clean` removes exactly what a kill -9'd run left: namespaces, their processes,
scratch dirs and slots, and nothing of a live run: not one still being built, not one of
another state dir, not the doctor's probe.

Every test has its own state dir (its subprocesses too), and looks only at the runs it made:
a user's lab run may be going on beside the suite.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pyroute2 import netns

from lab.errors import LabError
from lab.net import capabilities, runtime
from lab.net.runtime import Run
from lab.net.topology import Network, Topology, in_netns, lvs_topology
from lab.ops import cleanup, doctor

BUILD_AND_HANG = """
import sys, time
from lab.net.runtime import new_run
from lab.net.topology import Network, lvs_topology
run = new_run()
net = Network(lvs_topology(), run)
server = net["backend1"].popen(["sleep", "1000"])
print(run.prefix, run.workdir, server.pid, flush=True)
time.sleep(1000)
"""

# `lab clean`'s run part, over and over, in another process (and maybe another state dir)
CLEAN_LOOP = """
import sys, time
from lab.ops import cleanup
deadline = time.monotonic() + float(sys.argv[1])
print("looping", flush=True)
while time.monotonic() < deadline:
    for line in cleanup.clean_runs():
        print(line, flush=True)
"""


def namespaces() -> set[str]:
    return set(netns.listnetns())


def running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's zombie waits for a reaper we do not control)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def start_run(env: dict[str, str] | None = None) -> tuple[subprocess.Popen[str], str, Path, int]:
    proc = subprocess.Popen([sys.executable, "-c", BUILD_AND_HANG], stdout=subprocess.PIPE,
                            text=True, env=env)
    assert proc.stdout is not None
    prefix, workdir, pid = proc.stdout.readline().split()
    return proc, prefix, Path(workdir), int(pid)


def stop(proc: subprocess.Popen[str], keep_output: bool = False) -> None:
    proc.kill()
    proc.wait()
    if proc.stdout is not None and not keep_output:
        proc.stdout.close()


def mine(removed: list[str], run_ids: list[str]) -> list[str]:
    """The lines of clean's output about our runs (a user's leftovers may be removed too)."""
    return [line for line in removed if any(f"{runtime.NS_PREFIX}{r}-" in line
                                            or f"run {r}" in line for r in run_ids)]


@contextlib.contextmanager
def looping_clean() -> Iterator[list[str]]:
    """clean_runs() in a loop on a thread while the block runs; yields what it removed."""
    removed: list[str] = []
    done = threading.Event()
    errors: list[BaseException] = []

    def loop() -> None:
        try:
            while not done.is_set():
                removed.extend(cleanup.clean_runs())
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=loop, name="cleaner")
    thread.start()
    try:
        yield removed
    finally:
        done.set()
        thread.join()
    assert not errors, errors


def free_id() -> str:
    """A run id no one holds now (a run that is gone)."""
    claim = runtime._new_claim()
    claim.close()
    return claim.run_id


def two_hosts() -> Topology:
    topo = Topology()
    topo.add_host("a")
    topo.add_host("b")
    topo.add_link("a", "b")
    return topo


def build_runs(tmp_path: Path, count: int, during: Callable[[Network], None]) -> list[str]:
    """`count` runs built and torn down through the real API (recorded before created)."""
    run_ids = []
    for _ in range(count):
        run = runtime.new_run(tmp_path)
        run_ids.append(run.run_id)
        try:
            with Network(two_hosts(), run) as net:
                during(net)
        finally:
            run.release()
    return run_ids


def intact(net: Network) -> None:
    """Every namespace of the run is there, with its end of the link (a namespace removed and
    re-created meanwhile would have lost it)."""
    time.sleep(0.01)
    for host in net.hosts.values():
        peer = "b" if host.name == "a" else "a"
        assert host.ns in namespaces(), f"{host.ns} vanished"
        host.run(["ip", "link", "show", f"to-{peer}"])


@pytest.mark.root
def test_clean_removes_a_killed_run_and_spares_a_live_one(state_dir: Path) -> None:
    live, live_prefix, live_workdir, _ = start_run()
    dead, prefix, workdir, server_pid = start_run()
    try:
        stop(dead)  # kill -9
        assert any(n.startswith(prefix) for n in namespaces()) and workdir.exists()
        removed = cleanup.clean_runs()  # not clean(): see test_clean_cli_reports_count
        assert any(prefix in line for line in removed)
        assert not any(n.startswith(prefix) for n in namespaces())
        assert not workdir.exists()
        assert not running(server_pid)  # the server in it was killed too
        assert not list(state_dir.glob(f"run-{prefix.split('-')[1]}.json"))
        assert len([n for n in namespaces() if n.startswith(live_prefix)]) == 4  # untouched
        assert live_workdir.exists()
    finally:
        stop(live)
        cleanup.clean_runs()
    assert not any(n.startswith(live_prefix) for n in namespaces())
    assert runtime.recorded_runs() == [] and not list((state_dir / "slots").glob("[0-9]*"))


@pytest.mark.root
def test_clean_racing_runs_being_built_removes_none_of_them(state_dir: Path,
                                                            tmp_path: Path) -> None:
    """Runs recorded and created while clean runs in a loop beside them (the old bug: a run
    that recorded and created between clean's reading of the records and its listing of the
    namespaces lost them)."""
    with looping_clean() as removed:
        run_ids = build_runs(tmp_path, 25, intact)
    assert mine(removed, run_ids) == []


@pytest.mark.root
def test_clean_of_another_state_dir_spares_live_runs(state_dir: Path, tmp_path: Path) -> None:
    """`BHL_STATE_DIR=/tmp/other lab clean` (its run part, in another process, in a loop)
    while runs of this state dir are built and live: it sees their namespaces and no record,
    and still leaves them alone."""
    other = {**os.environ, "BHL_STATE_DIR": str(tmp_path / "other")}
    live, prefix, workdir, server_pid = start_run()
    loop = subprocess.Popen([sys.executable, "-c", CLEAN_LOOP, "60"], env=other,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert loop.stdout is not None and loop.stdout.readline() == "looping\n"
        run_ids = [prefix.split("-")[1], *build_runs(tmp_path, 10, intact)]
        assert len([n for n in namespaces() if n.startswith(prefix)]) == 4
        assert workdir.exists() and running(server_pid)
    finally:
        stop(loop, keep_output=True)
        stop(live)
    assert loop.stdout is not None
    with loop.stdout:
        assert mine(loop.stdout.read().splitlines(), run_ids) == []
    removed = subprocess.run([sys.executable, "-c", CLEAN_LOOP, "0.5"], env=other,
                             capture_output=True, text=True, check=True).stdout
    assert any(prefix in line and "no record" in line for line in removed.splitlines())
    cleanup.clean_runs()  # its own state dir: the record, the slot and the scratch dir
    assert not workdir.exists() and runtime.recorded_runs() == []


@pytest.mark.root
def test_doctors_netem_probe_survives_a_concurrent_clean(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[Run] = []
    real = runtime.new_run

    def new_run(scratch_root: Path | None = None) -> Run:
        made.append(real(scratch_root))
        return made[-1]

    monkeypatch.setattr(runtime, "new_run", new_run)
    first = capabilities.probe_netem()  # no clean beside it
    try:
        with looping_clean() as removed:
            for _ in range(10):
                capabilities.netem_available.cache_clear()
                check = doctor._netem()
                assert (check.ok, check.detail) == first
    finally:
        capabilities.netem_available.cache_clear()
    run_ids = [r.run_id for r in made]
    assert len(run_ids) == 11 and mine(removed, run_ids) == []
    assert not any(runtime.run_id_of(n) in run_ids for n in namespaces())


@pytest.mark.root
def test_unrecorded_namespaces_go_by_their_runs_claim(state_dir: Path) -> None:
    """No record here: a namespace whose run holds its claim stays, one whose run is gone
    (or that no run can have made) goes."""
    live = runtime._new_claim()
    dead = free_id()
    odd = f"bhl-doctor{dead}"  # an older doctor's probe was bhl-doctor-<pid>
    names = [f"bhl-{live.run_id}-x", f"bhl-{dead}-x", f"bhl-{dead}-y", odd]
    try:
        for ns in names:
            netns.create(ns)
        removed = [line for line in cleanup.clean_runs() if dead in line or live.run_id in line]
        assert sorted(removed) == sorted([
            f"namespace {odd} (no run can claim it)",
            *(f"namespace {ns} (run {dead} gone, no record in {state_dir})" for ns in names[1:3])])
        assert names[0] in namespaces()
    finally:
        live.close()
        for ns in names:
            if ns in namespaces():
                netns.remove(ns)


@pytest.mark.root
def test_an_older_labs_record_is_judged_by_its_pid(state_dir: Path) -> None:
    """A record without a claim (a lab from before claims) is live while its pid is; it can
    only ever make clean remove namespaces of its own run."""
    sleeper = subprocess.Popen(["sleep", "60"])
    other = runtime._new_claim()  # a live run the record (wrongly) names
    ns = f"bhl-{free_id()}-old"
    names = [ns, f"bhl-{other.run_id}-x"]
    state_dir.mkdir()
    record = {"run_id": ns.split("-")[1], "pid": sleeper.pid, "slot": 5,
              "workdir": "/nonexistent/bhl-x", "namespaces": names}
    (state_dir / f"run-{record['run_id']}.json").write_text(json.dumps(record))
    for name in names:
        netns.create(name)
    try:
        assert mine(cleanup.clean_runs(), [str(record["run_id"]), other.run_id]) == []
        assert set(names) <= namespaces()
        sleeper.kill()
        sleeper.wait()
        assert mine(cleanup.clean_runs(), [str(record["run_id"]), other.run_id]) == [
            f"namespace {ns} (run {record['run_id']}, pid {sleeper.pid} gone)"]
        assert runtime.recorded_runs() == [] and names[1] in namespaces()
    finally:
        sleeper.kill()
        other.close()
        for name in set(names) & namespaces():
            netns.remove(name)


@pytest.mark.root
def test_a_dead_runs_slot_taken_since_is_left_to_its_new_owner(state_dir: Path,
                                                                tmp_path: Path) -> None:
    run = runtime.new_run(tmp_path)
    try:
        dead = {"run_id": free_id(), "pid": 1, "netns": runtime.netns_id(),
                "slot": run.slot, "workdir": "/nonexistent/bhl-x", "namespaces": []}
        (state_dir / f"run-{dead['run_id']}.json").write_text(json.dumps(dead))
        cleanup.clean_runs()
        assert not (state_dir / f"run-{dead['run_id']}.json").exists()
        assert json.loads((state_dir / "slots" / str(run.slot)).read_text())["run_id"] == \
            run.run_id
    finally:
        run.release()


@pytest.mark.root
def test_clean_refuses_to_run_inside_a_lab_namespace(state_dir: Path, tmp_path: Path) -> None:
    """From there no claim is visible: every run would look dead."""
    run = runtime.new_run(tmp_path)
    try:
        with Network(two_hosts(), run) as net:
            with pytest.raises(LabError, match="inside the lab namespace"):
                in_netns(net["a"].ns, cleanup.clean_runs)
            assert net["a"].ns in namespaces()
    finally:
        run.release()


@pytest.mark.root
def test_clean_all_removes_live_runs_too(state_dir: Path, tmp_path: Path) -> None:
    run = runtime.new_run(tmp_path)
    try:
        net = Network(lvs_topology(), run)
        removed = mine(cleanup.clean_runs(include_live=True), [run.run_id])
        assert len(removed) == 5  # 4 namespaces and the scratch dir
        assert not any(n.startswith(run.prefix) for n in namespaces())
        net.close()
    finally:
        run.release()


@pytest.mark.root
def test_clean_cli_reports_count() -> None:
    """The real `lab clean`, on the default state dir: a private one would make the docker
    part judge a user's docker run by records it cannot see."""
    out = subprocess.run([sys.executable, "-m", "lab.cli", "clean"], capture_output=True,
                         text=True, check=True).stdout
    assert "lab clean: removed" in out


WITHOUT_DOCKER = """
import sys
sys.modules["docker"] = None  # `import docker` raises ImportError, as without the extra
from lab import backends
from lab.experiment import trial
from lab.ops import cleanup
print(cleanup._clean_docker(include_live=False))
"""


def test_a_trial_and_clean_need_no_docker_module() -> None:
    """The docker SDK is an optional extra: process trials and `lab clean` import without it
    (the docker row of doctor and preflight's refusal are tested with them)."""
    proc = subprocess.run([sys.executable, "-c", WITHOUT_DOCKER], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
