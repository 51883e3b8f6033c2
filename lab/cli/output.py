"""What `lab` prints is best effort: a reader that goes away (`lab run ... | head -2`) or a slow
terminal must never change a measurement or an exit code.

The trial's data path never writes to stdout: report lines come from a driver's reader
thread, which only queues them here (PlainPrinter), so a stalled terminal stalls a printing
thread, not the reader (whose backlog would block the driver process, i.e. the client being
measured). A closed pipe detaches stdout onto /dev/null, after which output is dropped.
"""

from __future__ import annotations

import contextlib
import math
import os
import queue
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from rich.console import Console

# drivers report once a second (lab.load.base); a line due "every N s" may come up to half a
# sample early or late, so the gate is N - 0.5 s (a plain `>= 1 s` dropped every other line)
SAMPLE_INTERVAL_S = 1.0
QUEUE_LINES = 1000


def detach(stream: TextIO) -> None:
    """Point a stream whose reader went away at /dev/null (also for the interpreter's final
    flush, which would otherwise print a BrokenPipeError)."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
        os.close(devnull)


# where say() prints: stdout, or stderr when stdout carries the JSON of --json
_state: dict[str, Any] = {"stderr": False, "consoles": {}}


def messages_to_stderr(on: bool = True) -> None:
    """--json: stdout is for the JSON alone, so tables and messages go to stderr."""
    _state["stderr"] = on


def console() -> Console:
    """The rich console say() prints on, made on first use (rich is not imported before: it
    costs start-up time that `lab --help` and `lab keys` do not need)."""
    stream = sys.stderr if _state["stderr"] else sys.stdout
    made: dict[int, Console] = _state["consoles"]
    if id(stream) not in made:
        from rich.console import Console
        # piped (make reproduce > log, CI): wide enough that the summary table stays one
        # line a trial
        made[id(stream)] = Console(file=stream) if stream.isatty() else \
            Console(file=stream, width=170)
    return made[id(stream)]


def say(*renderables: Any) -> None:
    """console.print, dropped (not raised) once its reader is gone."""
    stream = sys.stderr if _state["stderr"] else sys.stdout
    try:
        console().print(*renderables)
    except BrokenPipeError:
        detach(stream)


def emit(line: str) -> None:
    """One plain line on stdout (no rich markup: values such as [3, 5] stay as they are)."""
    try:
        print(line, flush=True)
    except BrokenPipeError:
        detach(sys.stdout)


def warn(line: str) -> None:
    """One plain line on stderr (no rich wrapping: a line a script can grep)."""
    try:
        print(line, file=sys.stderr, flush=True)
    except BrokenPipeError:
        detach(sys.stderr)


class PlainPrinter:
    """Report lines of a piped or --plain run, one per `every_s` per trial, printed by a
    thread of its own; calls only queue (a full queue drops the line and counts it)."""

    def __init__(self, every_s: float, out: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.every_s = every_s
        self.dropped = 0
        self._out = out or sys.stdout
        self._clock = clock
        self._last: dict[str, float] = {}
        self._queue: queue.Queue[str | None] = queue.Queue(QUEUE_LINES)
        self._thread = threading.Thread(target=self._print, name="plain-printer", daemon=True)
        self._thread.start()

    def __call__(self, line: str) -> None:
        name, now = line.split(":", 1)[0], self._clock()
        if now - self._last.get(name, -math.inf) < self.every_s - SAMPLE_INTERVAL_S / 2:
            return
        self._last[name] = now
        try:
            self._queue.put_nowait(line)
        except queue.Full:
            self.dropped += 1

    def _print(self) -> None:
        broken = False
        while (line := self._queue.get()) is not None:
            if broken:
                continue
            try:
                self._out.write(line + "\n")
                self._out.flush()
            except (BrokenPipeError, ValueError):
                detach(self._out)
                broken = True

    def close(self, timeout_s: float = 2.0) -> None:
        """Print what is queued (for at most timeout_s: a stalled terminal is left behind)."""
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=timeout_s)
        self._thread.join(timeout_s)
