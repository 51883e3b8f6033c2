"""The `oltp` driver: sysbench's oltp_read_write over PyMySQL, on long-lived connections.

    BHL_DRIVER_CONFIG=CONFIG_JSON python -m lab.load.oltp
                                             (started by DriverProcess in the client namespace)

Why not sysbench itself: Debian's sysbench 1.0.20 segfaults on its reconnect path with
MariaDB Connector/C (akopytov/sysbench#527), and the lab needs per-thread events (the first
error, the reconnect, the first good transaction after the fault) that sysbench never prints.
So this driver does what `sysbench oltp_read_write --mysql-ignore-errors=all` does, with the
same statements, the same random distributions and the same r/w/o counting, and speaks the
protocol of lab.load.base (its threads and main loop are lab.load.runtime's).

Each worker thread owns one persistent connection (the long-lived connection is the point of
the lab), in plain text as sysbench's (no TLS), and reads each answer whole, as sysbench
stores it, without decoding its rows (`query`). A lost connection (2013/2006/2003/2055, or
any error after which PyMySQL closed the socket) is counted, reported once as an `error`
event, and replaced: connect is retried every RECONNECT_PAUSE_S until it works, then a
`reconnect` event follows. Any other server error (deadlock, duplicate key) is counted, the
transaction rolled back, and the thread goes on.

Counting follows sysbench: per transaction 14 reads, 4 writes, 2 other (qps = 20 x tps);
a transaction is counted in the second it completed; the statements that succeeded before an
error count too, so qps = 20 x tps exactly only in seconds without errors. Samples start at
`ready` (warm-up transactions are not sampled). Latency is per request, as sysbench's per
event (a failed transaction is retried within its request), and a request still in flight
counts by its age, which sysbench's report cannot do (lab.load.base, lat_p95_ms).

Beyond lab.load.base's protocol the driver adds, for inspection:
  * an `event` "connected" per new connection, detail = local/peer address and the effective
    socket options read back with getsockopt, also as a dict under "sockopts";
  * "interval_s" in every sample (1.0, except the last, partial one printed on stop; its
    counts are still per second, i.e. divided by interval_s);
  * load.shape "idle": an `event` "idle" each time a thread starts its idle_s sleep after a
    successful transaction (the trial injects an idle-connection fault right after one);
  * load.rate: transactions on a schedule per thread (lab.load.runtime.Pacer), a failed one
    retried at once, the fault mark starting one at once;
  * connect failures while reconnecting: one `error` event per reconnect sequence (detail
    ends in "(connect)"), not one per attempt.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

import pymysql
from pydantic import BaseModel, ConfigDict, Field
from pymysql.constants import COMMAND
from pymysql.protocol import MysqlPacket

from lab.load.runtime import (
    BaseConfig,
    Clock,
    FaultMark,
    Queue,
    SocketReport,
    Worker,
    emit_connected,
    run_driver,
)
from lab.workload import sbtest
from lab.workload.sbtest import SysbenchRandom

# --- sysbench compatibility ------------------------------------------------------------------

RANGE_SIZE = 100
POINT_SELECTS = 10
# per transaction, as sysbench counts them: SELECTs are reads; UPDATE/DELETE/INSERT writes;
# BEGIN/COMMIT other
READS_PER_TXN = POINT_SELECTS + 4
WRITES_PER_TXN = 4
OTHER_PER_TXN = 2
QUERIES_PER_TXN = READS_PER_TXN + WRITES_PER_TXN + OTHER_PER_TXN
RANGE_QUERIES = (
    "SELECT c FROM sbtest{t} WHERE id BETWEEN {a} AND {b}",
    "SELECT SUM(k) FROM sbtest{t} WHERE id BETWEEN {a} AND {b}",
    "SELECT c FROM sbtest{t} WHERE id BETWEEN {a} AND {b} ORDER BY c",
    "SELECT DISTINCT c FROM sbtest{t} WHERE id BETWEEN {a} AND {b} ORDER BY c",
)


# --- configuration ---------------------------------------------------------------------------


class Target(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str
    port: int = Field(3306, ge=1, le=65535)
    user: str = sbtest.USER
    # the backend's run password (Backend.client_params); kept out of reprs and errors
    password: str = Field("", repr=False)
    database: str = sbtest.DATABASE


class OltpConfig(BaseConfig):
    """The driver's CONFIG_JSON (see lab.load.base for how the trial passes it)."""

    target: Target


