"""Progress of the image builds (debootstrap, docker import, the VM image), which take minutes.

Each stage says when it starts and how long it took; a long one says every HEARTBEAT_S that it
is still going, with the last line of its log; a failed one keeps its log at a stable path
(the build's `logs` folder, cleared when the next build starts) and names it in the error. A
build waiting for another one's lock says whose build it waits for, once.

The images layer sits below the CLI, so lines go to a callback (`Say`), stderr by default: a
command's stdout (`lab vm run`'s job output) stays its own.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType

from lab.errors import LabError

Say = Callable[[str], None]
HEARTBEAT_S = 30.0  # a stage still running says so this often (debootstrap: minutes)


def to_stderr(line: str) -> None:
    """The default Say: one line on stderr; a closed terminal never fails a build."""
    with contextlib.suppress(OSError, ValueError):
        print(line, file=sys.stderr, flush=True)


def last_line(path: Path, limit: int = 160) -> str:
    """The last non-empty line of a log (only its end is read), for a progress or error line."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 4096))
            data = f.read()
    except OSError:
        return ""
    lines = [s.strip() for s in data.decode(errors="replace").splitlines() if s.strip()]
    return lines[-1][:limit] if lines else ""


def lock_holder(fd: int) -> int | None:
    """The pid holding an flock on fd's file: /proc/locks (what the kernel knows), else the
    pid a lab build writes into the file once it holds it."""
    st = os.fstat(fd)
    where = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    with contextlib.suppress(OSError):
        for line in Path("/proc/locks").read_text().splitlines():
            fields = line.split()  # "1: FLOCK ADVISORY WRITE <pid> <maj:min:inode> 0 EOF"
            if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == where:
                return int(fields[4])
    with contextlib.suppress(OSError, ValueError):
        return int(os.pread(fd, 32, 0).decode().strip())
    return None


@contextlib.contextmanager
def exclusive(lock_path: Path, title: str, say: Say = to_stderr) -> Iterator[None]:
    """Hold the build's flock (the kernel drops it when its holder dies). A build that has
    to wait says so once, naming the holder, so a second `lab vm build` does not look hung."""
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = lock_holder(fd)
            whose = f"pid {pid}" if pid is not None else "another process"
            say(f"{title}: waiting for the build of {whose} (lock {lock_path})")
            t0 = time.monotonic()
            fcntl.flock(fd, fcntl.LOCK_EX)
            say(f"{title}: got the lock after {time.monotonic() - t0:.1f} s")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the flock


class _Heartbeat:
    """A thread that says, every interval, that a stage still runs and what its log says."""

    def __init__(self, prefix: str, log: Path, say: Say, interval_s: float) -> None:
        self._prefix, self._log, self._say, self._interval_s = prefix, log, say, interval_s
        self._t0 = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="build-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self._interval_s):
            said = last_line(self._log, 100)
            self._say(f"{self._prefix} ... {time.monotonic() - self._t0:.0f} s"
                      + (f": {said}" if said else ""))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


class Build:
    """One build's stages: a line as each starts and ends, a log per stage in `logs`.

    Used as a context manager under the build's lock: entering clears the previous build's
    logs; leaving removes them if the build succeeded and keeps them if it failed.
    """

    def __init__(self, title: str, logs: Path, say: Say = to_stderr, *, stages: int = 0,
                 heartbeat_s: float = HEARTBEAT_S) -> None:
        self.title, self.logs, self.say = title, logs, say
        self.stages, self.heartbeat_s = stages, heartbeat_s
        self._done = 0

    def __enter__(self) -> Build:
        shutil.rmtree(self.logs, ignore_errors=True)
        self.logs.mkdir(parents=True)
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if kind is None:
            shutil.rmtree(self.logs, ignore_errors=True)

    @contextlib.contextmanager
    def stage(self, name: str, detail: str = "") -> Iterator[Path]:
        """Run one stage (the body); yields its log file. A LabError from the body comes out
        as one line naming the stage, its time and its kept log."""
        self._done += 1
        counter = f"[{self._done}/{self.stages}] " if self.stages else ""
        prefix = f"{self.title}: {counter}{name}"
        log = self.logs / (name.replace(" ", "-").replace("/", "-") + ".log")
        log.touch()
        self.say(f"{prefix}" + (f" ({detail})" if detail else "") + " ...")
        t0 = time.monotonic()
        beat = _Heartbeat(prefix, log, self.say, self.heartbeat_s)
        try:
            yield log
        except LabError as err:
            raise LabError(f"{self.title}: {name} failed after {time.monotonic() - t0:.1f} s: "
                           f"{err.problem}; log: {log}", err.fix) from None
        except BaseException:
            self.say(f"{prefix} stopped after {time.monotonic() - t0:.1f} s (log: {log})")
            raise
        finally:
            beat.stop()
        self.say(f"{prefix} ... {time.monotonic() - t0:.1f} s")
