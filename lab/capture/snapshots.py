"""SnapshotLoop: call several snapshot functions at the same instants, every interval.

The sockets.csv and lb_connections.csv rows of one tick carry the same t_s, so the client's
view (ss) and the LB's view (conntrack) can be lined up like the article's netstat/ipvsadm
pairs. Ticks are scheduled on a fixed grid (no drift); a tick that overruns skips the missed
ones instead of bunching up. A failing snapshot is recorded in `errors` and does not stop the
loop (a query racing with namespace teardown must not kill the evidence already collected).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

SnapshotFn = Callable[[float], Any]


class SnapshotLoop:
    """Run `snapshots` (callables taking t_s = time.time() - t0) every `interval_s`.

    stop() runs one last tick, then closes every snapshot object that has a close() method
    (the CSV writers), so the files are complete once stop() returns.
    """

    def __init__(
        self, snapshots: Sequence[SnapshotFn], interval_s: float = 0.5, *,
        t0: float | None = None,
    ) -> None:
        if interval_s <= 0:
            raise ValueError("interval_s must be > 0")
        self.snapshots = list(snapshots)
        self.interval_s = interval_s
        self.t0 = time.time() if t0 is None else t0
        self.ticks: list[float] = []  # t_s of every tick
        self.errors: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False

    def __enter__(self) -> SnapshotLoop:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("snapshot loop already started")
        self._thread = threading.Thread(target=self._run, name="snapshots", daemon=True)
        self._thread.start()

    def tick(self) -> float:
        """Take one snapshot with every function now; returns its t_s."""
        t_s = time.time() - self.t0
        self.ticks.append(t_s)
        for fn in self.snapshots:
            try:
                fn(t_s)
            except Exception as exc:
                self.errors.append((t_s, f"{getattr(fn, '__name__', type(fn).__name__)}: {exc}"))
        return t_s

    def _run(self) -> None:
        next_t = time.monotonic()
        while not self._stop.is_set():
            self.tick()
            next_t += self.interval_s
            now = time.monotonic()
            if next_t < now:  # overran: skip the missed ticks
                next_t += ((now - next_t) // self.interval_s + 1) * self.interval_s
            self._stop.wait(next_t - now)

    def stop(self, final_tick: bool = True) -> None:
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            if final_tick:
                self.tick()
        for fn in self.snapshots:
            close = getattr(fn, "close", None)
            if callable(close):
                with contextlib.suppress(Exception):
                    close()
