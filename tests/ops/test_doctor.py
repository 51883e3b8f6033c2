"""`lab doctor`'s rows against what this host really has: the binaries (found and run here,
independently of the lab's lookup), gcc's compile, KVM or TCG as the VM runner decides, and
the docker row without the docker SDK (an optional extra)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lab.ops import doctor
from lab.vm import runner

ROOT = Path(__file__).resolve().parents[2]
SBIN = "/usr/sbin:/usr/local/sbin:/sbin:/usr/bin:/usr/local/bin"
VERSION_FLAG = {"haproxy": "-v", "nginx": "-v", "qemu-system-x86_64": "--version",
                "debootstrap": "--version", "gcc": "--version"}


def rows() -> dict[str, doctor.Check]:
    """Every row but the netem probe and docker (each starts things; tested elsewhere)."""
    return {c.name: c for c in [*doctor._tools(), *doctor._vm_and_images()]}


@pytest.mark.parametrize("name", sorted(VERSION_FLAG))
def test_a_tool_row_is_what_the_host_has(name: str) -> None:
    row = rows()[name]
    path = shutil.which(name) or shutil.which(name, path=SBIN)
    print(f"{name}: {row}")
    assert row.ok == (path is not None) and row.required is False
    if path is None:
        assert row.detail.startswith("not found") and "make setup" in row.fix
        return
    assert row.detail.startswith(path) and row.fix == ""
    proc = subprocess.run([path, VERSION_FLAG[name]], capture_output=True, text=True, timeout=30)
    said = (proc.stdout + proc.stderr).strip().splitlines()
    print(f"  runs: {said[0] if said else '(nothing)'}")
    assert proc.returncode == 0


def test_the_gcc_row_is_a_real_compile(tmp_path: Path) -> None:
    gcc = shutil.which("gcc")
    row = rows()["gcc"]
    if gcc is None:
        assert not row.ok and "libc6-dev" in row.fix
        return
    src = tmp_path / "fix.c"
    src.write_text("#include <dlfcn.h>\nvoid *f(void) { return dlsym(RTLD_NEXT, \"f\"); }\n")
    built = subprocess.run([gcc, "-shared", "-fPIC", "-o", str(tmp_path / "fix.so"), str(src),
                            "-ldl"], capture_output=True).returncode == 0
    assert row.ok == built, row


def test_the_kvm_row_is_the_vm_runners_choice() -> None:
    row = rows()["KVM"]
    argv, why = runner.accelerator()
    print(row)
    assert row.ok == (argv[1] == "kvm") and row.detail == f"lab vm boots with {why}"
    hw = [m for m in ("kvm_intel", "kvm_amd") if Path(f"/sys/module/{m}").exists()]
    if not Path("/dev/kvm").exists():
        assert not row.ok and "no /dev/kvm" in row.detail
    elif not hw:  # this project's CI hosts: /dev/kvm from kvm_pvm
        assert not row.ok and "without kvm_intel/kvm_amd" in row.detail and row.fix
        if Path("/sys/module/kvm_pvm").exists():
            assert "kvm_pvm" in row.detail
    else:
        assert row.ok == os.access("/dev/kvm", os.R_OK | os.W_OK)


def test_fixes_are_on_the_failing_rows_only() -> None:
    for c in rows().values():
        assert bool(c.fix) == (not c.ok), c
        assert "make setup" not in c.detail, c  # the hint is the fix, not the detail


def test_the_vm_image_row_says_whether_it_is_built() -> None:
    row = rows()["vm image"]
    image = doctor.vm_image.current()
    assert row.ok == image.complete() and row.detail.startswith(str(image.dir))
    assert row.fix == ("" if row.ok else "'lab vm build' (a few minutes, once)")


DOCKER_MISSING = """
import json, sys
sys.modules["docker"] = None  # `import docker` raises ImportError, as without the extra
from lab.ops import doctor
print(json.dumps([c.__dict__ for c in doctor._docker()]))
"""


def test_the_docker_row_without_the_docker_module() -> None:
    proc = subprocess.run([sys.executable, "-c", DOCKER_MISSING], capture_output=True,
                          text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    (row,) = json.loads(proc.stdout)
    print(row)
    assert row["name"] == "docker" and row["ok"] is False and row["required"] is False
    assert row["fix"] == "pip install 'blackhole-lab[docker]'"
    assert "docker Python module" in row["detail"]


def test_every_zoo_stack_has_a_row_with_its_version_or_its_fix() -> None:
    """One row per stack of lab.config.stacks; an installed one names its library's version
    (read here independently: the jar, dpkg, npm or pip metadata agree with what it says)."""
    from lab.config.stacks import STACK_NAMES
    zoo = {c.name.removeprefix("zoo "): c for c in doctor._zoo()}
    assert tuple(zoo) == STACK_NAMES
    for name, row in zoo.items():
        print(f"{name}: {row.ok} {row.detail}")
        assert row.required is False
        assert row.fix == "" if row.ok else row.fix != ""
    if zoo["python-pymysql"].ok:
        from importlib.metadata import version
        assert f": {version('PyMySQL')} " in zoo["python-pymysql"].detail
