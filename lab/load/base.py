"""The contract between a load driver process and the trial that runs it.

A driver is a real client: a separate process started *inside the client namespace*
(`python -m lab.load.<name>`), so its sockets, sysctls and kernel timers are the client's.
Its config (CONFIG_JSON: target, client, load) holds the backend's password, so it arrives in
the environment variable BHL_DRIVER_CONFIG, never in argv: any local user can read a
process's argv (ps), only its owner (root) its environment (`ip netns exec` passes it on).
It talks to the trial over pipes, one JSON object per line:

stdout (driver -> trial)
  {"kind": "ready", "t": T}                        every thread connected, one txn succeeded
  {"kind": "sample", "t": T, "tps": .., "qps": .., "reads": .., "writes": .., "other": ..,
   "lat_p95_ms": .., "errors": .., "reconnects": .., "threads": N}
                                                    one per second; counts are per second,
                                                    t is the end of the interval
  {"kind": "event", "t": T, "event": E, "thread": i, "detail": ".."}
      E = "connected"  a new connection; detail and "sockopts" give the socket options
                       read back from the kernel (getsockopt), so a trial can prove them
          "error"      a failed query/commit (detail: "2013 Lost connection ... [Errno 110]");
                       failed connects while reconnecting: one per sequence, "...(connect)"
          "reconnect"  a new connection after an error succeeded
          "recovered"  the first transaction *started* after the fault mark that succeeded
          "idle"       (load.shape "idle", drivers that support it) a thread starts its
                       idle_s sleep after a good transaction: the trial times the fault
                       from it, so the model knows how long the connection had been idle
  samples also carry "interval_s" (1.0; the last, partial one printed on stop is shorter,
  its counts still per second)
  lat_p95_ms (oltp, http): the 95th percentile over the requests that completed in the
      interval (a request ends with a good transaction; failed attempts before it are part of
      it, as sysbench restarts an event) and the age at t of every request still in flight,
      so during an outage it grows by 1000 ms a second instead of reading 0
  lat_p95_ms (sysbench): sysbench's own figure, over the events completed in the interval
      only; sysbench cannot report a request in flight, so it reads 0 during an outage
stdin (trial -> driver)
  "fault T"   the fault was injected at T (recovered events refer to it)
  "stop"      finish the current second, print the last sample, exit 0

T is time.monotonic() (CLOCK_MONOTONIC is one clock for all processes on the machine), so the
trial can put driver events and its own fault times on one axis.
stderr carries a human report line per second in sysbench's format (see `sysbench_line`).

This module is what both ends share, and the trial's end (`DriverProcess`); what runs inside
a driver process (its threads, accounting and main loop) is lab.load.runtime.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab.net.process import ChildProcess, wait_until
from lab.net.topology import Host

SAMPLE_FIELDS = ("tps", "qps", "reads", "writes", "other", "lat_p95_ms", "errors", "reconnects")
CONFIG_ENV = "BHL_DRIVER_CONFIG"  # the driver's CONFIG_JSON (see the module docstring)
CALLBACK_DRAIN_S = 1.0  # on stop, how long the records still queued may take to be handed on


def emit(record: dict[str, Any]) -> None:
    """Driver side: write one protocol record to stdout."""
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


def sysbench_line(t_rel: float, sample: dict[str, Any]) -> str:
    """Format a sample like sysbench's --report-interval line (so users can diff them)."""
    return (
        f"[ {round(t_rel)}s ] thds: {sample.get('threads', 1)} tps: {sample['tps']:.2f} "
        f"qps: {sample['qps']:.2f} (r/w/o: {sample['reads']:.2f}/{sample['writes']:.2f}/"
        f"{sample['other']:.2f}) lat (ms,95%): {sample['lat_p95_ms']:.2f} "
        f"err/s: {sample['errors']:.2f} reconn/s: {sample['reconnects']:.2f}"
    )


@dataclass
class DriverOutput:
    samples: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    ready_t: float | None = None


Record = dict[str, Any]


