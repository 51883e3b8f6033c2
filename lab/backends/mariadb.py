"""MariaDB backend: a real mariadbd in a backend namespace, started from a cached template.

A trial must be cheap to build (target: 4 namespaces + 2 servers + teardown in <= 5 s), but
mariadb-install-db plus a sysbench-style prepare takes seconds. So both happen once per
machine: `ensure_template()` builds an initialised datadir with the sbtest schema and data
(lab.workload.sbtest) under the lab's CACHE_DIR (lab.net.runtime), keyed by the mariadbd
version and the table count/size, and each server start only copies it (~25 MB, tens of
ms) and starts mariadbd (~0.2 s).

Setup and inspection go over the server's unix socket as root (socket authentication), never
over TCP from the host namespace: every TCP client of a lab server lives in a lab namespace.

Only root reaches a server: its folder (socket, datadir, logs) is 0700, and the
sbtest account's password is random per run (`run_password`), set over the root socket. The
template keeps the account locked behind a password nobody knows, so the server that copies it
refuses sbtest logins from the moment it listens on TCP until `start()` has set the run's
password (ALTER USER ... ACCOUNT UNLOCK): there is no window with a known password.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import re
import secrets
import shutil
import subprocess
import tempfile
import threading
import time
from functools import cache
from pathlib import Path
from typing import Any

import pymysql

from lab.backends.base import (
    Pollable,
    ProcessBackend,
    check_socket_path,
    private_dir,
    wait_healthy,
)
from lab.net import runtime
from lab.net.process import ChildProcess, require_binary, tail
from lab.net.topology import Host
from lab.workload.sbtest import DATABASE, USER, load_tables

# what a client (through the VIP) asks to learn which backend answered
IDENTITY_SQL = "SELECT name FROM sbtest.lab_identity WHERE id = 1"
SET_IDENTITY_SQL = "UPDATE sbtest.lab_identity SET name = %s WHERE id = 1"

START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 5.0
TEMPLATE_STOP_TIMEOUT_S = 60.0  # the template's slow shutdown (innodb-fast-shutdown=0)
# part of the template's cache key: "locked" templates keep sbtest locked (older ones had a
# fixed, known password and must not be reused)
TEMPLATE_FORMAT = "locked"

# Options shared by the template build and every server: InnoDB files must be compatible, and
# buffers are small so start and shutdown are fast. Durability is irrelevant (the datadir is a
# throw-away copy), so commits do not fsync: fsync latency of the VM disk would otherwise
# dominate the transaction latency the lab measures.
INNODB_OPTIONS = (
    "--innodb-buffer-pool-size=64M",
    "--innodb-log-file-size=8M",
    "--innodb-flush-log-at-trx-commit=2",
    "--innodb-buffer-pool-dump-at-shutdown=0",
    "--innodb-buffer-pool-load-at-startup=0",
)


def check_binaries(path: str | None = None) -> dict[str, str]:
    """Absolute paths of mariadbd and mariadb-install-db, or a one-line LabError.

    mariadbd lives in /usr/sbin, which a non-login root shell may not have on PATH, so the sbin
    directories are searched as well (unless `path` is given, e.g. by a test).
    """
    return {name: require_binary(name, "mariadb-server", path)
            for name in ("mariadbd", "mariadb-install-db")}


@cache
def mariadbd_version() -> str:
    """'10.11.19-MariaDB-0+deb12u1': part of the template's cache key."""
    binary = check_binaries()["mariadbd"]
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True)
    m = re.search(r"Ver\s+(\S+)", out.stdout)
    if not m:
        raise RuntimeError(f"cannot parse '{binary} --version': {out.stdout.strip()!r}")
    return re.sub(r"[^A-Za-z0-9._+-]", "_", m.group(1))


def template_dir(tables: int, table_size: int) -> Path:
    return (runtime.CACHE_DIR
            / f"mariadb-{mariadbd_version()}-t{tables}-s{table_size}-{TEMPLATE_FORMAT}")


_run_passwords: dict[str, str] = {}
_run_passwords_lock = threading.Lock()


def run_password(run_id: str) -> str:
    """The sbtest password of run `run_id`, random, made on first use and kept in memory only.

    Per run rather than per server: a trial's driver connects through the VIP to whichever
    backend the LB picks (backend1, then backend2 after a switchover), and a backend that is
    restarted must take the same clients back, so every server of a run shares it."""
    with _run_passwords_lock:
        if run_id not in _run_passwords:
            _run_passwords[run_id] = secrets.token_urlsafe(24)
        return _run_passwords[run_id]


