"""Debian root filesystems made with debootstrap, for the images the lab builds itself (the VM
image of lab.images.vm, the container image of lab.images.docker): no registry is needed, only
the Debian mirror this host's apt already uses.

We shell out: debootstrap has no library interface. It, and every build step with a log
(provision.sh in the chroot, tar, mkfs), runs in its own session, so on Ctrl-C or SIGTERM its
whole process group (dpkg and tar in the chroot too) is killed before the caller removes the
target, and nothing writes into a deleted folder afterwards (measured: killing only the top
process leaves its children writing).
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lab.errors import LabError
from lab.images.progress import last_line
from lab.net.process import ChildProcess, require_binary, wait_until

SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"


def host_mirror() -> str:
    """The Debian mirror this host's apt uses (so an offline mirror or proxy keeps working);
    BHL_DEBIAN_MIRROR overrides it."""
    env = os.environ.get("BHL_DEBIAN_MIRROR")
    if env:
        return env
    texts = []
    for path in [Path("/etc/apt/sources.list"),
                 *sorted(Path("/etc/apt/sources.list.d").glob("*"))]:
        with contextlib.suppress(OSError):
            texts.append(path.read_text())
    for text in texts:
        for m in re.finditer(r"(?m)^(?:URIs:\s*|deb\s+(?:\[[^\]]*\]\s+)?)(\S+)", text):
            uri = m.group(1).rstrip("/")
            if uri.endswith("/debian"):
                return uri
    return DEFAULT_MIRROR


def check_debootstrap() -> str:
    """debootstrap's path, or the LabError that says how to install it."""
    return require_binary("debootstrap", "debootstrap")


def debootstrap(target: Path, log_file: Path, *, include: Sequence[str] = (),
                variant: str = "minbase", mirror: str | None = None,
                cache_dir: Path | None = None) -> None:
    """debootstrap SUITE into target; its output goes to log_file, its last line into the
    error, and debootstrap's own log in the target (which goes with it) onto log_file."""
    argv = [check_debootstrap(), f"--variant={variant}"]
    if include:
        argv.append("--include=" + ",".join(include))
    if cache_dir is not None:
        cache_dir.mkdir(parents=True, exist_ok=True)
        argv.append(f"--cache-dir={cache_dir}")
    argv += [SUITE, str(target), mirror or host_mirror()]
    path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    rc = run_in_session(argv, log_file, env={**os.environ, "PATH": path}, mode="w")
    if rc != 0:
        said = last_line(log_file)
        inner = target / "debootstrap" / "debootstrap.log"
        with contextlib.suppress(OSError), open(log_file, "a") as log:
            log.write(f"--- {inner} ---\n{inner.read_text(errors='replace')}")
        raise LabError(f"debootstrap exited {rc}: {said}",
                       "is the Debian mirror reachable? set BHL_DEBIAN_MIRROR to another")
    unmount_under(target)


def run_in_session(argv: Sequence[str], log_file: Path, *, mode: str = "a",
                   env: dict[str, str] | None = None) -> int:
    """Run argv in its own session, its output on log_file; its exit code. On Ctrl-C or
    SIGTERM its whole process group is killed first (a chroot's dpkg too), then it raises."""
    child = ChildProcess(argv, log_file, mode=mode, env=env)
    try:
        return child.proc.wait()
    except BaseException:
        kill_group(child.proc)
        raise
    finally:
        child.stop()  # it has exited (or its group was killed): reaps it, closes the log


def _group_members(pgid: int) -> list[int]:
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError):
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[2]) == pgid and fields[0] != "Z":
                    members.append(int(entry))
    return members


def kill_group(proc: subprocess.Popen[Any]) -> None:
    """SIGKILL proc's process group and wait (10 s at most) until none of it runs."""

    def group_gone() -> bool:
        if not _group_members(proc.pid):
            return True
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # again: a member may have forked meanwhile
        return False

    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    wait_until(group_gone, 10)


def unmount_under(folder: Path) -> None:
    """Unmount everything below folder (deepest first): debootstrap and chroot steps mount
    /proc, /sys and /dev in the target, and rmtree must never walk into them."""
    prefix = str(folder.resolve()) + "/"
    with open("/proc/mounts") as f:
        points = [line.split()[1] for line in f if line.split()[1].startswith(prefix)]
    for point in sorted(points, key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True)


def remove_tree(folder: Path) -> None:
    unmount_under(folder)
    shutil.rmtree(folder, ignore_errors=True)


def run_logged(argv: Sequence[str], what: str, log_file: Path | None = None) -> None:
    """Run a build step; on failure a LabError with the end of its output. With log_file, the
    output is appended there as it comes (a stage's log) and the error has its last line."""
    if log_file is not None:
        with open(log_file, "a") as log:
            log.write(f"$ {shlex.join(argv)}\n")
        rc = run_in_session(argv, log_file)
        if rc != 0:
            raise LabError(f"{what} failed (exit {rc}): {last_line(log_file)}",
                           "see its log; the build starts from scratch next time")
        return
    proc = subprocess.run(list(argv), capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-8:])
        raise LabError(f"{what} failed (exit {proc.returncode}): {tail}",
                       "see the message; the build starts from scratch next time")
