"""What runs inside a driver process: its threads, its per-second accounting, its protocol.

lab.load.base is the contract and the trial's side of it (the trial process imports only
that); this module is the driver's side, shared by every driver so that they behave the same
around their requests: the sample grid (`Clock`), the fault mark received on stdin
(`FaultMark`), the pace of a thread's transactions (`Pacer`, load.rate), the records written
to stdout (`emit_locked`, `emit_event`), the socket options applied to and read back from a
connection, and the `Worker` / `Driver` base classes that the oltp and http drivers fill in
with one connection and one transaction.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import socket
import sys
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, NoReturn, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict

from lab.config.settings import ClientSettings, LoadSettings
from lab.load.base import CONFIG_ENV, emit, sysbench_line

RECONNECT_PAUSE_S = 0.005  # between connect attempts, like sysbench's mysql_drv_reconnect
SAMPLE_GRACE_S = 0.005  # let a txn that ended just before a boundary land in its bucket

Queue = queue.Queue[tuple[str, Any]]
ConfigT = TypeVar("ConfigT", bound=BaseModel)


class Closable(Protocol):
    def close(self) -> None: ...


ConnT = TypeVar("ConnT", bound=Closable)


class BaseConfig(BaseModel):
    """What every driver's config holds besides its target."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    client: ClientSettings = ClientSettings()
    load: LoadSettings = LoadSettings()


def parse_config(argv: list[str], model: type[ConfigT], module: str) -> ConfigT:
    """`BHL_DRIVER_CONFIG=CONFIG_JSON python -m MODULE` -> the validated config (usage and
    exit 2 otherwise).

    The config holds the backend's password, so it comes from the environment (only root can
    read /proc/PID/environ of a root process; argv is world-readable) and is removed from it
    at once: what the driver starts (sysbench) does not inherit it."""
    raw = os.environ.pop(CONFIG_ENV, None)
    if len(argv) != 1 or raw is None:
        sys.stderr.write(f"usage: {CONFIG_ENV}=CONFIG_JSON python -m {module}\n")
        sys.exit(2)
    return model.model_validate(json.loads(raw))


def run_driver(argv: list[str], model: type[BaseConfig], worker_class: type[Worker[Any]],
               module: str) -> NoReturn:
    """A threaded driver's main(): its config from the environment, its workers, until
    `stop`."""
    Driver(parse_config(argv, model, module), worker_class).run()


# --- records ---------------------------------------------------------------------------------

_emit_lock = threading.Lock()


def emit_locked(record: dict[str, Any]) -> None:
    """emit() from several threads without interleaving lines."""
    with _emit_lock:
        emit(record)


def emit_event(event: str, thread: int, detail: str, t: float | None = None,
               **extra: Any) -> None:
    record = {"kind": "event", "t": time.monotonic() if t is None else t, "event": event,
              "thread": thread, "detail": detail}
    record.update(extra)
    emit_locked(record)


def emit_connected(thread: int, local: str, peer: str, sockopts: dict[str, int],
                   pid: int | None = None) -> None:
    """The `connected` event: addresses and the socket options the kernel reports."""
    owner = f" pid={pid}" if pid is not None else ""
    emit_event("connected", thread,
               f"local={local} peer={peer}{owner} "
               + " ".join(f"{k}={v}" for k, v in sockopts.items()),
               sockopts=sockopts, local=local)


# --- socket options --------------------------------------------------------------------------


def apply_sockopts(sock: socket.socket, client: ClientSettings) -> dict[str, int]:
    """Set the trial's socket options on a connected socket; return what the kernel reports.

    PyMySQL creates its socket inside connect() and offers no hook before that, so the options
    go on `conn._sock` right after connect(): before the first query, which is what matters for
    a blackholed query. (The SYNs and the login handshake are bounded by connect_timeout and
    read_timeout, PyMySQL's own semantics.) PyMySQL always sets SO_KEEPALIVE=1, so an explicit
    so_keepalive=False clears it.
    """
    if client.so_keepalive is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, int(client.so_keepalive))
    tcp_opts = (
        (socket.TCP_USER_TIMEOUT, client.tcp_user_timeout_ms),
        (socket.TCP_KEEPIDLE, client.tcp_keepidle),
        (socket.TCP_KEEPINTVL, client.tcp_keepintvl),
        (socket.TCP_KEEPCNT, client.tcp_keepcnt),
    )
    for opt, value in tcp_opts:
        if value is not None:
            sock.setsockopt(socket.IPPROTO_TCP, opt, value)
    return read_sockopts(sock)


