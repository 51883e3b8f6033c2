"""The `command` driver: the user's own program is the client, measured from the wire.

    BHL_DRIVER_CONFIG=CONFIG_JSON python -m lab.load.command
                                             (started by DriverProcess in the client namespace)

The program (load.command, an argv list) runs where this driver runs, in the client namespace,
with the service in its environment (LAB_HOST, LAB_PORT, LAB_USER, LAB_PASSWORD, LAB_DATABASE,
and LAB_URL for http; never in argv, which any user can read). The lab does not instrument it:
what it asked and what it got back is read off the wire (lab.load.wire: an AF_PACKET socket,
kernel timestamps, per-connection reassembly, a MySQL or HTTP classifier), and what the wire
cannot show, a connection the client's kernel dropped silently, off the kernel's socket table.
That becomes the protocol of lab.load.base:

  ready      the first successful answer on the wire
  sample     qps = successful answers/s; tps = the program's OK lines/s if it prints them,
             else qps; reads/writes/other from the classifier; errors = failed answers + the
             program's ERR lines (a program that prints none: + the wire's connection
             failures); reconnects = connections that became usable beyond the first one per
             program; lat_p95_ms = request -> answer on the wire, and the age of every request
             still unanswered (a request lost with its connection stays in flight until the
             next success, as oltp's retried request); threads = connections open
  connected  per connection, at its first request (the program has set its socket options by
             then), read off the program's own socket (pidfd_getfd + getsockopt)
  error      a reset, a close with a request unanswered, a connection the kernel dropped, an
             ERR answer, a refused or abandoned connect (once per sequence), the program's ERR
             line (once per run of them); detail says which
  reconnect  a connection became usable after an error
  recovered  the first request *sent* after the fault mark that got a successful answer,
             stamped at the answer's arrival
  exited     the program ended by itself (its status): that is the result, it is not
             restarted, and the samples go on showing no recovery

The program's optional stdout lines `<epoch_ms> OK|ERR text`, `CONNECTED`, `VERSION lib ver`
(lab/load/zoo/README.md) are parsed; its other lines and its stderr go to the driver log. On
`stop` (or SIGTERM) its process group gets SIGTERM, SIGKILL 2 s later, and the driver prints
its last sample and exits 0. The zoo driver (lab.load.zoo) runs the same machinery
(`run_programs`) over load.threads copies of a zoo program.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NoReturn

from pydantic import BaseModel, ConfigDict, Field

from lab.load.base import sysbench_line
from lab.load.foreign import foreign_sockopts
from lab.load.runtime import (
    BaseConfig,
    Bucket,
    Clock,
    FaultMark,
    Queue,
    emit_event,
    emit_locked,
    is_stop,
    p95,
    parse_config,
    sample_due,
    start_stdin_reader,
)
from lab.load.wire import Capture, KernelSockets, Observer, WireEvent

STOP_GRACE_S = 2.0  # SIGTERM -> SIGKILL of the program's process group
POLL_S = 0.01  # the kernel socket table is read this often (a silent drop's resolution)
LINE_RE = re.compile(r"^(\d{10,16}) (OK|ERR|CONNECTED|VERSION)(?: (.*))?$")


class CommandTarget(BaseModel):
    """The service, and how to read its protocol off the wire."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str
    port: int = Field(ge=1, le=65535)
    protocol: Literal["mysql", "http"]
    user: str = ""
    password: str = Field("", repr=False)
    database: str = ""
    path: str = "/"


class CommandConfig(BaseConfig):
    """The driver's CONFIG_JSON (see lab.load.base for how the trial passes it)."""

    target: CommandTarget


def lab_env(target: CommandTarget) -> dict[str, str]:
    """The program's LAB_* environment: where the service is and how to log in."""
    env = {"LAB_HOST": target.host, "LAB_PORT": str(target.port), "LAB_USER": target.user,
           "LAB_PASSWORD": target.password, "LAB_DATABASE": target.database}
    if target.protocol == "http":
        env["LAB_URL"] = f"http://{target.host}:{target.port}{target.path}"
    return env


