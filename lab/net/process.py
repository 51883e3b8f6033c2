"""Child processes of a run: one way to find a binary, start a process, wait for it, stop it.

Every layer starts real programs (mariadbd, nginx, haproxy, dockerd, tcpdump, the load
drivers, the traffic manager's sites). They share one life cycle, kept here so that a fix to
it (a frozen process, a child that ignores SIGTERM, a log that is needed in an error) is made
once: each starts in its own session (a Ctrl-C at the terminal reaches only the lab, which
then stops its children in order), writes to a log file, and is stopped with SIGCONT (a
fault may have frozen it with SIGSTOP), SIGTERM, then SIGKILL after a grace period.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any, TypeVar

from lab.errors import LabError

# Servers live in the sbin directories, which a non-login root shell (sudo, cron, CI) often
# does not have on PATH.
SBIN_PATH = "/usr/sbin:/usr/local/sbin:/sbin:/usr/bin:/usr/local/bin"
# sun_path is 108 bytes on Linux: a unix socket deeper than this cannot be bound.
UNIX_PATH_MAX = 107

T = TypeVar("T")


def find_binary(name: str, path: str | None = None) -> str | None:
    """Absolute path of `name` on PATH or in the sbin directories (only `path` if given)."""
    if path is not None:
        return shutil.which(name, path=path)
    return shutil.which(name) or shutil.which(name, path=SBIN_PATH)


def require_binary(name: str, package: str, path: str | None = None) -> str:
    """find_binary, or the one-line LabError that names the Debian package to install."""
    where = find_binary(name, path)
    if where is None:
        raise LabError(f"{name} not found", f"run 'make setup' (installs {package})")
    return where


def tail(path: Path, lines: int = 15) -> str:
    """The last lines of a log, for an error message (a missing log says so)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no {path})"


def wait_until(check: Callable[[], T], timeout: float, interval: float = 0.05,
               alive: Callable[[], bool] | None = None) -> T | None:
    """Poll `check` until it returns something truthy (returned), or None at the deadline.

    `alive` ends the wait early (None) when the process being waited for has died, so a
    server that failed at start-up is reported at once with its log, not after the timeout.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if (alive is not None and not alive()) or time.monotonic() >= deadline:
            return None
        time.sleep(interval)


class ChildProcess:
    """One started program: its Popen, its log file, and the lab's stop sequence.

    `argv` is the whole command (a Host wraps it in `ip netns exec` first). stdout and stderr
    go to `log_path` unless the caller asks for a pipe (a driver's JSON records on stdout).
    """

    def __init__(self, argv: Sequence[str], log_path: Path, *, mode: str = "a",
                 stdin: int | IO[Any] | None = subprocess.DEVNULL,
                 stdout: int | IO[Any] | None = None, **popen: Any) -> None:
        self.argv = list(argv)
        self.log_path = log_path
        self.log = open(log_path, mode)  # noqa: SIM115 (closed in stop())
        popen.setdefault("start_new_session", True)
        popen.setdefault("stderr", self.log)
        try:
            self.proc = subprocess.Popen(
                self.argv, stdin=stdin, stdout=self.log if stdout is None else stdout, **popen)
        except BaseException:
            self.log.close()
            raise

    @property
    def pid(self) -> int | None:
        """The process's pid (`ip netns exec` execs the program), None once it has exited."""
        return self.proc.pid if self.proc.poll() is None else None

    @property
    def returncode(self) -> int | None:
        return self.proc.poll()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def send_signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(sig)

    def tail(self, lines: int = 15) -> str:
        self.log.flush()
        return tail(self.log_path, lines)

    def stop(self, timeout: float = 5.0, signals: Sequence[int] = (signal.SIGCONT,
                                                                   signal.SIGTERM)) -> int:
        """Stop it (SIGKILL after `timeout`), reap it and close the log; returns the exit code.

        Safe to call twice and on a process that already exited.
        """
        if self.proc.poll() is None:
            for sig in signals:
                self.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        rc = self.proc.wait()
        if not self.log.closed:
            self.log.close()
        return rc

