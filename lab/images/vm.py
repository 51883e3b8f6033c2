"""The lab's VM image: a stock Debian 12 kernel with IP_VS and netem, the lab's packages and its
Python dependencies, as an ext4 image that qemu boots with -kernel/-initrd (qemu TCG boots it
on the PVM hosts where a stock kernel does not boot with -enable-kvm).

Built once per set of inputs (provision.sh, guest-init, the Python requirements, the suite)
under STATE/<hash>/ and reused until an input changes. Steps: the project's dependencies are
downloaded on the host as wheels for the guest's Python (3.11, manylinux); debootstrap makes a
minimal bookworm; provision.sh (the same script the Vagrantfile runs) installs the packages in
a chroot and the wheels offline into /opt/blackhole-lab/venv; mkfs.ext4 -d packs it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lab.images import debootstrap
from lab.net.process import require_binary

HERE = Path(__file__).resolve().parent
PROJECT = HERE.parents[1]
PROVISION = HERE / "provision.sh"
GUEST_INIT = HERE / "guest-init"
STATE = Path(os.environ.get("BHL_VM_DIR", "/var/lib/blackhole-lab/vm"))
IMAGE_SIZE = "4G"
GUEST_PYTHON = "3.11"  # bookworm's python3
# what the guest does not need: the linter
NOT_IN_GUEST = ("ruff",)


def requirements() -> list[str]:
    """The project's runtime and test dependencies (pyproject.toml), for the guest's venv."""
    meta = tomllib.loads((PROJECT / "pyproject.toml").read_text())["project"]
    reqs = [*meta["dependencies"], *meta.get("optional-dependencies", {}).get("dev", [])]
    return [r for r in reqs if not r.lower().startswith(NOT_IN_GUEST)]


def inputs_key() -> str:
    h = hashlib.sha256()
    for f in (PROVISION, GUEST_INIT):
        h.update(f.read_bytes())
    h.update(json.dumps([requirements(), debootstrap.SUITE, IMAGE_SIZE]).encode())
    return h.hexdigest()[:12]


@dataclass(frozen=True)
class Image:
    dir: Path

    @property
    def kernel(self) -> Path:
        return self.dir / "vmlinuz"

    @property
    def initrd(self) -> Path:
        return self.dir / "initrd.img"

    @property
    def rootfs(self) -> Path:
        return self.dir / "rootfs.ext4"

    def complete(self) -> bool:
        return all(p.is_file() for p in (self.kernel, self.initrd, self.rootfs))


@dataclass(frozen=True)
class BuildReport:
    image: Image
    built: bool
    seconds: float

    @property
    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in (self.image.kernel, self.image.initrd,
                                              self.image.rootfs))


def current() -> Image:
    return Image(STATE / inputs_key())


def _download_wheels(dest: Path, reqs: Path) -> None:
    """The guest's wheels, fetched by the host's pip (its index and certificates)."""
    platforms = ["manylinux_2_36_x86_64", "manylinux_2_28_x86_64", "manylinux_2_17_x86_64",
                 "manylinux2014_x86_64", "linux_x86_64"]
    argv = [sys.executable, "-m", "pip", "download", "-q", "-d", str(dest),
            "--only-binary=:all:", "--python-version", GUEST_PYTHON, "--implementation", "cp",
            "--abi", f"cp{GUEST_PYTHON.replace('.', '')}", "--abi", "abi3", "--abi", "none"]
    for p in platforms:
        argv += ["--platform", p]
    debootstrap.run_logged([*argv, "-r", str(reqs)], "VM image: pip download of the wheels")


def _provision(rootfs: Path, work: Path, chroot: str, log: Callable[[str], None]) -> None:
    """provision.sh in a chroot: /proc, /sys, /dev mounted, services kept from starting."""
    opt = rootfs / "opt" / "blackhole-lab"
    opt.mkdir(parents=True, exist_ok=True)
    shutil.copy(PROVISION, opt / "provision.sh")
    (opt / "requirements.txt").write_text("\n".join(requirements()) + "\n")
    shutil.copytree(work / "wheelhouse", opt / "wheelhouse")
    shutil.copy("/etc/resolv.conf", rootfs / "etc" / "resolv.conf")  # apt in the chroot
    policy = rootfs / "usr" / "sbin" / "policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 101\n")  # no service starts inside the build
    policy.chmod(0o755)
    mounts = [("proc", "proc", ["-t", "proc"]), ("sys", "sys", ["-t", "sysfs"]),
              ("dev", "dev", ["--bind"]), ("dev/pts", "dev/pts", ["--bind"])]
    try:
        for src, dst, opts in mounts:
            source = src if opts[0] == "-t" else f"/{src}"
            debootstrap.run_logged(["mount", *opts, source, str(rootfs / dst)],
                                   f"VM image: mount {dst} in the chroot")
        log("provision.sh in the chroot (packages, the lab's venv) ...")
        env = ["env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root",
               "BHL_REQUIREMENTS=/opt/blackhole-lab/requirements.txt",
               "BHL_WHEELHOUSE=/opt/blackhole-lab/wheelhouse"]
        debootstrap.run_logged(
            [chroot, str(rootfs), *env, "sh", "/opt/blackhole-lab/provision.sh"],
            "VM image: provision.sh in the chroot")
    finally:
        debootstrap.unmount_under(rootfs)
        policy.unlink(missing_ok=True)
    shutil.rmtree(opt / "wheelhouse")
    subprocess.run([chroot, str(rootfs), "apt-get", "clean"], capture_output=True)
    shutil.copy(GUEST_INIT, rootfs / "sbin" / "bhl-vm-init")
    (rootfs / "sbin" / "bhl-vm-init").chmod(0o755)


@dataclass(frozen=True)
class _Tools:
    """The host's build tools, found once before anything is built."""

    mkfs: str
    chroot: str

    @staticmethod
    def find() -> _Tools:
        tools = _Tools(require_binary("mkfs.ext4", "e2fsprogs"),
                       require_binary("chroot", "coreutils"))
        debootstrap.check_debootstrap()
        return tools