@dataclass(frozen=True)
class Copy:
    """One program to start: its index (the events' thread), argv and LAB_* environment."""

    index: int
    argv: list[str]
    env: dict[str, str]


# --- the program's sockets -------------------------------------------------------------------


def session_pids(sessions: set[int]) -> dict[int, int]:
    """pid -> session of every process in one of `sessions` (the programs and their
    children: each program is started as a session leader)."""
    found: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat = Path(f"/proc/{entry}/stat").read_text()
            sid = int(stat.rsplit(")", 1)[1].split()[3])
            if sid in sessions:
                found[int(entry)] = sid
    return found


def socket_owner(inode: int, pids: Mapping[int, int]) -> tuple[int, int] | None:
    """(pid, fd) of the process among `pids` that holds socket `inode`."""
    target = f"socket:[{inode}]"
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                        return pid, int(fd)
    return None


# --- accounting ------------------------------------------------------------------------------


@dataclass
class WireBucket(Bucket):
    """A Bucket (txns = successful answers) plus what only the program's lines say."""

    ok_lines: int = 0
    err_lines: int = 0
    wire_failures: int = 0

    def merge(self, other: Bucket) -> None:
        super().merge(other)
        if isinstance(other, WireBucket):
            self.ok_lines += other.ok_lines
            self.err_lines += other.err_lines
            self.wire_failures += other.wire_failures


def _count_ok(b: WireBucket, cls: str, latency_ms: float) -> None:
    b.txns += 1
    b.latencies.append(latency_ms)
    if cls == "r":
        b.reads += 1
    elif cls == "w":
        b.writes += 1
    else:
        b.other += 1


@dataclass
class ConnInfo:
    local: str
    usable_t: float
    thread: int = 0
    reported: bool = False