# --- errors ----------------------------------------------------------------------------------

# errors after which the connection is gone (CR_SERVER_GONE_ERROR, CR_SERVER_LOST,
# CR_CONN_HOST_ERROR, CR_TCP_CONNECTION, CR_SERVER_LOST_EXTENDED)
LOST_CODES = frozenset({2003, 2006, 2011, 2013, 2055})


def error_detail(exc: BaseException) -> str:
    """'2013 Lost connection to MySQL server during query ([Errno 110] Connection timed out)'."""
    args = getattr(exc, "args", ())
    if len(args) >= 2 and isinstance(args[0], int):
        return f"{args[0]} {args[1]}"
    return f"{type(exc).__name__}: {exc}"


def error_code(exc: BaseException) -> int:
    args = getattr(exc, "args", ())
    return args[0] if args and isinstance(args[0], int) else 0


# --- the wire --------------------------------------------------------------------------------

EOF_BYTE, ERR_BYTE = b"\xfe", b"\xff"
EOF_MAX_LEN = 9  # an EOF packet is shorter; a row may also start with 0xFE (a long length)


def _lost_error(conn: pymysql.connections.Connection, why: str) -> pymysql.err.OperationalError:
    """PyMySQL's own error for a connection lost while reading (Connection._read_bytes)."""
    conn._force_close()
    return pymysql.err.OperationalError(2013, f"Lost connection to MySQL server during query{why}")


def _skip_result_set(conn: pymysql.connections.Connection) -> None:
    """Read a result set's column definitions and rows up to its final EOF, decoding nothing.

    PyMySQL never negotiates CLIENT_DEPRECATE_EOF, so a result set is: column definitions,
    EOF, rows, EOF (after its column-count packet, which the caller has read)."""
    read = conn._rfile.read
    eofs = 0
    try:
        while True:
            header = read(4)
            if len(header) < 4:
                break
            size = header[0] | header[1] << 8 | header[2] << 16
            payload = read(size)
            if len(payload) < size:
                break
            kind = payload[:1]  # (b"" for an empty packet: never in these answers)
            if kind == EOF_BYTE and size < EOF_MAX_LEN:
                eofs += 1
                if eofs == 2:
                    return
            elif kind == ERR_BYTE:  # the server gave up mid-result (e.g. killed)
                MysqlPacket(payload, conn.encoding).raise_for_error()
    except OSError as exc:  # a timeout too (TimeoutError is an OSError)
        raise _lost_error(conn, f" ({exc})") from None
    raise _lost_error(conn, "")


def query(conn: pymysql.connections.Connection, sql: str) -> None:
    """conn.query(sql), reading its whole answer as sysbench does (mysql_store_result) but
    building no rows from it: nobody looks at them, and PyMySQL's column and row decoding (the
    range SELECTs return 100 rows each, ~370 packets a transaction) was half of the driver's
    CPU: 1.6-2.2 ms a transaction before, 0.85-1.0 ms since, +30 % tps at one thread.
    What can fail fails as in conn.query: the command and the answer's first packet are
    PyMySQL's own (_execute_command, _read_packet: timeouts, an ERR answer, the packet
    order); a connection lost later raises PyMySQL's 2013 error and closes it."""
    conn._execute_command(COMMAND.COM_QUERY, sql)
    first = conn._read_packet()  # raises the server's error
    if not first.is_ok_packet():
        _skip_result_set(conn)


