"""The image builds' progress (lab.images.progress) on real processes: each stage says when it
starts and how long it took, a long one says it still runs, a failed one keeps its log and
names it in the error line, and a build waiting for another's lock says whose."""

from __future__ import annotations

import os
import queue
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO

import pytest

from lab.errors import LabError
from lab.images import debootstrap, progress
from lab.images import vm as vm_image
from lab.net.process import find_binary

ROOT = Path(__file__).resolve().parents[2]

# holds the lock until a line arrives on stdin (then, if asked, "finishes" a VM image first)
HOLDER = """
import sys
from pathlib import Path
from lab.images import progress
with progress.exclusive(Path(sys.argv[1]), "holder"):
    print("held", flush=True)
    sys.stdin.readline()
    for name in sys.argv[2:]:
        Path(name).parent.mkdir(parents=True, exist_ok=True)
        Path(name).write_text("x")
"""
WAITER = """
import sys
from pathlib import Path
from lab.images import progress
with progress.exclusive(Path(sys.argv[1]), "second build"):
    print("inside", flush=True)
"""
VM_BUILD = """
from lab.images import vm
report = vm.build()
print(f"built={report.built}", flush=True)
"""


class Lines:
    """A real process's output lines, read by a thread, awaited with a timeout."""

    def __init__(self, stream: IO[str]) -> None:
        self._q: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self._q.put(line.rstrip("\n"))

    def next(self, timeout: float = 10) -> str:
        return self._q.get(timeout=timeout)

    def empty_for(self, seconds: float) -> bool:
        try:
            self._q.get(timeout=seconds)
        except queue.Empty:
            return True
        return False