def _server_argv(datadir: Path, run_dir: Path, socket_path: Path, *extra: str,
                 binary: str | None = None) -> list[str]:
    """mariadbd's command line; --no-defaults first so /etc/mysql is never read (mariadbd
    rejects it anywhere else). `binary`: the server's path where it runs (a container)."""
    check_socket_path(socket_path)
    return [
        binary or check_binaries()["mariadbd"],
        "--no-defaults",
        "--user=root",
        f"--datadir={datadir}",
        f"--socket={socket_path}",
        f"--pid-file={run_dir / 'mariadbd.pid'}",
        f"--log-error={run_dir / 'error.log'}",
        f"--tmpdir={run_dir}",
        "--skip-log-bin",
        "--skip-name-resolve",
        "--max-connections=200",
        *INNODB_OPTIONS,
        *extra,
    ]


def _connect_unix(socket_path: Path, timeout: float = 2.0) -> pymysql.connections.Connection:
    return pymysql.connect(unix_socket=str(socket_path), user="root", connect_timeout=timeout,
                           read_timeout=30, autocommit=True)


def _wait_healthy(server: Pollable, socket_path: Path, log: Path,
                  timeout: float = START_TIMEOUT_S) -> None:
    """Until `SELECT 1` answers over the unix socket; RuntimeError with the log tail if not."""

    def answers() -> bool:
        if not socket_path.exists():
            return False
        with contextlib.closing(_connect_unix(socket_path, timeout=1.0)) as conn:
            conn.query("SELECT 1")
        return True

    wait_healthy(
        answers, server, timeout, interval=0.02, errors=(pymysql.err.Error,),
        exited=lambda: (f"mariadbd exited with code {server.returncode} during startup; "
                        f"{log} ends with:\n{tail(log)}"),
        silent=lambda last: (f"mariadbd did not answer within {timeout:.0f}s (last error: "
                             f"{last}); {log} ends with:\n{tail(log)}"))


def load_sbtest(socket_path: Path, tables: int, table_size: int,
                password: str | None = None) -> None:
    """What `sysbench oltp_read_write prepare` does, plus the lab_identity table, as root over
    the server's unix socket.

    The sbtest account gets `password`; without one (the template) it is locked, with a
    random password that is thrown away, until a server sets its run's (`set_password`)."""
    with contextlib.closing(_connect_unix(socket_path)) as conn, conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE {DATABASE}")
        lock = "" if password else " ACCOUNT LOCK"
        cur.execute(f"CREATE USER '{USER}'@'%%' IDENTIFIED BY %s{lock}",
                    (password or secrets.token_urlsafe(24),))
        cur.execute(f"GRANT ALL ON {DATABASE}.* TO '{USER}'@'%'")
        cur.execute(f"USE {DATABASE}")
        load_tables(cur, tables, table_size)
        cur.execute("CREATE TABLE lab_identity (id TINYINT PRIMARY KEY, name VARCHAR(64) "
                    "NOT NULL) ENGINE=InnoDB")
        cur.execute("INSERT INTO lab_identity VALUES (1, 'template')")


# --- the template -----------------------------------------------------------------------------


def ensure_template(tables: int = 4, table_size: int = 1000) -> Path:
    """The cached template datadir for (tables, table_size); built once per machine.

    Safe against concurrent callers (threads or processes): a flock serialises builders of
    the same template, the build happens in a temporary directory and is renamed into place
    only when complete, so a killed build never leaves a half template behind.
    """
    cache_dir = runtime.CACHE_DIR
    final = template_dir(tables, table_size)
    data = final / "data"
    if data.is_dir():
        return data
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / f".{final.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if data.is_dir():
            return data  # another builder finished while we waited
        for stale in cache_dir.glob(f".build-{final.name}-*"):
            shutil.rmtree(stale, ignore_errors=True)  # left by a killed build (we hold the lock)
        tmp = cache_dir / f".build-{final.name}-{os.getpid()}-{secrets.token_hex(3)}"
        private_dir(tmp)  # the data and its hashes: root only
        try:
            started = time.monotonic()
            _build_template(tmp, tables, table_size)
            info = {"mariadbd": mariadbd_version(), "tables": tables, "table_size": table_size,
                    "build_s": round(time.monotonic() - started, 2)}
            (tmp / "template.json").write_text(json.dumps(info) + "\n")
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return data