class _Callback:
    """Hands records to an `on_record` callback on a thread of its own, in their order.

    Output going away must never change a measurement: the callback (the CLI's printer, the
    trial's status) may raise (BrokenPipeError under `| head`) or block (a stalled terminal).
    On this thread it can do neither to the reader: the reader only queues, and keeps
    draining the driver's stdout, which the driver would otherwise block on once the pipe is
    full. A failure is logged once to the driver log with its traceback and the callback is
    kept (the same callback may also update the trial's status, which must go on), later
    failures are counted.
    """

    def __init__(self, callback: Callable[[Record], None], log: Callable[[str], None],
                 name: str) -> None:
        self._callback = callback
        self._log = log
        self._queue: queue.SimpleQueue[Record | None] = queue.SimpleQueue()
        self.failures = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def put(self, record: Record) -> None:
        self._queue.put(record)

    def _run(self) -> None:
        while (record := self._queue.get()) is not None:
            try:
                self._callback(record)
            except Exception as exc:
                self.failures += 1
                if self.failures == 1:
                    self._log(f"(on_record callback failed: {type(exc).__name__}: {exc}; the "
                              "records are still read, later failures only counted)\n"
                              + "".join(traceback.format_exception(exc)))

    def close(self, timeout: float = CALLBACK_DRAIN_S) -> None:
        """Let the queued records through, but wait no longer than `timeout` for a callback
        that blocks (its thread is a daemon: it cannot keep the lab alive)."""
        self._queue.put(None)
        self._thread.join(timeout)
        if self.failures > 1:
            self._log(f"(on_record callback failed {self.failures} times in all)\n")


class DriverProcess:
    """Trial side: start a driver in a namespace, collect its records, mark the fault, stop it.

    The driver is a ChildProcess of `host` whose stdout is a pipe (the records) and whose
    stderr is the log; lines on stdout that are not records go to the log too. Its config
    goes in its environment (CONFIG_ENV), so argv carries no password.

    `on_record` is called with every record, after it is in `output`, on a thread of its own
    (`_Callback`): it should be quick, since records queue behind a slow one, but neither an
    exception nor a block in it can lose a record or delay the reader.
    """

    def __init__(
        self,
        host: Host,
        module: str,
        config: dict[str, Any],
        log_path: Path,
        on_record: Callable[[Record], None] | None = None,
    ) -> None:
        self.output = DriverOutput()
        self._ready = threading.Event()
        self.child: ChildProcess = host.start(
            [sys.executable, "-m", module], log_path, mode="w",
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
            errors="replace", env={**os.environ, CONFIG_ENV: json.dumps(config)},
        )
        self._callback = (_Callback(on_record, self._log, f"driver-{module}-callback")
                          if on_record else None)
        self._reader = threading.Thread(target=self._read, name=f"driver-{module}", daemon=True)
        self._reader.start()

    @property
    def proc(self) -> subprocess.Popen[str]:
        return self.child.proc

    def _log(self, text: str) -> None:
        """A note of ours in the driver log (gone quietly once the log is closed)."""
        with contextlib.suppress(ValueError):
            self.child.log.write(text)
            self.child.log.flush()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        try:
            for line in self.proc.stdout:
                try:
                    record = json.loads(line)
                except ValueError:
                    record = None
                if isinstance(record, dict):
                    self._take(record)
                else:
                    self._log(f"(non-protocol stdout) {line}")
        finally:
            self._ready.set()  # EOF: let wait_ready() return and report the failure

    def _take(self, record: Record) -> None:
        kind = record.get("kind")
        if kind == "sample":
            self.output.samples.append(record)
        elif kind == "event":
            self.output.events.append(record)
        elif kind == "ready":
            self.output.ready_t = record.get("t")
            self._ready.set()
        callback = self._callback  # one read: stop() may drop it meanwhile
        if callback is not None:
            callback.put(record)

    def wait_ready(self, timeout: float) -> None:
        if not self._ready.wait(timeout) or self.output.ready_t is None:
            self.child.log.flush()
            raise RuntimeError(
                f"load driver not ready after {timeout:.0f}s (exit code {self.proc.poll()}); "
                f"see {self.child.log_path}"
            )

    def _send(self, line: str) -> None:
        if self.proc.stdin and self.proc.poll() is None:
            try:
                self.proc.stdin.write(line + "\n")
                self.proc.stdin.flush()
            except BrokenPipeError:
                pass

    def mark_fault(self, t: float) -> None:
        self._send(f"fault {t!r}")

    def alive(self) -> bool:
        return self.child.alive()

    def stop(self, timeout: float = 10.0) -> int:
        """Ask the driver to stop; kill it if it does not (a thread stuck in a blackhole).

        Safe to call twice. The reader has read the last record, and the callback had its
        chance to see it, before the log is closed."""
        self._send("stop")
        if not wait_until(lambda: not self.child.alive(), timeout):
            self.child.send_signal(signal.SIGKILL)
        self.proc.wait()
        self._reader.join(timeout=5)
        if self._callback is not None:
            self._callback.close()
            self._callback = None
        return self.child.stop()
