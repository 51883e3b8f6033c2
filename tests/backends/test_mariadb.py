"""MariaDBServer: a real mariadbd in a namespace, reachable only from the lab, gone after stop."""

from __future__ import annotations

import json
import os
import signal
import stat
import sys
import threading
import time
from pathlib import Path

import pytest

from lab.backends.mariadb import MariaDBServer, check_binaries, ensure_template
from lab.errors import LabError
from lab.net import runtime
from lab.net.topology import Host, Network
from tests.backends.access import nobody_connects, nobody_lists

# runs inside the client namespace: the only place a TCP client may live; the password comes
# on stdin (never in argv)
CLIENT_PROBE = """
import json, sys, pymysql
c = pymysql.connect(host=sys.argv[1], port=int(sys.argv[2]), user="sbtest",
                    password=sys.stdin.readline().strip(), database="sbtest", connect_timeout=5)
cur = c.cursor()
out = {}
for n in range(1, int(sys.argv[3]) + 1):
    cur.execute(f"SELECT COUNT(*), MIN(id), MAX(id), MIN(k) >= 1, MAX(k) <= %s, "
                f"MIN(LENGTH(c)), MIN(LENGTH(pad)) FROM sbtest{n}", (int(sys.argv[4]),))
    out[f"sbtest{n}"] = [int(v) for v in cur.fetchone()]
cur.execute("SELECT name FROM sbtest.lab_identity WHERE id = 1")
out["identity"] = cur.fetchone()[0]
cur.execute("SELECT @@report_host, CURRENT_USER()")
out["report_host"], out["user"] = cur.fetchone()
print(json.dumps(out))
"""


# runs inside the client namespace: log in as sbtest with the password on stdin, print
# "ok" or the server's error code
LOGIN = """
import sys, pymysql
try:
    pymysql.connect(host=sys.argv[1], port=int(sys.argv[2]), user="sbtest",
                    password=sys.stdin.readline().strip(), connect_timeout=5).close()
    print("ok")
except pymysql.err.OperationalError as exc:
    print(exc.args[0])
"""
ER_ACCESS_DENIED = "1045"


def probe(net: Network, server: MariaDBServer) -> dict[str, object]:
    out = net["client"].run([sys.executable, "-c", CLIENT_PROBE, str(server.address),
                             str(server.port), str(server.tables), str(server.table_size)],
                            input=server.password + "\n")
    return json.loads(out.stdout)


def locked(server: MariaDBServer) -> list[tuple[str, str, str]]:
    """(user, host, account_locked) of the sbtest account, asked as root over the socket."""
    return [tuple(str(v) for v in row) for row in server.query(  # type: ignore[misc]
        "SELECT user, host, IF(JSON_VALUE(priv, '$.account_locked'), 'true', 'false') "
        "FROM mysql.global_priv WHERE user = 'sbtest'")]


def login(net: Network, server: MariaDBServer, password: str) -> str:
    """A TCP login as sbtest from the client namespace: "ok" or the error code."""
    return net["client"].run([sys.executable, "-c", LOGIN, str(server.address),
                              str(server.port)], input=password + "\n").stdout.strip()


@pytest.mark.root
def test_server_answers_from_the_client_namespace(network: Network) -> None:
    db = network["db"]
    server = MariaDBServer(db, db.address_towards("client"))
    try:
        server.start()
        pid = server.pid
        assert pid is not None
        assert Path(f"/proc/{pid}/comm").read_text().strip() == "mariadbd"
        assert pid in db.pids()  # it really runs in the db namespace
        seen = probe(network, server)
        for n in range(1, 5):
            # rows, ids 1..1000, k in range, c 119 chars, pad 59 chars (sysbench's templates)
            assert seen[f"sbtest{n}"] == [1000, 1, 1000, 1, 1, 119, 59]
        assert seen["identity"] == seen["report_host"] == "db"
        assert seen["user"] == "sbtest@%"
        assert server.identity() == "db"
        assert server.client_params() == {"user": "sbtest", "password": server.password,
                                          "database": "sbtest"}
        print(f"\nstart timings: {server.timings}")
    finally:
        server.stop()
    assert server.pid is None
    assert not db.pids()
    assert not os.path.exists(f"/proc/{pid}")
    server.stop()  # idempotent
    print(f"stop: {server.timings['stop_s'] * 1000:.0f} ms")


@pytest.mark.root
def test_template_is_reused_and_restart_is_fast(network: Network) -> None:
    db = network["db"]
    t = time.monotonic()
    template = ensure_template(4, 1000)
    first_ensure = time.monotonic() - t
    info = json.loads((template.parent / "template.json").read_text())
    server = MariaDBServer(db, db.address_towards("client"))
    starts = []
    try:
        for _ in range(2):
            server.start()
            starts.append(dict(server.timings))
            server.stop()
            starts[-1]["stop_s"] = server.timings["stop_s"]
    finally:
        server.stop()
    print(f"\ntemplate {template} (built once in {info['build_s']} s; ensure took "
          f"{first_ensure:.3f} s here)")
    for i, s in enumerate(starts):
        print(f"start {i + 1}: " + ", ".join(f"{k}={v * 1000:.0f}ms" for k, v in s.items()))
    assert starts[1]["template_s"] < 0.05  # a cache hit is a stat(), not a build
    assert starts[1]["total_s"] < 2.0
    assert all(s["stop_s"] < 2.0 for s in starts)