def read_sockopts(sock: socket.socket) -> dict[str, int]:
    return {
        "TCP_USER_TIMEOUT": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT),
        "SO_KEEPALIVE": sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
        "TCP_KEEPIDLE": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
        "TCP_KEEPINTVL": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
        "TCP_KEEPCNT": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
        "TCP_NODELAY": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY),
    }


@dataclass(frozen=True)
class SocketReport:
    """A new connection's addresses and effective socket options (for `connected`)."""

    local: str
    peer: str
    sockopts: dict[str, int]

    @classmethod
    def configure(cls, sock: socket.socket, client: ClientSettings) -> SocketReport:
        """apply_sockopts, then read the addresses; OSError if the peer reset it already."""
        opts = apply_sockopts(sock, client)
        return cls("{}:{}".format(*sock.getsockname()[:2]),
                   "{}:{}".format(*sock.getpeername()[:2]), opts)


# --- per-second accounting -------------------------------------------------------------------


@dataclass
class Bucket:
    """What one thread did in one sample interval."""

    txns: int = 0
    reads: int = 0
    writes: int = 0
    other: int = 0
    errors: int = 0
    reconnects: int = 0
    latencies: list[float] = field(default_factory=list)

    def merge(self, other: Bucket) -> None:
        self.txns += other.txns
        self.reads += other.reads
        self.writes += other.writes
        self.other += other.other
        self.errors += other.errors
        self.reconnects += other.reconnects
        self.latencies.extend(other.latencies)


