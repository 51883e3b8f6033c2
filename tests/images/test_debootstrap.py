"""lab.images.debootstrap's host-side pieces on real processes and mounts (no mirror needed)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from lab.errors import LabError
from lab.images import debootstrap
from lab.net.process import find_binary, wait_until

ROOT = Path(__file__).resolve().parents[2]
# a shell that starts two grandchildren in its own session, like debootstrap's dpkg and tar
FAMILY = "sleep 60 & sleep 60 & echo started; wait"


def test_kill_group_leaves_nothing_of_the_group(tmp_path: Path) -> None:
    proc = subprocess.Popen(["sh", "-c", FAMILY], stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    assert proc.stdout is not None and proc.stdout.readline() == "started\n"
    assert wait_until(lambda: len(debootstrap._group_members(proc.pid)) == 3, 5)
    debootstrap.kill_group(proc)
    assert proc.returncode is not None
    assert debootstrap._group_members(proc.pid) == []  # the grandchildren too


def test_host_mirror_honours_the_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BHL_DEBIAN_MIRROR", "http://mirror.example/debian")
    assert debootstrap.host_mirror() == "http://mirror.example/debian"
    monkeypatch.delenv("BHL_DEBIAN_MIRROR")
    assert debootstrap.host_mirror().endswith("/debian")  # apt's, or the default


def test_check_debootstrap() -> None:
    if find_binary("debootstrap") is None:
        with pytest.raises(LabError, match=r"debootstrap not found -- run 'make setup'"):
            debootstrap.check_debootstrap()
    else:
        assert debootstrap.check_debootstrap() == find_binary("debootstrap")


def test_run_logged_failure_has_the_tail_of_the_output() -> None:
    script = "for i in $(seq 1 20); do echo line $i; done; echo broken >&2; exit 3"
    with pytest.raises(LabError) as err:
        debootstrap.run_logged(["sh", "-c", script], "build step")
    problem = err.value.problem
    assert problem.startswith("build step failed (exit 3): line 14\n")
    assert problem.endswith("line 20\nbroken")
    debootstrap.run_logged([sys.executable, "-c", "pass"], "a good step")  # no error


@pytest.mark.root
def test_remove_tree_unmounts_first(tmp_path: Path) -> None:
    """A chroot's /proc-like mounts are unmounted before rmtree, never walked into."""
    target = tmp_path / "rootfs"
    (target / "proc").mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "none", str(target / "proc")], check=True)
    (target / "proc" / "inside").write_text("x")
    debootstrap.remove_tree(target)
    assert not target.exists()
    assert str(target) not in Path("/proc/mounts").read_text()


# a build step whose group outlives its top process, interrupted like Ctrl-C / the lab's SIGTERM
INTERRUPTED_STEP = """
import sys
from pathlib import Path
from lab.images import debootstrap
try:
    debootstrap.run_logged(["sh", "-c", "sleep 60 & sleep 60 & echo started; wait"], "step",
                           Path(sys.argv[1]))
except KeyboardInterrupt:
    print("interrupted", flush=True)
"""


def test_an_interrupted_logged_step_leaves_nothing_of_its_group(tmp_path: Path) -> None:
    log = tmp_path / "step.log"
    proc = subprocess.Popen([sys.executable, "-c", INTERRUPTED_STEP, str(log)],
                            stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert wait_until(lambda: "started" in log.read_text() if log.exists() else False, 10)
        step = next(int(line.split()[0]) for line in subprocess.run(
            ["ps", "-o", "pid=,ppid=", "--ppid", str(proc.pid)], capture_output=True,
            text=True).stdout.splitlines())
        assert len(debootstrap._group_members(step)) == 3  # sh and its two sleeps
        proc.send_signal(signal.SIGINT)
        assert proc.communicate(timeout=15)[0] == "interrupted\n"
        assert debootstrap._group_members(step) == []
        assert log.read_text().startswith("$ sh -c ")  # the command heads its log
    finally:
        proc.kill()
        proc.wait()
