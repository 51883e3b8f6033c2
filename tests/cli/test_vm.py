"""`lab vm`: the guest's job text, the host-side checks and the live output, without booting a
VM."""

from __future__ import annotations

import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lab.cli import vm as vm_cli
from lab.errors import LabError
from lab.images.vm import Image
from lab.net.process import find_binary, wait_until
from lab.vm import follow, runner
from lab.vm.follow import Follower


def test_pytest_job_runs_the_vm_tests_in_the_guests_venv() -> None:
    env, command = vm_cli.pytest_job([]).splitlines()
    assert env == vm_cli.GUEST_ENV and "PYTHONPATH=/project" in env
    argv = shlex.split(command)
    assert argv[:3] == [vm_cli.GUEST_PY, "-m", "pytest"]
    assert argv[3:5] == ["-m", "vm"] and argv[-1] == "tests/vm"
    # extra arguments replace the default selection, quoted for the guest's sh
    _, command = vm_cli.pytest_job(["tests/vm/test_ipvs.py", "-k", "a b"]).splitlines()
    assert shlex.split(command)[-3:] == ["tests/vm/test_ipvs.py", "-k", "a b"]


@pytest.mark.skipif(find_binary(runner.QEMU) is None, reason="qemu is not installed")
def test_run_job_needs_a_built_image(tmp_path: Path) -> None:
    image = Image(tmp_path / "image")
    with pytest.raises(LabError, match=r"no VM image at .* -- build it: 'lab vm build'"):
        runner.run_job(image, "true", tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing was prepared for a VM that cannot boot


def test_accelerator_says_why() -> None:
    argv, why = runner.accelerator()
    assert argv[0] == "-accel" and argv[1].split(",")[0] in ("kvm", "tcg")
    assert why.startswith(argv[1].split(",")[0])


def test_boot_time_is_the_guests_uptime_at_init(tmp_path: Path) -> None:
    assert runner._boot_s(tmp_path) is None  # the guest never got that far
    (tmp_path / "boot.txt").write_text("vm-init: 6.1.0-28-amd64 up 3.21 s\n")  # guest-init
    assert runner._boot_s(tmp_path) == 3.21


# a writer like the guest: a line, then (on cue) another and a last one without its newline
WRITER = """
import sys, time
with open(sys.argv[1], "w") as f:
    f.write("first line\\n"); f.flush()
    sys.stdin.readline()
    f.write("second line\\r\\nno newline yet"); f.flush()
"""


def test_follower_hands_on_lines_as_they_are_written(tmp_path: Path) -> None:
    """`lab vm run` streams the job's output: a line reaches the callback while its writer
    (a real process) still runs, not when the VM has finished."""
    log = tmp_path / "job.log"
    got: list[tuple[float, str]] = []
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(log)], stdin=subprocess.PIPE,
                              text=True)
    assert writer.stdin is not None
    t0 = time.monotonic()
    try:
        with Follower([(log, lambda line: got.append((time.monotonic() - t0, line)))]):
            assert wait_until(lambda: got, 5)
            assert writer.poll() is None  # still writing
            assert [line for _, line in got] == ["first line"]
            writer.stdin.write("go\n")
            writer.stdin.close()
            assert writer.wait(5) == 0
            assert wait_until(lambda: len(got) == 2, 5)
        print(f"first line after {got[0][0]:.2f} s, second after {got[1][0]:.2f} s")
        # the partial last line comes out when following stops
        assert [line for _, line in got] == ["first line", "second line", "no newline yet"]
        assert log.read_text().startswith("first line\n")  # the file stays the record
    finally:
        writer.kill()
        writer.wait()


def test_follower_waits_for_a_file_and_rereads_one_made_again(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    got: list[str] = []
    with Follower([(log, got.append)], interval_s=0.05):
        time.sleep(0.2)  # not there yet: nothing, no error
        log.write_text("a long first boot line\n")
        assert wait_until(lambda: got == ["a long first boot line"], 5)
        log.write_text("again\n")  # qemu truncates console.log when it starts
        assert wait_until(lambda: got[-1:] == ["again"], 5)
    assert got == ["a long first boot line", "again"]


def test_console_lines_lose_their_terminal_control(tmp_path: Path) -> None:
    """What qemu's console.log held in a real TCG boot (2026-12-04): SeaBIOS and the kernel
    reset and clear the screen, which must not reach the user's terminal."""
    log = tmp_path / "console.log"
    log.write_bytes(b"\x1bc\x1b[?7l\x1b[2J\x1b[0mSeaBIOS (version 1.16.2-debian-1.16.2-1)\r\n"
                    b"Booting from ROM...\r\n\x1bc\x1b[?7l\x1b[2J[   29.358333] sysrq: Power Off"
                    b"\r\n")
    got: list[str] = []
    Follower([(log, lambda line: got.append(follow.printable(line)))]).close()
    assert got == ["SeaBIOS (version 1.16.2-debian-1.16.2-1)", "Booting from ROM...",
                   "[   29.358333] sysrq: Power Off"]
