"""`lab vm`: the guest's job text and the host-side checks, without booting a VM."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from lab.cli import vm as vm_cli
from lab.errors import LabError
from lab.images.vm import Image
from lab.net.process import find_binary
from lab.vm import runner


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
