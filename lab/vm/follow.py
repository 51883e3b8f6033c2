"""Lines other processes append to files, handed on as they come: `lab vm run` shows the guest's
job output (written over 9p to out/job.log) and its serial console (qemu's console.log) live,
while the files stay the record.

Files are polled (every INTERVAL_S) by a thread of its own, so a slow terminal slows this
thread only; a file that does not exist yet is waited for, one that shrank (made again) is read
from its start. Only whole lines go out while the writer runs; close() hands on the rest.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType

INTERVAL_S = 0.2

OnLine = Callable[[str], None]
# terminal control a console writes (SeaBIOS and the kernel reset and clear the screen: ESC c,
# ESC [2J): printed as they are they would clear the user's terminal
_CONTROL = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|[@-_]|c)|[\x00-\x08\x0b-\x1f\x7f]")


def printable(line: str) -> str:
    """A console line without its terminal control sequences."""
    return _CONTROL.sub("", line)


class _Tail:
    def __init__(self, path: Path, on_line: OnLine) -> None:
        self.path, self.on_line = path, on_line
        self.offset = 0
        self.pending = b""

    def poll(self, final: bool = False) -> None:
        try:
            with open(self.path, "rb") as f:
                size = f.seek(0, 2)
                if size < self.offset:  # the file was made again
                    self.offset, self.pending = 0, b""
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return
        self.offset += len(data)
        *lines, self.pending = (self.pending + data).split(b"\n")
        if final and self.pending:
            lines, self.pending = [*lines, self.pending], b""
        for line in lines:
            self.on_line(line.decode(errors="replace").rstrip("\r"))


class Follower:
    """Follow `sources` ((file, callback) pairs) from start() (or `with`) until close()."""

    def __init__(self, sources: Sequence[tuple[Path, OnLine]],
                 interval_s: float = INTERVAL_S) -> None:
        self._tails = [_Tail(path, on_line) for path, on_line in sources]
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="vm-follow", daemon=True)

    def start(self) -> Follower:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            for tail in self._tails:
                tail.poll()

    def close(self) -> None:
        """Stop following, after handing on what the files hold now (a last partial line
        too)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        for tail in self._tails:
            tail.poll(final=True)

    def __enter__(self) -> Follower:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