def python(code: str, *args: str, env: dict[str, str] | None = None,
           stdin: int | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", code, *args], stdin=stdin,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})


def test_a_stage_says_its_name_then_its_time(tmp_path: Path) -> None:
    said: list[str] = []
    logs = tmp_path / "logs"
    with progress.Build("t image", logs, said.append, stages=2) as build:
        with build.stage("first", "a real process") as log:
            debootstrap.run_logged(["sh", "-c", "echo working; sleep 0.3"], "first", log)
            assert "working" in log.read_text()
        with build.stage("second"):
            pass
    print("\n".join(said))
    assert said[0] == "t image: [1/2] first (a real process) ..."
    m = re.fullmatch(r"t image: \[1/2\] first \.\.\. (\d+\.\d) s", said[1])
    assert m and 0.3 <= float(m.group(1)) < 5, said[1]
    assert said[2] == "t image: [2/2] second ..."
    assert re.fullmatch(r"t image: \[2/2\] second \.\.\. 0\.\d s", said[3])
    assert not logs.exists()  # a build that succeeded leaves no logs


def test_a_failed_stage_keeps_its_log_and_names_it_in_one_line(tmp_path: Path) -> None:
    said: list[str] = []
    logs = tmp_path / "logs"
    script = "for i in $(seq 1 20); do echo step $i; done; echo 'E: no such mirror' >&2; exit 7"
    with pytest.raises(LabError) as err, progress.Build("t image", logs, said.append) as build:
        with build.stage("debootstrap"):
            pass
        with build.stage("provision") as log:
            debootstrap.run_logged(["sh", "-c", script], "provision.sh in the chroot", log)
    line = str(err.value)
    print(line)
    log = logs / "provision.log"
    assert re.fullmatch(
        r"t image: provision failed after \d+\.\d s: provision\.sh in the chroot failed "
        rf"\(exit 7\): E: no such mirror; log: {re.escape(str(log))} -- .+", line), line
    assert "\n" not in line
    kept = log.read_text()  # all of it, not just the end the error quotes
    assert "step 1\n" in kept and kept.rstrip().endswith("E: no such mirror")
    assert (logs / "debootstrap.log").exists()  # the whole failed build's logs stay
    assert said[-1] == "t image: provision ..."  # the error line is the failure's one line
    with progress.Build("t image", logs, said.append):
        assert list(logs.iterdir()) == []  # the next build starts with no old logs


def test_a_long_stage_says_it_still_runs_with_its_logs_last_line(tmp_path: Path) -> None:
    said: list[str] = []
    with progress.Build("t", tmp_path / "logs", said.append, heartbeat_s=0.3) as build, \
            build.stage("slow") as log:
        debootstrap.run_logged(["sh", "-c", "echo 'I: Retrieving libc6'; sleep 1.2"], "slow",
                               log)
    print("\n".join(said))
    beats = said[1:-1]
    assert len(beats) >= 2, said
    assert all(re.fullmatch(r"t: slow \.\.\. \d s: I: Retrieving libc6", b) for b in beats)
    assert re.fullmatch(r"t: slow \.\.\. 1\.\d s", said[-1])


def test_a_second_build_waiting_for_the_lock_says_whose_it_is(tmp_path: Path) -> None:
    lock = tmp_path / ".lock"
    holder = python(HOLDER, str(lock), stdin=subprocess.PIPE)
    assert holder.stdout is not None and holder.stdin is not None
    try:
        assert holder.stdout.readline() == "held\n"
        waiter = python(WAITER, str(lock))
        assert waiter.stdout is not None and waiter.stderr is not None
        out, err = Lines(waiter.stdout), Lines(waiter.stderr)
        first = err.next()
        print(first)
        assert first == f"second build: waiting for the build of pid {holder.pid} (lock {lock})"
        assert out.empty_for(1.0) and waiter.poll() is None  # blocked, said so once
        assert err.empty_for(0.1)
        t0 = time.monotonic()
        holder.stdin.write("go\n")
        holder.stdin.flush()
        assert out.next() == "inside"
        got = err.next()
        print(got, f"(released {time.monotonic() - t0:.2f} s ago)")
        assert re.fullmatch(r"second build: got the lock after \d+\.\d s", got)
        assert waiter.wait(10) == 0
    finally:
        holder.kill()
        holder.wait()


def test_lock_holder_from_the_kernel_and_from_the_file(tmp_path: Path) -> None:
    lock = tmp_path / ".lock"
    with progress.exclusive(lock, "me"):
        fd = os.open(lock, os.O_RDONLY)
        try:
            assert progress.lock_holder(fd) == os.getpid()  # /proc/locks
        finally:
            os.close(fd)
        assert lock.read_text() == f"{os.getpid()}\n"  # what a reader without it sees


@pytest.mark.skipif(find_binary("debootstrap") is None or find_binary("mkfs.ext4") is None,
                    reason="the VM build's tools are not installed")
def test_a_vm_build_waits_for_the_running_one_and_uses_its_image(tmp_path: Path) -> None:
    """The real vm.build() in a second process: it says it waits, and when the first build
    finishes the image meanwhile, it builds nothing."""
    state = tmp_path / "vm"
    state.mkdir()
    env = {"BHL_VM_DIR": str(state)}
    image = vm_image.Image(state / vm_image.inputs_key())
    files = [str(p) for p in (image.kernel, image.initrd, image.rootfs)]
    holder = python(HOLDER, str(state / ".lock"), *files, stdin=subprocess.PIPE, env=env)
    assert holder.stdout is not None and holder.stdin is not None
    try:
        assert holder.stdout.readline() == "held\n"
        second = python(VM_BUILD, env=env)
        assert second.stdout is not None and second.stderr is not None
        err = Lines(second.stderr)
        said = err.next(30)
        print(said)
        assert said == (f"vm image: waiting for the build of pid {holder.pid} "
                        f"(lock {state / '.lock'})")
        holder.stdin.write("go\n")
        holder.stdin.flush()
        assert holder.wait(10) == 0
        assert second.stdout.read() == "built=False\n"
        assert second.wait(10) == 0
        assert re.fullmatch(r"vm image: got the lock after \d+\.\d s", err.next())
        assert not (state / "logs").exists()  # no build ran
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.root
@pytest.mark.skipif(find_binary("debootstrap") is None, reason="debootstrap is not installed")
def test_a_failed_debootstrap_keeps_its_log(tmp_path: Path) -> None:
    """Real debootstrap against a mirror that is not there: one error line with its log."""
    said: list[str] = []
    logs = tmp_path / "logs"
    t0 = time.monotonic()
    with pytest.raises(LabError) as err, progress.Build("t image", logs, said.append) as build, \
            build.stage("debootstrap") as log:
        debootstrap.debootstrap(tmp_path / "rootfs", log, mirror="http://127.0.0.1:9/debian")
    print(err.value, f"({time.monotonic() - t0:.1f} s)")
    assert re.fullmatch(r"t image: debootstrap failed after \d+\.\d s: debootstrap exited 1: "
                        rf"E: .+; log: {re.escape(str(log))} -- is the Debian mirror reachable\?"
                        r" set BHL_DEBIAN_MIRROR to another", str(err.value)), str(err.value)
    assert "127.0.0.1:9" in log.read_text()