def p95(values: list[float]) -> float:
    """Nearest-rank 95th percentile (0 when nothing completed)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[max(0, -(-len(ordered) * 95 // 100) - 1)]


class Clock:
    """The sample grid: interval k is [t0 + k, t0 + k + 1); t0 is the `ready` time."""

    def __init__(self) -> None:
        self.t0: float | None = None

    def index(self, t: float) -> int | None:
        if self.t0 is None or t < self.t0:
            return None  # before ready: warm-up, not sampled
        return int(t - self.t0)


class Pacer:
    """load.rate: a thread's transactions on a schedule, slot k at t0 + k / rate (like
    sysbench's --rate, but a fixed grid per thread, not a Poisson stream).

    A schedule, not a pause after each transaction, so that latency does not lower the rate:
    a transaction that ends late starts the next one at once, on the grid. One that ends more
    than a slot late (an outage, a latency above 1 / rate) starts the next one at once and the
    grid again from it: missed slots are not made up in a burst after the outage.

    Pacing must not move the outage's edges, which the trial reads off transaction times:
      * `wait` is called only after a good transaction: a failed one is retried at once (the
        worker's loop), so a recovery is seen one reconnect + one transaction after it, as
        unpaced;
      * `restart` (the fault mark, from the main thread) ends a wait at once and starts the
        grid again from there: the connection is used right at the fault, as a busy one is,
        and the first transaction started after the fault starts at the mark, not up to
        1 / rate later.
    """

    def __init__(self, rate: float) -> None:
        self.period = 1.0 / rate if rate > 0 else 0.0
        self.t0: float | None = None
        self.k = 0
        self._restart = threading.Event()

    def restart(self) -> None:
        """The fault mark arrived: the next transaction starts now (or as soon as the one in
        flight ends)."""
        self._restart.set()

    def _anchor(self, now: float) -> None:
        self.t0, self.k = now, 0

    def wait(self) -> None:
        """Until the next slot (a good transaction just ended); returns at once unpaced."""
        if not self.period:
            return
        now = time.monotonic()
        if self.t0 is None or self._restart.is_set():
            self._restart.clear()
            self._anchor(now)
            return
        self.k += 1
        due = self.t0 + self.k * self.period
        if due < now - self.period:  # more than a slot behind: no burst to catch up
            self._anchor(now)
        elif due > now and self._restart.wait(due - now):
            self._restart.clear()
            self._anchor(time.monotonic())


# --- stdin -----------------------------------------------------------------------------------


class FaultMark:
    """The fault time received on stdin; a generation counter lets a second fault re-arm."""

    def __init__(self) -> None:
        self.t: float | None = None
        self.generation = 0

    def take(self, command: str, program: str) -> bool:
        """Move the mark on a `fault T` command (True); other commands leave it (False)."""
        if not command.startswith("fault "):
            return False
        try:
            self.t = float(command.split()[1])
        except (IndexError, ValueError):
            sys.stderr.write(f"{program}: ignoring malformed command {command!r}\n")
            return False
        self.generation += 1
        return True


def is_stop(kind: str, value: Any) -> bool:
    """A queue item that ends the driver: `stop`, or stdin closed (the trial is gone)."""
    return kind == "eof" or (kind == "cmd" and value == "stop")


def _read_stdin(q: Queue) -> None:
    buf = b""
    while True:
        try:
            chunk = os.read(0, 4096)
        except OSError:
            chunk = b""
        if not chunk:
            q.put(("eof", None))
            return
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            q.put(("cmd", line.decode(errors="replace").strip()))


def start_stdin_reader(q: Queue) -> None:
    """Commands from the trial arrive on `q` as ("cmd", line), then ("eof", None)."""
    threading.Thread(target=_read_stdin, args=(q,), name="stdin", daemon=True).start()


# --- workers ---------------------------------------------------------------------------------


class Worker(threading.Thread, Generic[ConnT]):
    """One client thread: one connection (`conn`), transactions in a loop, its own counters.

    A driver fills in its connection (`_open` sets `conn`, `CONNECT_ERRORS`, `_error_detail`)
    and one transaction (`_transaction`, which reports its outcome through `_failed` /
    `_completed`); the reconnect loop, the accounting and the recovery rule are the same for
    all.
    """

    # what a failed connect raises
    CONNECT_ERRORS: ClassVar[tuple[type[Exception], ...]] = ()
    program: ClassVar[str] = "worker"

    def __init__(self, index: int, cfg: BaseConfig, clock: Clock, fault: FaultMark,
                 ready: Queue) -> None:
        super().__init__(name=f"{self.program}-{index}", daemon=True)
        self.index = index
        self.cfg = cfg
        self.clock = clock
        self.fault = fault
        self.ready_q = ready
        self.conn: ConnT | None = None
        self.lock = threading.Lock()
        self.buckets: dict[int, Bucket] = {}
        # successful txns (start, end), so a fault mark that arrives late still finds the
        # first good transaction that started after it
        self.recent_ok: deque[tuple[float, float]] = deque(maxlen=256)
        self.recovered_generation = 0
        self.recovered_lock = threading.Lock()  # worker and main thread both check
        self.was_ready = False
        # when the request in flight began (None: none, e.g. an idle sleep); a failed
        # transaction leaves it, since the request is retried (see `_begin`)
        self.request_since: float | None = None
        self.pacer = Pacer(cfg.load.rate)  # load.rate: when the next transaction starts

    # what a driver fills in
    def _open(self) -> None:
        raise NotImplementedError

    @staticmethod
    def _error_detail(exc: BaseException) -> str:
        """How a failed connect reads in its `error` event."""
        raise NotImplementedError

    def _transaction(self) -> bool:
        """One transaction; False if it failed (and the connection was replaced if lost)."""
        raise NotImplementedError

    # accounting (the main thread drains buckets under self.lock)
    def _bucket(self, t: float) -> Bucket | None:
        k = self.clock.index(t)
        if k is None:
            return None
        b = self.buckets.get(k)
        if b is None:
            b = self.buckets[k] = Bucket()
        return b

    def drain(self, upto: int) -> Bucket:
        """Pop every bucket with index <= upto (late arrivals roll into the next sample)."""
        out = Bucket()
        with self.lock:
            for k in [k for k in self.buckets if k <= upto]:
                out.merge(self.buckets.pop(k))
        return out

    def _count(self, t: float, *, r: int = 0, w: int = 0, o: int = 0,
               txn_latency: float | None = None, error: bool = False,
               reconnect: bool = False) -> None:
        with self.lock:
            b = self._bucket(t)
            if b is None:
                return
            b.reads += r
            b.writes += w
            b.other += o
            if txn_latency is not None:
                b.txns += 1
                b.latencies.append(txn_latency * 1000.0)
            b.errors += int(error)
            b.reconnects += int(reconnect)

    def _begin(self) -> float:
        """A transaction starts now (returned); a request starts with it unless one is already
        in flight. A request is what sysbench calls an event: it ends only when a transaction
        succeeds, a failed one is retried within it (sysbench's RESTART_EVENT, an application
        retrying), so a request caught by an outage is as old as the outage."""
        now = time.monotonic()
        with self.lock:
            if self.request_since is None:
                self.request_since = now
        return now

    def inflight_age(self, t: float) -> float | None:
        """How long the request in flight at `t` has waited so far (None: none in flight)."""
        with self.lock:
            since = self.request_since
        return None if since is None or since > t else t - since

    def _failed(self, detail: str, *, r: int = 0, w: int = 0, o: int = 0) -> None:
        """A failed transaction: counted (with the statements that did succeed), reported.
        Its request stays in flight: the next transaction retries it."""
        now = time.monotonic()
        self._count(now, r=r, w=w, o=o, error=True)
        emit_event("error", self.index, detail, now)

    def _completed(self, start: float, *, r: int = 0, w: int = 0, o: int = 0) -> None:
        """A good transaction (started at `start`, by `_begin`): counted, with its request's
        latency (failed attempts included), a recovery candidate, the first one means ready."""
        end = time.monotonic()
        with self.lock:
            since = self.request_since if self.request_since is not None else start
            self.request_since = None
        self._count(end, r=r, w=w, o=o, txn_latency=end - since)
        with self.lock:
            self.recent_ok.append((start, end))
        self._check_recovered(start, end)
        if not self.was_ready:
            self.was_ready = True
            self.ready_q.put(("ready", self.index))

    # connections
    def _connect(self, after_error: bool) -> None:
        """Connect, retrying every RECONNECT_PAUSE_S like sysbench's mysql_drv_reconnect."""
        started = time.monotonic()
        attempts = 0
        while True:
            attempts += 1
            try:
                self._open()
                break
            except self.CONNECT_ERRORS as exc:
                if attempts == 1:
                    now = time.monotonic()
                    emit_event("error", self.index, f"{self._error_detail(exc)} (connect)", now)
                    self._count(now, error=True)
                time.sleep(RECONNECT_PAUSE_S)
        if after_error:
            now = time.monotonic()
            self._count(now, reconnect=True)
            emit_event("reconnect", self.index,
                       f"after {attempts} attempt(s) in {1000 * (now - started):.0f} ms", now)

    def _drop_connection(self) -> None:
        if self.conn is not None:
            # a PyMySQL close() sends COM_QUIT if the socket is still open; a dead one may
            # fail any way
            with contextlib.suppress(Exception):
                self.conn.close()
            self.conn = None

    def _reconnect(self) -> None:
        """The connection is lost: drop it and open a new one."""
        self._drop_connection()
        self._connect(after_error=True)

    # recovery
    def _check_recovered(self, start: float, end: float) -> None:
        f = self.fault
        with self.recovered_lock:
            t, generation = f.t, f.generation
            if t is None or self.recovered_generation >= generation or start < t:
                return
            self.recovered_generation = generation
            emit_event("recovered", self.index,
                       f"txn started {start - t:+.3f} s after the fault, "
                       f"took {1000 * (end - start):.1f} ms", end)

    def on_fault(self) -> None:
        """Main thread: a fault mark arrived; report a good txn that already started after it,
        and start the next one now if the thread waits for its slot (load.rate)."""
        self.pacer.restart()
        f = self.fault
        with self.lock:
            found = next(((s, e) for s, e in self.recent_ok if f.t is not None and s >= f.t),
                         None)
        if found:
            self._check_recovered(*found)

    def run(self) -> None:
        try:
            self._connect(after_error=False)
            idle = self.cfg.load.shape == "idle"
            while True:
                # idle and load.rate: wait after a good transaction only; a failed one is
                # retried at once on the new connection, as an application retries its request
                if not self._transaction():
                    continue
                if idle:
                    # the trial times an idle-connection fault from this instant
                    emit_event("idle", self.index, f"sleeping {self.cfg.load.idle_s:g}s")
                    time.sleep(self.cfg.load.idle_s)
                else:
                    self.pacer.wait()
        except BaseException:  # a bug, not a network error: die loudly, the trial sees EOF
            traceback.print_exc()
            sys.stderr.flush()
            os._exit(70)


# --- main thread: stdin, samples -------------------------------------------------------------


def sample_due(t0: float | None, index: int) -> tuple[float, float | None]:
    """(the end of sample `index`, seconds until it is due, <= 0: now; None before the clock
    starts): a driver's main loop waits for a command at most that long."""
    if t0 is None:
        return 0.0, None
    boundary = t0 + index + 1
    return boundary, boundary + SAMPLE_GRACE_S - time.monotonic()


class Driver:
    """The main thread: start the workers, say `ready` once each had a good transaction,
    print a sample per second, follow the trial's commands, and exit on `stop`."""

    def __init__(self, cfg: BaseConfig, worker_class: type[Worker[Any]]) -> None:
        self.cfg = cfg
        self.program = worker_class.program
        self.clock = Clock()
        self.fault = FaultMark()
        self.q: Queue = queue.Queue()
        self.workers = [worker_class(i, cfg, self.clock, self.fault, self.q)
                        for i in range(cfg.load.threads)]
        self.next_index = 0  # the sample interval to print next

    def sample(self, upto: int, t: float, interval: float) -> dict[str, Any]:
        """The sample of the intervals up to `upto`, taken at `t`. Its lat_p95_ms is over the
        requests that completed in it and the age at `t` of each request still in flight, so
        a stalled request shows as a latency growing second by second, not as silence."""
        total = Bucket()
        for w in self.workers:
            # in flight first: a request that completes meanwhile ends after t, in a later
            # bucket, so it is counted here by its age at t and there by its latency
            age = w.inflight_age(t)
            total.merge(w.drain(upto))
            if age is not None:
                total.latencies.append(age * 1000.0)
        per_s = 1.0 / interval if interval > 0 else 0.0

        def rate(n: int) -> float:
            return round(n * per_s, 2)

        return {
            "kind": "sample", "t": t, "tps": rate(total.txns),
            "qps": rate(total.reads + total.writes + total.other),
            "reads": rate(total.reads), "writes": rate(total.writes),
            "other": rate(total.other), "lat_p95_ms": round(p95(total.latencies), 2),
            "errors": rate(total.errors), "reconnects": rate(total.reconnects),
            "threads": len(self.workers), "interval_s": round(interval, 3),
        }

    def _print_sample(self, record: dict[str, Any]) -> None:
        emit_locked(record)
        assert self.clock.t0 is not None
        sys.stderr.write(sysbench_line(record["t"] - self.clock.t0, record) + "\n")
        sys.stderr.flush()

    def _command(self, kind: str, value: Any) -> bool:
        """Handle one queue item; True means stop."""
        if is_stop(kind, value):
            return True
        if kind == "cmd" and self.fault.take(value, self.program):
            for w in self.workers:
                w.on_fault()
        return False

    def run(self) -> NoReturn:
        start_stdin_reader(self.q)
        for w in self.workers:
            w.start()
        self._wait_ready()
        self._sample_forever()

    def _wait_ready(self) -> None:
        pending = {w.index for w in self.workers}
        while pending:
            kind, value = self.q.get()
            if kind == "ready":
                pending.discard(value)
            elif self._command(kind, value):
                self._exit()
        self.clock.t0 = time.monotonic()
        emit_locked({"kind": "ready", "t": self.clock.t0})

    def _sample_forever(self) -> NoReturn:
        while True:
            boundary, timeout = sample_due(self.clock.t0, self.next_index)
            if timeout is not None and timeout <= 0:
                self._print_sample(self.sample(self.next_index, boundary, 1.0))
                self.next_index += 1
                continue
            try:
                kind, value = self.q.get(timeout=timeout)
            except queue.Empty:
                continue
            if self._command(kind, value):
                self._exit()

    def _exit(self) -> NoReturn:
        """Print the partial last interval and leave at once: a worker may be stuck in a
        blackholed read that no Python-level interruption can end."""
        try:
            if self.clock.t0 is not None:
                now = time.monotonic()
                start = self.clock.t0 + self.next_index
                upto = self.next_index + 10**6
                self._print_sample(self.sample(upto, now, max(now - start, 1e-3)))
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(0)
