"""What the zoo's two Python programs share: the contract's environment, its output lines and
its loop (lab/load/zoo/README.md).

Imported from the program's own folder (sys.path[0]), never from the lab: the programs are
applications of their library, not the lab's driver. Only the connect differs between them.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

REFUSED = 64  # asked for a setting the library cannot apply
_OUT = threading.Lock()


def emit(text: str) -> None:
    """One contract line, flushed at once (the lab reads the outage off these stamps)."""
    with _OUT:
        sys.stdout.write(f"{time.time_ns() // 1_000_000} {text}\n")
        sys.stdout.flush()


def one_line(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())


def refuse(why: str) -> NoReturn:
    print(why, file=sys.stderr, flush=True)
    sys.exit(REFUSED)


def env_int(name: str) -> int | None:
    value = os.environ.get(name, "")
    return int(value) if value else None


def whole_seconds(name: str, library: str) -> int | None:
    """A LAB_*_MS value in the whole seconds a libmysqlclient-style option takes (a fraction
    is refused rather than rounded: the trial would measure a timeout it did not ask for)."""
    ms = env_int(name)
    if ms is None:
        return None
    if ms <= 0 or ms % 1000:
        refuse(f"{name}={ms}: {library} takes whole seconds (> 0)")
    return ms // 1000


def tune_socket(sock: socket.socket) -> None:
    """The socket options the library has no parameter for, set on its connected socket."""
    uto = env_int("LAB_TCP_USER_TIMEOUT_MS")
    if uto is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, uto)
    keepalive = env_int("LAB_SO_KEEPALIVE")
    if keepalive is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, keepalive)
    for name, opt in (("LAB_TCP_KEEPIDLE", socket.TCP_KEEPIDLE),
                      ("LAB_TCP_KEEPINTVL", socket.TCP_KEEPINTVL),
                      ("LAB_TCP_KEEPCNT", socket.TCP_KEEPCNT)):
        value = env_int(name)
        if value is not None:
            sock.setsockopt(socket.IPPROTO_TCP, opt, value)


@dataclass(frozen=True)
class Service:
    """Where the service is and the loop's shape, from the LAB_* environment."""

    host: str
    port: int
    user: str
    password: str
    database: str
    tables: int
    table_size: int
    pause_s: float
    reconnect_pause_s: float

    @classmethod
    def from_env(cls) -> Service:
        env = os.environ
        return cls(env["LAB_HOST"], int(env["LAB_PORT"]), env.get("LAB_USER", ""),
                   env.get("LAB_PASSWORD", ""), env.get("LAB_DATABASE", ""),
                   int(env["LAB_TABLES"]), int(env["LAB_TABLE_SIZE"]),
                   int(env.get("LAB_PAUSE_MS", "10")) / 1000,
                   int(env.get("LAB_RECONNECT_PAUSE_MS", "5")) / 1000)


def transaction(conn: Any, svc: Service) -> None:
    """BEGIN; SELECT; UPDATE; COMMIT on a random row, as the contract shapes it."""
    table = f"sbtest{random.randint(1, svc.tables)}"
    row = random.randint(1, svc.table_size)
    cur = conn.cursor()
    try:
        cur.execute("BEGIN")
        cur.execute(f"SELECT c FROM {table} WHERE id=%s", (row,))
        cur.fetchall()
        cur.execute(f"UPDATE {table} SET k=k+1 WHERE id=%s", (row,))
        cur.execute("COMMIT")
    finally:
        cur.close()


def _close(conn: Any) -> None:
    try:
        conn.close()
    except Exception as exc:  # a broken connection may refuse even its close
        print(f"close: {one_line(exc)}", file=sys.stderr, flush=True)


def loop(connect: Callable[[Service], Any], svc: Service) -> NoReturn:
    """One long-lived connection; on any error close it, pause, connect again, for ever."""
    while True:
        try:
            conn = connect(svc)
        except Exception as exc:
            emit(f"ERR {one_line(exc)}")
            time.sleep(svc.reconnect_pause_s)
            continue
        emit("CONNECTED")
        try:
            while True:
                transaction(conn, svc)
                emit("OK")
                time.sleep(svc.pause_s)
        except Exception as exc:
            emit(f"ERR {one_line(exc)}")
            _close(conn)
            time.sleep(svc.reconnect_pause_s)


def _stop(signum: int, frame: object) -> None:
    with _OUT:  # not in the middle of a line
        sys.stdout.flush()
        os._exit(0)


def run(library: str, version: str, connect: Callable[[Service], Any]) -> None:
    """Print VERSION, then loop in a worker thread: the main thread only waits for SIGTERM,
    so the exit is immediate even while the library blocks in a read."""
    emit(f"VERSION {library} {version}")
    svc = Service.from_env()
    signal.signal(signal.SIGTERM, _stop)
    worker = threading.Thread(target=loop, args=(connect, svc), name="zoo", daemon=True)
    worker.start()
    worker.join()
    sys.exit(1)  # the loop never returns: it died of a bug (its traceback is on stderr)