def statements(rng: SysbenchRandom, tables: int, size: int) -> Iterator[tuple[str, str]]:
    """One transaction's (class, sql) in sysbench's oltp_read_write order; class is r, w or o."""

    def table() -> int:
        return rng.randint(1, tables)

    yield "o", "BEGIN"
    tn = table()
    for _ in range(POINT_SELECTS):
        yield "r", f"SELECT c FROM sbtest{tn} WHERE id={rng.special(1, size)}"
    for query in RANGE_QUERIES:
        a = rng.special(1, size)
        yield "r", query.format(t=table(), a=a, b=a + RANGE_SIZE - 1)
    yield "w", f"UPDATE sbtest{table()} SET k=k+1 WHERE id={rng.special(1, size)}"
    yield "w", f"UPDATE sbtest{table()} SET c='{rng.c_value()}' WHERE id={rng.special(1, size)}"
    tn, row_id, k = table(), rng.special(1, size), rng.special(1, size)
    yield "w", f"DELETE FROM sbtest{tn} WHERE id={row_id}"
    yield "w", (f"INSERT INTO sbtest{tn} (id, k, c, pad) VALUES "
                f"({row_id}, {k}, '{rng.c_value()}', '{rng.pad_value()}')")
    yield "o", "COMMIT"


# --- the worker ------------------------------------------------------------------------------


class OltpWorker(Worker[pymysql.connections.Connection]):
    """One client thread: one PyMySQL connection, oltp_read_write transactions in a loop."""

    CONNECT_ERRORS = (pymysql.err.Error,)
    program = "oltp"

    def __init__(self, index: int, cfg: OltpConfig, clock: Clock, fault: FaultMark,
                 ready: Queue) -> None:
        super().__init__(index, cfg, clock, fault, ready)
        self.oltp_cfg = cfg
        self.rng = SysbenchRandom()

    def _open(self) -> None:
        t, c = self.oltp_cfg.target, self.cfg.client
        conn = pymysql.connect(
            host=t.host, port=t.port, user=t.user, password=t.password, database=t.database,
            connect_timeout=c.connect_timeout_s, read_timeout=c.read_timeout_s,
            write_timeout=c.write_timeout_s, autocommit=True,
            # no TLS, as sysbench (--mysql-ssl=off): PyMySQL >= 1.2 prefers TLS and builds an
            # SSL context per connect (the system's CA store: 40-60 ms of CPU), which made each
            # reconnect attempt, and so the detected recovery, that much late
            ssl_disabled=True,
        )
        sock = conn._sock  # PyMySQL has no public accessor; see apply_sockopts
        assert sock is not None
        try:
            report = SocketReport.configure(sock, c)
        except OSError as exc:  # e.g. reset right after the login (ENOTCONN)
            with contextlib.suppress(Exception):
                conn.close()
            raise pymysql.err.OperationalError(
                2003, f"Can't connect to MySQL server on {t.host!r} ({exc})") from exc
        emit_connected(self.index, report.local, report.peer, report.sockopts)
        self.conn = conn

    _error_detail = staticmethod(error_detail)

    def _lost(self, exc: pymysql.err.Error) -> bool:
        """Whether the connection is gone after `exc` (else the transaction is rolled back)."""
        assert self.conn is not None
        if error_code(exc) in LOST_CODES or self.conn._sock is None:
            return True
        try:
            self.conn.rollback()
        except pymysql.err.Error:
            return True
        return False

    def _transaction(self) -> bool:
        assert self.conn is not None
        start = self._begin()
        done = {"r": 0, "w": 0, "o": 0}
        load = self.cfg.load
        try:
            for cls, sql in statements(self.rng, load.tables, load.table_size):
                query(self.conn, sql)
                done[cls] += 1
        except pymysql.err.Error as exc:
            self._failed(error_detail(exc), r=done["r"], w=done["w"], o=done["o"])
            if self._lost(exc):
                self._reconnect()
            return False
        self._completed(start, r=done["r"], w=done["w"], o=done["o"])
        return True


def main(argv: list[str]) -> None:
    run_driver(argv, OltpConfig, OltpWorker, "lab.load.oltp")


if __name__ == "__main__":
    main(sys.argv)
