"""The lab's VM image: a stock Debian 12 kernel with IP_VS and netem, the lab's packages and its
Python dependencies, as an ext4 image that qemu boots with -kernel/-initrd (qemu TCG boots it
on the PVM hosts where a stock kernel does not boot with -enable-kvm).

Built once per set of inputs (provision.sh, guest-init, the Python requirements, the suite)
under STATE/<hash>/ and reused until an input changes. Steps: the project's dependencies are
downloaded on the host as wheels for the guest's Python (3.11, manylinux); debootstrap makes a
minimal bookworm; provision.sh (the same script the Vagrantfile runs) installs the packages in
a chroot and the wheels offline into /opt/blackhole-lab/venv; mkfs.ext4 -d packs it. Each step
prints its time (lab.images.progress); a failed one keeps its log in STATE/logs/.

accelerator() is here, below lab.vm, so that `lab doctor` (lab.ops) says what qemu will use.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

from lab.images import debootstrap, progress
from lab.images.progress import Say
from lab.net.process import require_binary

HERE = Path(__file__).resolve().parent
PROJECT = HERE.parents[1]
PROVISION = HERE / "provision.sh"
GUEST_INIT = HERE / "guest-init"
STATE = Path(os.environ.get("BHL_VM_DIR", "/var/lib/blackhole-lab/vm"))
LOGS = STATE / "logs"  # a failed build's stage logs, until the next build
TITLE = "vm image"
IMAGE_SIZE = "4G"
GUEST_PYTHON = "3.11"  # bookworm's python3
# what the guest does not need: the linter, the project itself (the guest runs the
# checkout, shared over 9p; an extra may name it to pull in the others), and the zoo's
# mysqlclient (it has no binary wheel to install offline; the guest runs tests/vm, no zoo)
NOT_IN_GUEST = ("ruff", "blackhole-lab", "mysqlclient")


def requirements() -> list[str]:
    """The project's dependencies and every extra's (pyproject.toml: tests, report, docker
    SDK), for the guest's venv: the guest runs whatever the checkout runs."""
    meta = tomllib.loads((PROJECT / "pyproject.toml").read_text())["project"]
    reqs = [*meta["dependencies"]]
    for extra in meta.get("optional-dependencies", {}).values():
        reqs += [r for r in extra if r not in reqs]
    return [r for r in reqs if not r.lower().startswith(NOT_IN_GUEST)]


def accelerator() -> tuple[list[str], str]:
    """qemu arguments for the best accelerator here, and why it was chosen.

    KVM only where the host has hardware virtualisation (kvm_intel or kvm_amd loaded) and
    /dev/kvm opens; a /dev/kvm from another provider (kvm_pvm, on this project's CI hosts,
    does not boot a stock Debian kernel) gets TCG, software emulation.
    """
    tcg = ["-accel", "tcg,thread=multi", "-cpu", "max"]
    hw = [m for m in ("kvm_intel", "kvm_amd") if Path(f"/sys/module/{m}").exists()]
    if not Path("/dev/kvm").exists():
        return tcg, "tcg: no /dev/kvm"
    if not hw:
        others = ", ".join(sorted(p.name for p in Path("/sys/module").glob("kvm_*")))
        pvm = ", which cannot boot a stock kernel" if others == "kvm_pvm" else ""
        return tcg, "tcg: /dev/kvm without kvm_intel/kvm_amd" + (
            f" (it is {others}'s{pvm})" if others else "")
    try:
        os.close(os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC))
    except OSError as exc:
        return tcg, f"tcg: /dev/kvm does not open ({exc.strerror})"
    return ["-accel", "kvm", "-cpu", "host"], f"kvm ({hw[0]})"


def inputs_key(reqs: list[str] | None = None) -> str:
    """The hash of the image's inputs (`reqs`: requirements(), read once by a build)."""
    h = hashlib.sha256()
    for f in (PROVISION, GUEST_INIT):
        h.update(f.read_bytes())
    h.update(json.dumps([requirements() if reqs is None else reqs, debootstrap.SUITE,
                         IMAGE_SIZE]).encode())
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


def _download_wheels(dest: Path, reqs: Path, log: Path) -> None:
    """The guest's wheels, fetched by the host's pip (its index and certificates)."""
    platforms = ["manylinux_2_36_x86_64", "manylinux_2_28_x86_64", "manylinux_2_17_x86_64",
                 "manylinux2014_x86_64", "linux_x86_64"]
    argv = [sys.executable, "-m", "pip", "download", "--progress-bar", "off", "-d", str(dest),
            "--only-binary=:all:", "--python-version", GUEST_PYTHON, "--implementation", "cp",
            "--abi", f"cp{GUEST_PYTHON.replace('.', '')}", "--abi", "abi3", "--abi", "none"]
    for p in platforms:
        argv += ["--platform", p]
    debootstrap.run_logged([*argv, "-r", str(reqs)], "pip download of the wheels", log)