@dataclass
class Monitor:
    """The wire's events and the program's lines -> buckets and protocol events. Every
    method runs under `lock` (the capture thread and the main thread share it)."""

    observer: Observer
    clock: Clock
    fault: FaultMark
    peer: str
    table: KernelSockets  # used on the capture thread only
    slots: int  # programs started: their first connections are no reconnects
    ready_q: Queue
    sessions: dict[int, int] = field(default_factory=dict)  # session leader pid -> thread
    lock: threading.Lock = field(default_factory=threading.Lock)
    buckets: dict[int, WireBucket] = field(default_factory=dict)
    orphans: list[float] = field(default_factory=list)  # requests lost with a connection
    recent_ok: deque[tuple[float, float, int]] = field(default_factory=lambda: deque(maxlen=256))
    conns: dict[int, ConnInfo] = field(default_factory=dict)
    recovered_generation: int = 0
    ready: bool = False
    trouble: bool = False  # an error since the last connection became usable
    connect_failing: bool = False
    usable_count: int = 0
    prints_lines: bool = False  # the program prints OK/ERR lines
    err_run: set[int] = field(default_factory=set)  # programs inside a run of ERR lines
    reported: set[str] = field(default_factory=set)  # unreadable details already emitted

    def bucket(self, t: float) -> WireBucket | None:
        k = self.clock.index(t)
        if k is None:
            return None
        return self.buckets.setdefault(k, WireBucket())

    def drain(self, upto: int) -> WireBucket:
        out = WireBucket()
        for k in [k for k in self.buckets if k <= upto]:
            out.merge(self.buckets.pop(k))
        return out

    def _orphan(self, sent: float) -> None:
        """A request that got no good answer: it stays in flight (the program retries it) -
        one per program at most, the oldest."""
        self.orphans = sorted([*self.orphans, sent])[:self.slots]

    def _thread(self, conn: int) -> int:
        info = self.conns.get(conn)
        return info.thread if info else 0

    # the wire
    def on_wire(self, events: list[WireEvent]) -> None:
        for e in events:
            handler = getattr(self, f"_on_{e.kind}", None)
            if handler is not None:
                handler(e)

    def _on_usable(self, e: WireEvent) -> None:
        self.conns[e.conn] = ConnInfo(e.local, e.t)
        self.usable_count += 1
        self.connect_failing = False
        if self.usable_count > self.slots and (b := self.bucket(e.t)) is not None:
            b.reconnects += 1
        if self.trouble:
            self.trouble = False
            emit_event("reconnect", 0, f"conn #{e.conn} {e.local} usable after the error "
                       "(seen on the wire)", e.t)

    def _on_request(self, e: WireEvent) -> None:
        info = self.conns.get(e.conn)
        if info is not None and not info.reported:
            self._report_connected(e.conn, info)

    def _report_connected(self, conn: int, info: ConnInfo) -> None:
        """The `connected` event, with the socket options read off the program's socket."""
        info.reported = True
        host, port = info.local.rsplit(":", 1)
        peer_host, peer_port = self.peer.rsplit(":", 1)
        inode = self.table.inode((host, int(port)), (peer_host, int(peer_port)))
        owner = self._owner(inode) if inode else None
        sockopts: dict[str, int] = {}
        pid_text = ""
        if owner is not None:
            pid, fd = owner
            sockopts = foreign_sockopts(pid, fd)
            info.thread = self._thread_of(pid)
            pid_text = f" pid={pid}"
        emit_event("connected", info.thread,
                   f"local={info.local} peer={self.peer}{pid_text} "
                   + " ".join(f"{k}={v}" for k, v in sockopts.items()),
                   info.usable_t, sockopts=sockopts, local=info.local)

    def _owner(self, inode: int) -> tuple[int, int] | None:
        """(pid, fd) of the program process holding socket `inode`: the programs themselves
        first, then their children (a /proc scan, ~2 ms)."""
        return (socket_owner(inode, dict.fromkeys(self.sessions, 0))
                or socket_owner(inode, session_pids(set(self.sessions))))

    def _thread_of(self, pid: int) -> int:
        if pid in self.sessions:
            return self.sessions[pid]
        return self.sessions.get(session_pids(set(self.sessions)).get(pid, -1), 0)

    def _on_answer(self, e: WireEvent) -> None:
        assert e.sent is not None
        b = self.bucket(e.t)
        if not e.ok:
            if b is not None:
                b.errors += 1
            self._orphan(e.sent)
            emit_event("error", self._thread(e.conn), f"{e.detail} (an error answer on the "
                       f"wire, conn #{e.conn})", e.t)
            return
        # the oldest request lost with a connection ends with this success (it was retried)
        since = self.orphans.pop(0) if self.orphans and self.orphans[0] < e.sent else e.sent
        if b is not None:
            _count_ok(b, e.cls, 1000.0 * (e.t - since))
        self.recent_ok.append((e.sent, e.t, e.conn))
        self._check_recovered(e.sent, e.t, e.conn)
        if not self.ready:
            self.ready = True
            self.ready_q.put(("ready", e.t))

    def _on_failure(self, e: WireEvent) -> None:
        if e.sent is not None:
            self._orphan(e.sent)
        self.trouble = True
        if e.connect:
            if self.connect_failing:
                return
            self.connect_failing = True
        if (b := self.bucket(e.t)) is not None:
            b.wire_failures += 1
        emit_event("error", self._thread(e.conn), f"{e.detail} (conn #{e.conn} {e.local})"
                   + (" (connect)" if e.connect else ""), e.t)

    def _on_unreadable(self, e: WireEvent) -> None:
        if e.detail in self.reported:
            return
        self.reported.add(e.detail)
        sys.stderr.write(f"# the wire cannot read conn #{e.conn} {e.local}: {e.detail}\n")
        emit_event("error", 0, f"unreadable on the wire: {e.detail}", e.t)

    def _check_recovered(self, sent: float, t: float, conn: int) -> None:
        f = self.fault
        if f.t is None or self.recovered_generation >= f.generation or sent < f.t:
            return
        self.recovered_generation = f.generation
        emit_event("recovered", self._thread(conn),
                   f"request sent {sent - f.t:+.3f} s after the fault on conn #{conn}, "
                   f"answered in {1000 * (t - sent):.1f} ms (seen on the wire)", t)

    def on_fault(self) -> None:
        """A fault mark arrived: a good answer to a request sent after it may be in already."""
        found = next(((s, t, c) for s, t, c in self.recent_ok
                      if self.fault.t is not None and s >= self.fault.t), None)
        if found:
            self._check_recovered(*found)

    # the program's lines
    def on_line(self, index: int, line: str) -> None:
        m = LINE_RE.match(line.strip())
        if m is None:
            sys.stderr.write(f"[program {index}] {line}\n")
            return
        t = int(m[1]) / 1000.0 - (time.time() - time.monotonic())
        kind, text = m[2], m[3] or ""
        if kind == "OK":
            self.prints_lines = True
            self.err_run.discard(index)
            if (b := self.bucket(t)) is not None:
                b.ok_lines += 1
        elif kind == "ERR":
            self._err_line(index, t, text)
        elif kind == "VERSION":
            emit_event("version", index, text, t)
        else:
            self.err_run.discard(index)

    def _err_line(self, index: int, t: float, text: str) -> None:
        self.prints_lines = True
        self.trouble = True
        if (b := self.bucket(t)) is not None:
            b.err_lines += 1
        if index not in self.err_run:
            self.err_run.add(index)
            emit_event("error", index, f"{text} (the program's ERR line)", t)

    # samples
    def sample(self, upto: int, t: float, interval: float) -> dict[str, Any]:
        ages = [1000.0 * (t - s) for s in [*self.observer.outstanding(), *self.orphans]
                if s <= t]
        total = self.drain(upto)
        per_s = 1.0 / interval if interval > 0 else 0.0

        def rate(n: int) -> float:
            return round(n * per_s, 2)

        errors = total.errors + (total.err_lines if self.prints_lines else total.wire_failures)
        return {
            "kind": "sample", "t": t,
            "tps": rate(total.ok_lines if self.prints_lines else total.txns),
            "qps": rate(total.txns), "reads": rate(total.reads),
            "writes": rate(total.writes), "other": rate(total.other),
            "lat_p95_ms": round(p95(total.latencies + ages), 2),
            "errors": rate(errors), "reconnects": rate(total.reconnects),
            "threads": self.observer.open_connections(), "interval_s": round(interval, 3),
        }