def _build_into(work: Path, image: Image, tools: _Tools, log: Callable[[str], None]) -> None:
    """Every step of a build in `work`; the finished image is moved to image.dir."""
    reqs = work / "requirements.txt"
    reqs.write_text("\n".join(requirements()) + "\n")
    log("downloading the guest's wheels on the host ...")
    _download_wheels(work / "wheelhouse", reqs)
    rootfs = work / "rootfs"
    log(f"debootstrap {debootstrap.SUITE} from {debootstrap.host_mirror()} ...")
    debootstrap.debootstrap(rootfs, work / "debootstrap.log",
                            include=["ca-certificates"], cache_dir=STATE / "debs")
    _provision(rootfs, work, tools.chroot, log)
    out = work / "image"
    out.mkdir()
    shutil.copy(rootfs / "vmlinuz", out / "vmlinuz", follow_symlinks=True)
    shutil.copy(rootfs / "initrd.img", out / "initrd.img", follow_symlinks=True)
    log(f"mkfs.ext4 -d ({IMAGE_SIZE}, sparse) ...")
    debootstrap.run_logged([tools.mkfs, "-q", "-F", "-L", "root", "-d", str(rootfs),
                            str(out / "rootfs.ext4"), IMAGE_SIZE], "VM image: mkfs.ext4")
    if image.dir.exists():
        shutil.rmtree(image.dir)
    out.rename(image.dir)


def _remove_older_images(image: Image) -> None:
    """Images of older inputs (the package cache and running builds stay)."""
    for old in STATE.iterdir():
        if old.is_dir() and old != image.dir and old.name != "debs" and \
                not old.name.startswith("build-"):
            shutil.rmtree(old, ignore_errors=True)


def build(*, force: bool = False, log: Callable[[str], None] = print) -> BuildReport:
    """The current image, built if it is missing (serialised by an flock on STATE)."""
    t0 = time.monotonic()
    image = current()
    if image.complete() and not force:
        return BuildReport(image, False, time.monotonic() - t0)
    tools = _Tools.find()
    STATE.mkdir(parents=True, exist_ok=True)
    with open(STATE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if image.complete() and not force:
            return BuildReport(image, False, time.monotonic() - t0)
        for stale in STATE.glob("build-*"):
            debootstrap.remove_tree(stale)  # a killed build's leftovers (we hold the lock)
        work = STATE / f"build-{os.getpid()}"
        work.mkdir()
        try:
            _build_into(work, image, tools, log)
        finally:
            debootstrap.remove_tree(work)
        _remove_older_images(image)
    return BuildReport(image, True, time.monotonic() - t0)