def _provision(rootfs: Path, work: Path, chroot: str, log: Path) -> None:
    """provision.sh in a chroot: /proc, /sys, /dev mounted, services kept from starting."""
    opt = rootfs / "opt" / "blackhole-lab"
    opt.mkdir(parents=True, exist_ok=True)
    shutil.copy(PROVISION, opt / "provision.sh")
    shutil.copy(work / "requirements.txt", opt / "requirements.txt")  # what the wheels are of
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
                                   f"mount {dst} in the chroot", log)
        env = ["env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root",
               "BHL_REQUIREMENTS=/opt/blackhole-lab/requirements.txt",
               "BHL_WHEELHOUSE=/opt/blackhole-lab/wheelhouse"]
        debootstrap.run_logged(
            [chroot, str(rootfs), *env, "sh", "/opt/blackhole-lab/provision.sh"],
            "provision.sh in the chroot", log)
    finally:
        debootstrap.unmount_under(rootfs)
        policy.unlink(missing_ok=True)
    shutil.rmtree(opt / "wheelhouse")
    debootstrap.run_logged([chroot, str(rootfs), "apt-get", "clean"], "apt-get clean", log)
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


def _build_into(work: Path, image: Image, reqs_list: list[str], tools: _Tools,
                stages: progress.Build) -> None:
    """Every step of a build in `work`; the finished image is moved to image.dir. The
    requirements were read once (pyproject.toml may change while a build runs)."""
    reqs = work / "requirements.txt"
    reqs.write_text("\n".join(reqs_list) + "\n")
    with stages.stage("wheels", f"pip download on the host, for the guest's Python "
                      f"{GUEST_PYTHON}") as log:
        _download_wheels(work / "wheelhouse", reqs, log)
    rootfs = work / "rootfs"
    with stages.stage("debootstrap", f"{debootstrap.SUITE} minbase from "
                      f"{debootstrap.host_mirror()}") as log:
        debootstrap.debootstrap(rootfs, log, include=["ca-certificates"],
                                cache_dir=STATE / "debs")
    with stages.stage("provision", "provision.sh in the chroot: packages, the lab's venv") \
            as log:
        _provision(rootfs, work, tools.chroot, log)
    out = work / "image"
    out.mkdir()
    with stages.stage("mkfs.ext4", f"{IMAGE_SIZE}, sparse") as log:
        shutil.copy(rootfs / "vmlinuz", out / "vmlinuz", follow_symlinks=True)
        shutil.copy(rootfs / "initrd.img", out / "initrd.img", follow_symlinks=True)
        debootstrap.run_logged([tools.mkfs, "-q", "-F", "-L", "root", "-d", str(rootfs),
                                str(out / "rootfs.ext4"), IMAGE_SIZE], "mkfs.ext4", log)
    if image.dir.exists():
        shutil.rmtree(image.dir)
    out.rename(image.dir)


def _remove_older_images(image: Image) -> None:
    """Images of older inputs (the package cache, the logs and running builds stay)."""
    for old in STATE.iterdir():
        if old.is_dir() and old != image.dir and old.name not in ("debs", "logs") and \
                not old.name.startswith("build-"):
            shutil.rmtree(old, ignore_errors=True)


def build(*, force: bool = False, say: Say = progress.to_stderr,
          heartbeat_s: float = progress.HEARTBEAT_S) -> BuildReport:
    """The current image, built if it is missing (serialised by an flock on STATE)."""
    t0 = time.monotonic()
    reqs = requirements()
    image = Image(STATE / inputs_key(reqs))
    if image.complete() and not force:
        return BuildReport(image, False, time.monotonic() - t0)
    tools = _Tools.find()
    STATE.mkdir(parents=True, exist_ok=True)
    with progress.exclusive(STATE / ".lock", TITLE, say):
        if image.complete() and not force:  # built by the build we waited for
            return BuildReport(image, False, time.monotonic() - t0)
        for stale in STATE.glob("build-*"):
            debootstrap.remove_tree(stale)  # a killed build's leftovers (we hold the lock)
        work = STATE / f"build-{os.getpid()}"
        work.mkdir()
        try:
            with progress.Build(TITLE, LOGS, say, stages=4, heartbeat_s=heartbeat_s) as stages:
                _build_into(work, image, reqs, tools, stages)
        finally:
            debootstrap.remove_tree(work)
        _remove_older_images(image)
    return BuildReport(image, True, time.monotonic() - t0)
