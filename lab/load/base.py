"""The contract between a load driver process and the trial that runs it.

A driver is a real client: a separate process started *inside the client namespace*
(`python -m lab.load.<name> CONFIG_JSON`), so its sockets, sysctls and kernel timers are
the client's. It talks to the trial over pipes, one JSON object per line:

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

import json
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab.net.process import ChildProcess, wait_until
from lab.net.topology import Host

SAMPLE_FIELDS = ("tps", "qps", "reads", "writes", "other", "lat_p95_ms", "errors", "reconnects")


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


class DriverProcess:
    """Trial side: start a driver in a namespace, collect its records, mark the fault, stop it.

    The driver is a ChildProcess of `host` whose stdout is a pipe (the records) and whose
    stderr is the log; lines on stdout that are not records go to the log too.
    """

    def __init__(
        self,
        host: Host,
        module: str,
        config: dict[str, Any],
        log_path: Path,
        on_record: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.output = DriverOutput()
        self._on_record = on_record
        self._ready = threading.Event()
        self.child: ChildProcess = host.start(
            [sys.executable, "-m", module, json.dumps(config)], log_path, mode="w",
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
        )
        self._reader = threading.Thread(target=self._read, name=f"driver-{module}", daemon=True)
        self._reader.start()

    @property
    def proc(self) -> subprocess.Popen[str]:
        return self.child.proc

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                record = json.loads(line)
            except ValueError:
                self.child.log.write(f"(non-protocol stdout) {line}")
                continue
            self._take(record)
        self._ready.set()  # EOF: let wait_ready() return and report the failure

    def _take(self, record: dict[str, Any]) -> None:
        kind = record.get("kind")
        if kind == "sample":
            self.output.samples.append(record)
        elif kind == "event":
            self.output.events.append(record)
        elif kind == "ready":
            self.output.ready_t = record["t"]
            self._ready.set()
        if self._on_record:
            self._on_record(record)

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

        Safe to call twice. The reader has read the last record before the log is closed."""
        self._send("stop")
        if not wait_until(lambda: not self.child.alive(), timeout):
            self.child.send_signal(signal.SIGKILL)
        self.proc.wait()
        self._reader.join(timeout=5)
        return self.child.stop()