def _build_template(root: Path, tables: int, table_size: int) -> None:
    """install-db, then a private mariadbd (--skip-networking: unix socket only) to load
    sysbench's schema and data, then a slow clean shutdown so the copy starts without
    recovery or pending purge."""
    data = root / "data"
    _install_db(data, root / "build.log")
    # the cache path is long; a unix socket path must fit in 108 bytes
    sock_dir = Path(tempfile.mkdtemp(prefix="bhl-tpl-"))
    socket_path = sock_dir / "mysqld.sock"
    argv = _server_argv(data, root, socket_path, "--skip-networking", "--innodb-fast-shutdown=0")
    server = ChildProcess(argv, root / "mariadbd.out", mode="w")
    try:
        _wait_healthy(server, socket_path, root / "error.log")
        load_sbtest(socket_path, tables, table_size)
        rc = server.stop(TEMPLATE_STOP_TIMEOUT_S)
        if rc != 0:
            raise RuntimeError(f"template mariadbd shutdown failed ({rc}):\n"
                               f"{tail(root / 'error.log')}")
    finally:
        server.stop(0, signals=())  # a failed build is thrown away: kill -9 at once
        shutil.rmtree(sock_dir, ignore_errors=True)
    with contextlib.suppress(FileNotFoundError):
        (root / "mariadbd.pid").unlink()


def _install_db(data: Path, log: Path) -> None:
    """mariadb-install-db into `data`: the system tables, root by socket authentication."""
    with open(log, "w") as out:
        install = subprocess.run(
            [check_binaries()["mariadb-install-db"], "--no-defaults", "--user=root",
             f"--datadir={data}", "--auth-root-authentication-method=socket", "--skip-test-db",
             "--skip-name-resolve", *INNODB_OPTIONS],
            stdout=out, stderr=subprocess.STDOUT, timeout=120,
        )
    if install.returncode != 0:
        raise RuntimeError(f"mariadb-install-db failed ({install.returncode}):\n{tail(log)}")


# --- the server --------------------------------------------------------------------------------


class MariaDBServer(ProcessBackend):
    """mariadbd in `host`'s namespace, bound to `address:port`, data copied from the template.

    Each server writes its own name into sbtest.lab_identity at start, so a client can tell
    through the VIP which backend answered (IDENTITY_SQL); `SELECT @@report_host` gives the
    same name without touching a table.
    """

    kind = "mariadb"
    stop_timeout_s = STOP_TIMEOUT_S

    def __init__(self, host: Host, address: ipaddress.IPv4Address, *, port: int = 3306,
                 tables: int = 4, table_size: int = 1000, password: str | None = None) -> None:
        super().__init__(host, address)
        self.port = port
        self.tables = tables
        self.table_size = table_size
        self._use_dir("mariadb", "mysqld.sock")
        self.datadir = self.dir / "data"
        # shared by the run's servers (see run_password); never on a command line
        self.password = password or run_password(host.run_id)

    def start(self) -> None:
        self._refuse_if_running("mariadbd")
        t0 = time.monotonic()
        template = ensure_template(self.tables, self.table_size)
        t1 = time.monotonic()
        shutil.rmtree(self.datadir, ignore_errors=True)
        private_dir(self.dir)
        shutil.copytree(template, self.datadir)
        t2 = time.monotonic()
        # fast shutdown 3: no flush, no rollback -- the copy is thrown away after the trial
        argv = _server_argv(self.datadir, self.dir, self.socket_path,
                            f"--bind-address={self.address}", f"--port={self.port}",
                            "--innodb-fast-shutdown=3", f"--report-host={self.name}")
        server = self._launch(argv, self.dir / "mariadbd.out")
        with self._stopped_on_failure():
            _wait_healthy(server, self.socket_path, self.error_log)
            self.set_password()
            self.query(SET_IDENTITY_SQL, (self.name,))
            self._check_listening()
        t3 = time.monotonic()
        self.timings = {"template_s": t1 - t0, "copy_s": t2 - t1, "start_s": t3 - t2,
                        "total_s": t3 - t0}

    def _check_listening(self) -> None:
        """The health check used the unix socket; prove the TCP listener from inside the ns."""
        out = self.host.run(["ss", "-Hltn"]).stdout
        want = f"{self.address}:{self.port}"
        if not any(want in line.split() for line in out.splitlines()):
            raise RuntimeError(f"{self.name}: mariadbd answers on its socket but does not "
                               f"listen on {want}; ss -ltn:\n{out}\n{tail(self.error_log)}")

    def set_password(self) -> None:
        """Give sbtest the run's password and unlock it (the template's copy is locked)."""
        self.query(f"ALTER USER '{USER}'@'%%' IDENTIFIED BY %s ACCOUNT UNLOCK",
                   (self.password,))

    def client_params(self) -> dict[str, str]:
        """The account for the driver's config; it travels in the driver's environment (see
        lab.load.base), never on a command line."""
        return {"user": USER, "password": self.password, "database": DATABASE}

    def query(self, sql: str, args: Any = None) -> list[tuple[Any, ...]]:
        """Run one statement as root over the unix socket (setup, inspection)."""
        with contextlib.closing(_connect_unix(self.socket_path)) as conn, \
                conn.cursor() as cur:
            cur.execute(sql, args)
            return list(cur.fetchall())

    def identity(self) -> str:
        return str(self.query(IDENTITY_SQL)[0][0])
