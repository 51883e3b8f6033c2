"""The `oltp` driver: sysbench's oltp_read_write over PyMySQL, on long-lived connections.

    python -m lab.load.oltp CONFIG_JSON      (started by DriverProcess in the client namespace)

Why not sysbench itself: Debian's sysbench 1.0.20 segfaults on its reconnect path with
MariaDB Connector/C (akopytov/sysbench#527), and the lab needs per-thread events (the first
error, the reconnect, the first good transaction after the fault) that sysbench never prints.
So this driver does what `sysbench oltp_read_write --mysql-ignore-errors=all` does, with the
same statements, the same random distributions and the same r/w/o counting, and speaks the
protocol of lab.load.base.

Each worker thread owns one persistent connection (the long-lived connection is the point of
the lab). A lost connection (2013/2006/2003/2055, or any error after which PyMySQL closed the
socket) is counted, reported once as an `error` event, and replaced: connect is retried every
RECONNECT_PAUSE_S until it works, then a `reconnect` event follows. Any other server error
(deadlock, duplicate key) is counted, the transaction rolled back, and the thread goes on.

Counting follows sysbench: per transaction 14 reads, 4 writes, 2 other (qps = 20 x tps);
a transaction is counted in the second it completed; the statements that succeeded before an
error count too, so qps = 20 x tps exactly only in seconds without errors. Samples start at
`ready` (warm-up transactions are not sampled).

Beyond lab.load.base's protocol the driver adds, for inspection:
  * an `event` "connected" per new connection, detail = local/peer address and the effective
    socket options read back with getsockopt, also as a dict under "sockopts";
  * "interval_s" in every sample (1.0, except the last, partial one printed on stop; its
    counts are still per second, i.e. divided by interval_s);
  * load.shape "idle": an `event` "idle" each time a thread starts its idle_s sleep after a
    successful transaction (the trial injects an idle-connection fault right after one);
  * connect failures while reconnecting: one `error` event per reconnect sequence (detail
    ends in "(connect)"), not one per attempt.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import random
import socket
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, NoReturn

import pymysql
from pydantic import BaseModel, ConfigDict, Field

from lab.config.settings import ClientSettings, LoadSettings
from lab.load.base import emit, sysbench_line

# --- sysbench compatibility ------------------------------------------------------------------

RANGE_SIZE = 100
POINT_SELECTS = 10
# per transaction, as sysbench counts them: SELECTs are reads; UPDATE/DELETE/INSERT writes;
# BEGIN/COMMIT other
READS_PER_TXN = POINT_SELECTS + 4
WRITES_PER_TXN = 4
OTHER_PER_TXN = 2
QUERIES_PER_TXN = READS_PER_TXN + WRITES_PER_TXN + OTHER_PER_TXN

C_GROUPS = 10  # oltp_common.lua: c = 10 groups of 11 random digits joined by '-' (119 chars)
PAD_GROUPS = 5  # pad = 5 groups (59 chars)

# sysbench 1.0.20's default --rand-type=special with --rand-spec-iter=12, -pct=1, -res=75
SPECIAL_ITER = 12
SPECIAL_PCT = 1
SPECIAL_RES = 75


def create_table_sql(table_num: int) -> str:
    """sysbench's CREATE TABLE for sbtestN (auto_inc, InnoDB; the k index comes after the load)."""
    return (
        f"CREATE TABLE sbtest{table_num}(\n"
        "  id INTEGER NOT NULL AUTO_INCREMENT,\n"
        "  k INTEGER DEFAULT '0' NOT NULL,\n"
        "  c CHAR(120) DEFAULT '' NOT NULL,\n"
        "  pad CHAR(60) DEFAULT '' NOT NULL,\n"
        "  PRIMARY KEY (id)\n"
        ") /*! ENGINE = innodb */"
    )


def create_index_sql(table_num: int) -> str:
    return f"CREATE INDEX k_{table_num} ON sbtest{table_num}(k)"


class SysbenchRandom(random.Random):
    """The value generators of sysbench 1.0.20's oltp scripts (same distributions, not the same
    PRNG stream): ids and k come from the 'special' distribution, strings are digit groups."""

    def special(self, a: int, b: int) -> int:
        """sb_rand_special: 75% of the values fall uniformly into the middle 1% of [a, b],
        the rest follows a 12-iteration gaussian over the whole range."""
        t = b - a
        rnd = self.random()
        if rnd * t * 100.0 / (100 - SPECIAL_RES) < t:
            s = sum(self.random() for _ in range(SPECIAL_ITER))
            return a + int(s * t / SPECIAL_ITER)
        hot = t * SPECIAL_PCT / 100.0
        return a + int(rnd * (hot + 1) + t / 2 - t * SPECIAL_PCT / 200.0)

    def digit_groups(self, groups: int) -> str:
        return "-".join(f"{self.randrange(10**11):011d}" for _ in range(groups))

    def c_value(self) -> str:
        return self.digit_groups(C_GROUPS)

    def pad_value(self) -> str:
        return self.digit_groups(PAD_GROUPS)


# --- configuration ---------------------------------------------------------------------------


