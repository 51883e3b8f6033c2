"""Boot the lab's VM with qemu, run one job in it, bring its output back.

The guest has no network: the project is shared read-only over 9p (the guest runs this very
checkout, PYTHONPATH=/project), and a results folder is shared read-write; the guest's init
(guest-init) runs out/job.sh, writes out/rc and powers off. The image is opened with
snapshot=on, so every run starts from the image as built.

The job's output (out/job.log) and the serial console (out/console.log) can be followed live
(lab.vm.follow): `lab vm run` prints them as the guest writes them; the files stay.

Accelerator (lab.images.vm.accelerator, which `lab doctor` shows): KVM only where the host has
hardware virtualisation (kvm_intel or kvm_amd loaded); a /dev/kvm from another provider (this
project's CI hosts have kvm_pvm, which does not boot a stock Debian kernel) gets TCG, software
emulation.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from lab.errors import LabError
from lab.images.vm import PROJECT, Image, accelerator
from lab.net.process import ChildProcess, require_binary
from lab.vm.follow import Follower, OnLine

__all__ = ["QEMU", "VmRun", "accelerator", "run_job"]

QEMU = "qemu-system-x86_64"


@dataclass(frozen=True)
class VmRun:
    rc: int | None  # the job's exit code; None if the guest never wrote one
    accel: str
    boot_s: float | None  # the guest's uptime when its init started
    wall_s: float
    out_dir: Path

    @property
    def log(self) -> str:
        path = self.out_dir / "job.log"
        return path.read_text(errors="replace") if path.exists() else ""


def _qemu_argv(qemu: str, accel: list[str], image: Image, out_dir: Path, cpus: int,
               memory_mb: int) -> list[str]:
    """Boot the image's kernel on its root filesystem (a snapshot: the image is never written),
    with the checkout shared read-only and out_dir read-write, and no network."""
    return [
        qemu, *accel, "-m", str(memory_mb), "-smp", str(cpus), "-nographic", "-no-reboot",
        "-serial", "file:" + str(out_dir / "console.log"), "-monitor", "none",
        "-kernel", str(image.kernel), "-initrd", str(image.initrd),
        "-append", "root=/dev/vda rw console=ttyS0 quiet init=/sbin/bhl-vm-init panic=-1",
        "-drive", f"file={image.rootfs},format=raw,if=virtio,snapshot=on",
        "-virtfs", f"local,path={PROJECT},mount_tag=project,security_model=none,readonly=on",
        "-virtfs", f"local,path={out_dir},mount_tag=out,security_model=none",
        "-nic", "none",
    ]


def _boot_s(out_dir: Path) -> float | None:
    """The guest's uptime when its init started (`up N` in boot.txt), if it wrote one."""
    boot_txt = out_dir / "boot.txt"
    if not boot_txt.exists():
        return None
    words = boot_txt.read_text().split()
    return float(words[words.index("up") + 1]) if "up" in words else None


def run_job(image: Image, job: str, out_dir: Path, *, timeout_s: float = 1500,
            cpus: int = 2, memory_mb: int = 2048, on_output: OnLine | None = None,
            on_console: OnLine | None = None) -> VmRun:
    """Boot image, run `job` (sh, in /project) in the guest, return what it left in out_dir.

    on_output / on_console get each line of the job's output / the serial console as the
    guest writes it. qemu's own messages go to out_dir/qemu.log (their end is in the error if
    it fails).
    """
    qemu = require_binary(QEMU, "qemu-system-x86")
    if not image.complete():
        raise LabError(f"no VM image at {image.dir}", "build it: 'lab vm build'")
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in ("rc", "job.log", "boot.txt", "console.log"):
        (out_dir / stale).unlink(missing_ok=True)
    (out_dir / "job.sh").write_text(job + "\n")
    accel, why = accelerator()
    follow = [(out_dir / name, cb) for name, cb in (("job.log", on_output),
                                                    ("console.log", on_console)) if cb]
    t0 = time.monotonic()
    with Follower(follow):
        _qemu(_qemu_argv(qemu, accel, image, out_dir, cpus, memory_mb), out_dir, timeout_s)
        wall = time.monotonic() - t0  # qemu's time, not the follower's last read
    rc_file = out_dir / "rc"
    job_rc = int(rc_file.read_text().strip()) if rc_file.exists() else None
    return VmRun(job_rc, why, _boot_s(out_dir), wall, out_dir)


def _qemu(argv: list[str], out_dir: Path, timeout_s: float) -> None:
    """Run qemu to its end (the guest powers off); a LabError if it fails or overruns."""
    qemu_log = out_dir / "qemu.log"
    child = ChildProcess(argv, qemu_log, mode="w", stdout=subprocess.DEVNULL)
    try:
        rc = child.proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        raise LabError(f"the VM did not finish within {timeout_s:.0f} s (killed)",
                       f"see {out_dir}/console.log and job.log") from None
    finally:
        # SIGKILL whatever still runs (timeout, Ctrl-C / SIGTERM): no qemu left behind
        child.stop(timeout=0, signals=())
    if rc != 0:
        said = qemu_log.read_text(errors="replace").strip()[-300:]
        raise LabError(f"qemu exited with {rc}: {said}", f"see {out_dir}/console.log")