@pytest.mark.root
def test_concurrent_template_builds_share_one_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runtime, "CACHE_DIR", tmp_path / "cache")  # read at call time
    results: list[Path] = []
    errors: list[BaseException] = []

    def build() -> None:
        try:
            results.append(ensure_template(1, 10))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=build) for _ in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    assert len(results) == 2 and results[0] == results[1]
    assert (results[0] / "sbtest" / "sbtest1.ibd").exists()
    entries = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert [e for e in entries if not e.endswith(".lock")] == [results[0].parent.name]


@pytest.mark.root
def test_stop_after_sigstop_and_after_kill(network: Network) -> None:
    db = network["db"]
    server = MariaDBServer(db, db.address_towards("client"))
    try:
        server.start()
        assert server.pid is not None
        os.kill(server.pid, signal.SIGSTOP)  # the "hang" fault
        t = time.monotonic()
        server.stop()
        assert time.monotonic() - t < 3
        assert not db.pids()

        server.start()  # a restart gets a fresh copy of the template
        assert server.pid is not None
        os.kill(server.pid, signal.SIGKILL)  # the "kill" fault
        time.sleep(0.1)
        assert server.pid is None
        server.stop()
        assert not db.pids()
    finally:
        server.stop()


def test_check_binaries_names_the_missing_binary(tmp_path: Path) -> None:
    with pytest.raises(LabError) as info:
        check_binaries(path=str(tmp_path))
    assert info.value.problem == "mariadbd not found"
    assert "make setup" in info.value.fix and "mariadb-server" in info.value.fix
    assert "\n" not in str(info.value)
    (tmp_path / "mariadbd").symlink_to(check_binaries()["mariadbd"])
    with pytest.raises(LabError, match=r"^mariadb-install-db not found -- run 'make setup'"):
        check_binaries(path=str(tmp_path))


# --- only root reaches it (issue 13) -------------------------------------------------------------


@pytest.mark.root
def test_only_root_reaches_the_socket_and_the_data(network: Network) -> None:
    os.chmod(network.run.workdir, 0o700)  # what a run's scratch dir is: it must still work
    db = network["db"]
    server = MariaDBServer(db, db.address_towards("client"))
    try:
        server.start()
        assert probe(network, server)["identity"] == "db"
        assert stat.S_IMODE(os.stat(server.dir).st_mode) == 0o700
        assert stat.S_ISSOCK(os.stat(server.socket_path).st_mode)
        template = ensure_template(server.tables, server.table_size).parent
        assert stat.S_IMODE(os.stat(template).st_mode) == 0o700
        os.chmod(network.run.workdir, 0o755)  # even with an open scratch dir above it:
        assert nobody_connects(server.socket_path) == "EACCES"
        assert nobody_lists(server.datadir) != 0 and nobody_lists(server.dir) != 0
        assert nobody_lists(db.workdir) == 0  # (the test itself: nobody does get that far)
        assert nobody_connects(Path("/nonexistent.sock")) == "ENOENT"
    finally:
        server.stop()


@pytest.mark.root
def test_each_run_has_its_own_password_and_a_restart_keeps_it(network: Network) -> None:
    db = network["db"]
    first = MariaDBServer(db, db.address_towards("client"))
    # the same namespace as another run's host: another run's server
    other = MariaDBServer(Host(db.name, db.ns, db.workdir, run_id="another-run"),
                          db.address_towards("client"))
    assert first.password != other.password and len(first.password) >= 32
    assert MariaDBServer(db, db.address_towards("client")).password == first.password
    try:
        first.start()
        assert login(network, first, first.password) == "ok"
        assert login(network, first, "sbpass") == ER_ACCESS_DENIED  # sysbench's default
        first.stop()
        first.start()  # a restart (a fresh copy of the template) takes the clients back
        assert login(network, first, first.password) == "ok"
        first.stop()
        other.start()
        assert login(network, other, other.password) == "ok"
        assert login(network, other, first.password) == ER_ACCESS_DENIED
    finally:
        first.stop()
        other.stop()


@pytest.mark.root
def test_the_account_is_locked_until_start_sets_the_password(
    network: Network, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server listens on TCP before start() sets the run's password: in that window the
    template's sbtest must let nobody in, whatever password is tried."""
    db = network["db"]
    server = MariaDBServer(db, db.address_towards("client"))
    monkeypatch.setattr(MariaDBServer, "set_password", lambda self: None)  # the window, held
    try:
        server.start()
        # the template's password is random and was thrown away: a wrong password is refused
        # before the lock is even looked at (1045); the lock is what the server says it has
        for password in (server.password, "sbpass", ""):
            assert login(network, server, password) == ER_ACCESS_DENIED
        assert locked(server) == [("sbtest", "%", "true")]
        monkeypatch.undo()
        server.set_password()
        assert locked(server) == [("sbtest", "%", "false")]
        assert login(network, server, server.password) == "ok"
    finally:
        server.stop()