# --- the driver ------------------------------------------------------------------------------


class ProgramsDriver:
    """Starts the programs, runs the wire observer on a thread of its own, and speaks the
    protocol on the main thread (stdin commands, the programs' lines and exits, samples)."""

    def __init__(self, cfg: CommandConfig, copies: list[Copy], name: str) -> None:
        self.cfg = cfg
        self.copies = copies
        self.name = name
        self.q: Queue = queue.Queue()
        self.clock = Clock()
        self.fault = FaultMark()
        target = cfg.target
        self.capture = Capture(target.host, target.port)  # before the programs: see every SYN
        self.table = KernelSockets()
        self.monitor = Monitor(Observer(target.protocol), self.clock, self.fault,
                               f"{target.host}:{target.port}", self.table, len(copies),
                               self.q)
        self.procs: list[subprocess.Popen[str]] = []
        self.next_index = 0
        self.at_ready = (0.0, 0)  # (cpu time, packets) at ready: the capture's cost from then

    def _watch(self) -> None:
        """The capture thread: segments -> the observer -> the monitor; the kernel's socket
        table every POLL_S for the connections dropped without a packet."""
        target, m = self.cfg.target, self.monitor
        service = (target.host, target.port)
        next_poll = time.monotonic()
        try:
            while True:
                segments = self.capture.read(max(0.0, next_poll - time.monotonic()))
                with m.lock:
                    for seg in segments:
                        m.on_wire(m.observer.feed(seg))
                if time.monotonic() >= next_poll:
                    with m.lock:
                        live = m.observer.live()
                    present = self.table.present(live, service)
                    with m.lock:
                        m.on_wire(m.observer.vanished(time.monotonic(), present))
                    next_poll = time.monotonic() + POLL_S
        except BaseException:  # a bug: die loudly, the trial sees EOF
            traceback.print_exc()
            sys.stderr.flush()
            os._exit(70)

    def _start(self, copy: Copy) -> None:
        env = {**os.environ, **copy.env}
        # pdeathsig: if the driver is SIGKILLed, the program goes with it
        proc = subprocess.Popen(["setpriv", "--pdeathsig", "KILL", "--", *copy.argv],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True,
                                bufsize=1, errors="replace", env=env, start_new_session=True)
        self.procs.append(proc)
        self.monitor.sessions[proc.pid] = copy.index
        threading.Thread(target=self._read, args=(copy.index, proc), daemon=True,
                         name=f"program-{copy.index}").start()

    def _read(self, index: int, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.q.put(("line", (index, line.rstrip("\n"))))
        rc = proc.wait()
        self.q.put(("exit", (index, time.monotonic(), rc)))

    def _handle(self, kind: str, value: Any) -> bool:
        """One queue item; True means stop."""
        if is_stop(kind, value):
            return True
        m = self.monitor
        if kind == "cmd" and self.fault.take(value, self.name):
            with m.lock:
                m.on_fault()
        elif kind == "line":
            with m.lock:
                m.on_line(*value)
        elif kind == "exit":
            index, t, rc = value
            how = f"killed by {signal.Signals(-rc).name}" if rc < 0 else f"exited with {rc}"
            sys.stderr.write(f"# program {index} {how}; not restarted\n")
            with m.lock:
                m.trouble = True
            emit_event("exited", index, f"the program {how} (not restarted)", t, status=rc)
        elif kind == "ready":
            self.at_ready = (time.process_time(), self.capture.packets)
            self.clock.t0 = value
            emit_locked({"kind": "ready", "t": value})
        return False

    def run(self) -> NoReturn:
        start_stdin_reader(self.q)
        signal.signal(signal.SIGTERM, lambda *_: self.q.put(("cmd", "stop")))
        threading.Thread(target=self._watch, name="wire", daemon=True).start()
        for copy in self.copies:
            self._start(copy)
        while True:
            boundary, timeout = sample_due(self.clock.t0, self.next_index)
            if timeout is not None and timeout <= 0:
                self._print_sample(self.next_index, boundary, 1.0)
                self.next_index += 1
                continue
            try:
                kind, value = self.q.get(timeout=timeout)
            except queue.Empty:
                continue
            if self._handle(kind, value):
                self._exit()

    def _print_sample(self, upto: int, t: float, interval: float) -> None:
        with self.monitor.lock:
            record = self.monitor.sample(upto, t, interval)
        emit_locked(record)
        assert self.clock.t0 is not None
        sys.stderr.write(sysbench_line(t - self.clock.t0, record) + "\n")
        sys.stderr.flush()

    def _stop_programs(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.0, deadline - time.monotonic()))
        for proc in self.procs:  # the group too: a shell's children outlive it otherwise
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(1.0)

    def _exit(self) -> NoReturn:
        """Stop the programs, print the partial last interval, say what the capture cost."""
        try:
            self._stop_programs()
            if self.clock.t0 is not None:
                now = time.monotonic()
                start = self.clock.t0 + self.next_index
                self._print_sample(self.next_index + 10**6, now, max(now - start, 1e-3))
            c = self.capture
            cpu, packets = time.process_time() - self.at_ready[0], c.packets - self.at_ready[1]
            sys.stderr.write(f"# wire: {c.packets} packets, {c.drops()} dropped by the kernel, "
                             f"{c.truncated} truncated; since ready {packets} packets in "
                             f"{cpu:.2f} s of driver cpu ({1e6 * cpu / max(packets, 1):.0f} "
                             "us a packet, all included)\n")
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(0)


def run_programs(cfg: CommandConfig, copies: list[Copy], name: str) -> NoReturn:
    """The command and zoo drivers' main loop over their programs."""
    try:
        driver = ProgramsDriver(cfg, copies, name)
    except OSError as exc:  # no AF_PACKET (not root, no CAP_NET_RAW)
        sys.stderr.write(f"{name}: cannot open the wire observer's packet socket: {exc}\n")
        sys.exit(2)
    driver.run()


def main(argv: list[str]) -> None:
    cfg = parse_config(argv, CommandConfig, "lab.load.command")
    if not cfg.load.command:
        sys.stderr.write("lab.load.command: load.command is empty\n")
        sys.exit(2)
    run_programs(cfg, [Copy(0, list(cfg.load.command), lab_env(cfg.target))],
                 "lab.load.command")


if __name__ == "__main__":
    main(sys.argv)