class Target(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str
    port: int = Field(3306, ge=1, le=65535)
    user: str = "sbtest"
    password: str = "sbpass"
    database: str = "sbtest"


class OltpConfig(BaseModel):
    """The CONFIG_JSON argument (see lab.load.base for how the trial passes it)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    target: Target
    client: ClientSettings = ClientSettings()
    load: LoadSettings = LoadSettings()


def make_config(
    host: str, port: int, client: ClientSettings, load: LoadSettings
) -> dict[str, Any]:
    """Trial side: the config dict for DriverProcess(host, "lab.load.oltp", config, ...)."""
    return OltpConfig(target=Target(host=host, port=port), client=client, load=load).model_dump(
        mode="json"
    )


# --- connections -----------------------------------------------------------------------------

# errors after which the connection is gone (CR_SERVER_GONE_ERROR, CR_SERVER_LOST,
# CR_CONN_HOST_ERROR, CR_TCP_CONNECTION, CR_SERVER_LOST_EXTENDED)
LOST_CODES = frozenset({2003, 2006, 2011, 2013, 2055})
RECONNECT_PAUSE_S = 0.005


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


def error_detail(exc: BaseException) -> str:
    """'2013 Lost connection to MySQL server during query ([Errno 110] Connection timed out)'."""
    args = getattr(exc, "args", ())
    if len(args) >= 2 and isinstance(args[0], int):
        return f"{args[0]} {args[1]}"
    return f"{type(exc).__name__}: {exc}"


def error_code(exc: BaseException) -> int:
    args = getattr(exc, "args", ())
    return args[0] if args and isinstance(args[0], int) else 0


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


# --- workers ---------------------------------------------------------------------------------


class FaultMark:
    """The fault time received on stdin; a generation counter lets a second fault re-arm."""

    def __init__(self) -> None:
        self.t: float | None = None
        self.generation = 0


class Worker(threading.Thread):
    """One client thread: one connection, transactions in a loop, its own counters."""

    def __init__(self, index: int, cfg: OltpConfig, clock: Clock, fault: FaultMark,
                 ready: queue.Queue[tuple[str, Any]]) -> None:
        super().__init__(name=f"oltp-{index}", daemon=True)
        self.index = index
        self.cfg = cfg
        self.clock = clock
        self.fault = fault
        self.ready_q = ready
        self.rng = SysbenchRandom()
        self.conn: pymysql.connections.Connection | None = None
        self.lock = threading.Lock()
        self.buckets: dict[int, Bucket] = {}
        # successful txns (start, end), so a fault mark that arrives late still finds the
        # first good transaction that started after it
        self.recent_ok: deque[tuple[float, float]] = deque(maxlen=256)
        self.recovered_generation = 0
        self.recovered_lock = threading.Lock()  # worker and main thread both check
        self.was_ready = False

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

    # connections
    def _connect_once(self) -> pymysql.connections.Connection:
        t, c = self.cfg.target, self.cfg.client
        conn = pymysql.connect(
            host=t.host, port=t.port, user=t.user, password=t.password, database=t.database,
            connect_timeout=c.connect_timeout_s, read_timeout=c.read_timeout_s,
            write_timeout=c.write_timeout_s, autocommit=True,
        )
        sock = conn._sock  # PyMySQL has no public accessor; see apply_sockopts
        assert sock is not None
        try:
            opts = apply_sockopts(sock, c)
            local = "{}:{}".format(*sock.getsockname()[:2])
            peer = "{}:{}".format(*sock.getpeername()[:2])
        except OSError as exc:  # e.g. reset right after the login (ENOTCONN)
            with contextlib.suppress(Exception):
                conn.close()
            raise pymysql.err.OperationalError(
                2003, f"Can't connect to MySQL server on {t.host!r} ({exc})") from exc
        emit_event("connected", self.index,
                   f"local={local} peer={peer} " + " ".join(f"{k}={v}" for k, v in opts.items()),
                   sockopts=opts, local=local)
        return conn

    # what a failed connect raises, and how it reads in an event (the http driver's differ)
    CONNECT_ERRORS: tuple[type[Exception], ...] = (pymysql.err.Error,)

    def _open(self) -> None:
        self.conn = self._connect_once()

    def _error_detail(self, exc: BaseException) -> str:
        return error_detail(exc)

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
            # close() sends COM_QUIT if the socket is still open; a dead one may fail any way
            with contextlib.suppress(Exception):
                self.conn.close()
            self.conn = None

    # the transaction
    def _statements(self) -> Iterator[tuple[str, str]]:
        """Yield (class, sql) in sysbench's oltp_read_write order; class is r, w or o."""
        rng, n, size = self.rng, self.cfg.load.tables, self.cfg.load.table_size

        def table() -> int:
            return rng.randint(1, n)

        yield "o", "BEGIN"
        tn = table()
        for _ in range(POINT_SELECTS):
            yield "r", f"SELECT c FROM sbtest{tn} WHERE id={rng.special(1, size)}"
        for query in (
            "SELECT c FROM sbtest{t} WHERE id BETWEEN {a} AND {b}",
            "SELECT SUM(k) FROM sbtest{t} WHERE id BETWEEN {a} AND {b}",
            "SELECT c FROM sbtest{t} WHERE id BETWEEN {a} AND {b} ORDER BY c",
            "SELECT DISTINCT c FROM sbtest{t} WHERE id BETWEEN {a} AND {b} ORDER BY c",
        ):
            a = rng.special(1, size)
            yield "r", query.format(t=table(), a=a, b=a + RANGE_SIZE - 1)
        yield "w", f"UPDATE sbtest{table()} SET k=k+1 WHERE id={rng.special(1, size)}"
        yield "w", f"UPDATE sbtest{table()} SET c='{rng.c_value()}' WHERE id={rng.special(1, size)}"
        tn, row_id, k = table(), rng.special(1, size), rng.special(1, size)
        yield "w", f"DELETE FROM sbtest{tn} WHERE id={row_id}"
        yield "w", (f"INSERT INTO sbtest{tn} (id, k, c, pad) VALUES "
                    f"({row_id}, {k}, '{rng.c_value()}', '{rng.pad_value()}')")
        yield "o", "COMMIT"

    def _transaction(self) -> bool:
        """One transaction; False if it failed (and the connection was replaced if lost)."""
        assert self.conn is not None
        start = time.monotonic()
        done = {"r": 0, "w": 0, "o": 0}
        try:
            for cls, sql in self._statements():
                self.conn.query(sql)
                done[cls] += 1
        except pymysql.err.Error as exc:
            now = time.monotonic()
            self._count(now, r=done["r"], w=done["w"], o=done["o"], error=True)
            emit_event("error", self.index, error_detail(exc), now)
            lost = error_code(exc) in LOST_CODES or self.conn._sock is None
            if not lost:
                try:
                    self.conn.rollback()
                except pymysql.err.Error:
                    lost = True
            if lost:
                self._drop_connection()
                self._connect(after_error=True)
            return False
        end = time.monotonic()
        self._count(end, r=done["r"], w=done["w"], o=done["o"], txn_latency=end - start)
        with self.lock:
            self.recent_ok.append((start, end))
        self._check_recovered(start, end)
        if not self.was_ready:
            self.was_ready = True
            self.ready_q.put(("ready", self.index))
        return True

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
        """Main thread: a fault mark arrived; report a good txn that already started after it."""
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
                # idle: sleep after a good transaction only; a failed one is retried at once
                # on the new connection, as an application retries its request
                if self._transaction() and idle:
                    # the trial times an idle-connection fault from this instant
                    emit_event("idle", self.index, f"sleeping {self.cfg.load.idle_s:g}s")
                    time.sleep(self.cfg.load.idle_s)
        except BaseException:  # a bug, not a network error: die loudly, the trial sees EOF
            traceback.print_exc()
            sys.stderr.flush()
            os._exit(70)


# --- main thread: stdin, samples -------------------------------------------------------------


def _stdin_reader(q: queue.Queue[tuple[str, Any]]) -> None:
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


class Driver:
    def __init__(self, cfg: OltpConfig) -> None:
        self.cfg = cfg
        self.clock = Clock()
        self.fault = FaultMark()
        self.q: queue.Queue[tuple[str, Any]] = queue.Queue()
        self.workers = [Worker(i, cfg, self.clock, self.fault, self.q)
                        for i in range(cfg.load.threads)]
        self.next_index = 0  # the sample interval to print next

    def sample(self, upto: int, t: float, interval: float) -> dict[str, Any]:
        total = Bucket()
        for w in self.workers:
            total.merge(w.drain(upto))
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
        if kind == "eof":
            return True
        if kind == "cmd":
            if value == "stop":
                return True
            if value.startswith("fault "):
                try:
                    self.fault.t = float(value.split()[1])
                except (IndexError, ValueError):
                    sys.stderr.write(f"oltp: ignoring malformed command {value!r}\n")
                    return False
                self.fault.generation += 1
                for w in self.workers:
                    w.on_fault()
        return False

    def run(self) -> None:
        threading.Thread(target=_stdin_reader, args=(self.q,), name="stdin", daemon=True).start()
        for w in self.workers:
            w.start()
        pending = {w.index for w in self.workers}
        while pending:
            kind, value = self.q.get()
            if kind == "ready":
                pending.discard(value)
            elif self._command(kind, value):
                self._exit()
        t0 = time.monotonic()
        self.clock.t0 = t0
        emit_locked({"kind": "ready", "t": t0})
        grace = 0.005  # let a txn that ended just before the boundary land in its bucket
        while True:
            boundary = t0 + self.next_index + 1
            timeout = boundary + grace - time.monotonic()
            if timeout <= 0:
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


def main(argv: list[str]) -> None:
    if len(argv) != 2:
        sys.stderr.write("usage: python -m lab.load.oltp CONFIG_JSON\n")
        sys.exit(2)
    cfg = OltpConfig.model_validate(json.loads(argv[1]))
    Driver(cfg).run()


if __name__ == "__main__":
    main(sys.argv)
