"""The oltp driver against a real MariaDB: protocol, sysbench counting, socket options, and its
behaviour when the connection is blackholed or the server is killed."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path
from typing import Any

import pymysql
import pytest
from pymysql.protocol import MysqlPacket

from lab.backends.mariadb import MariaDBServer
from lab.config.settings import ClientSettings, LoadSettings
from lab.load import driver_config
from lab.load.base import DriverProcess
from lab.load.oltp import (
    QUERIES_PER_TXN,
    OltpConfig,
    error_code,
    error_detail,
    query,
    statements,
)
from lab.net.topology import Network, in_netns
from lab.workload.sbtest import SysbenchRandom
from tests.backends.access import argv_holding, as_nobody
from tests.load.conftest import events, resetting, wait_for

SYSBENCH_LINE = re.compile(
    r"^\[ (\d+)s \] thds: (\d+) tps: ([\d.]+) qps: ([\d.]+) \(r/w/o: ([\d.]+)/([\d.]+)/([\d.]+)\)"
    r" lat \(ms,(\d+)%\): ([\d.]+) err/s: ([\d.]+) reconn/s: ([\d.]+)$")


@pytest.fixture
def server(mariadb: MariaDBServer) -> MariaDBServer:
    return mariadb  # tests/load/conftest.py's


def start_driver(network: Network, server: MariaDBServer, tmp_path: Path,
                 client: ClientSettings, load: LoadSettings | None = None) -> DriverProcess:
    config = driver_config("oltp", str(server.address), server.port, server.client_params(),
                           client.model_dump(), (load or LoadSettings()).model_dump())
    driver = DriverProcess(network["client"], config.module, config.config,
                           tmp_path / "driver.log")
    driver.wait_ready(15)
    return driver


DROP_TO_DB = """table inet lab_blackhole {
  chain in {
    type filter hook input priority 0; policy accept;
    tcp dport 3306 drop
  }
}
"""


def test_transaction_is_sysbench_oltp_read_write() -> None:
    txn = list(statements(SysbenchRandom(3), tables=4, size=1000))
    assert len(txn) == QUERIES_PER_TXN == 20
    assert [cls for cls, _ in txn] == ["o"] + ["r"] * 14 + ["w"] * 4 + ["o"]
    assert (txn[0][1], txn[-1][1]) == ("BEGIN", "COMMIT")
    point = [sql for _, sql in txn[1:11]]
    assert len({re.sub(r"id=\d+", "", sql) for sql in point}) == 1  # one table, 10 ids
    ranges = [re.search(r"BETWEEN (\d+) AND (\d+)", sql) for _, sql in txn[11:15]]
    assert all(m and int(m.group(2)) - int(m.group(1)) == 99 for m in ranges)
    # the deleted row comes back with new values, as sysbench's DELETE + INSERT pair does
    deleted = re.fullmatch(r"DELETE FROM (sbtest[1-4]) WHERE id=(\d+)", txn[17][1])
    assert deleted is not None
    assert txn[18][1].startswith(f"INSERT INTO {deleted[1]} (id, k, c, pad) VALUES "
                                 f"({deleted[2]}, ")
    assert txn == list(statements(SysbenchRandom(3), tables=4, size=1000))  # seeded: same


def test_config_takes_what_the_trial_passes() -> None:
    cfg = driver_config("oltp", "198.18.0.2", 3306, {"user": "sbtest"},
                        ClientSettings(tcp_user_timeout_ms=5).model_dump(),
                        LoadSettings().model_dump())
    assert OltpConfig.model_validate(cfg.config).client.tcp_user_timeout_ms == 5


# ER_LOCK_DEADLOCK, ER_LOCK_WAIT_TIMEOUT, ER_DUP_ENTRY, ER_CHECKREAD
COLLISION_CODES = {"1213", "1205", "1062", "1020"}


@pytest.mark.root
def test_samples_counts_and_socket_options(
    network: Network, server: MariaDBServer, tmp_path: Path
) -> None:
    client = ClientSettings(tcp_user_timeout_ms=2000, so_keepalive=True, tcp_keepidle=7,
                            tcp_keepintvl=3, tcp_keepcnt=4, read_timeout_s=30)
    driver = start_driver(network, server, tmp_path, client, LoadSettings(threads=2))
    time.sleep(3.2)
    assert driver.stop() == 0
    full = [s for s in driver.output.samples if s["interval_s"] == 1.0]
    assert len(full) >= 3
    # two threads on sysbench's hot rows sometimes collide (deadlock, or a duplicate key from
    # the delete+insert pair): sysbench ignores those (1213 is in its default ignore list)
    # and so does the driver, rolling back and going on without a reconnect
    collisions = events(driver, "error")
    assert all(e["detail"].split()[0] in COLLISION_CODES for e in collisions), collisions
    assert not events(driver, "reconnect")
    for s in driver.output.samples:
        assert s["threads"] == 2 and s["tps"] > 0 and s["reconnects"] == 0
        if s["errors"]:
            continue  # the rolled-back transaction's statements count, as in sysbench
        assert s["reads"] == pytest.approx(14 * s["tps"], abs=0.1)
        assert s["writes"] == pytest.approx(4 * s["tps"], abs=0.1)
        assert s["other"] == pytest.approx(2 * s["tps"], abs=0.1)
        assert s["qps"] == pytest.approx(QUERIES_PER_TXN * s["tps"], abs=0.2)
        assert s["lat_p95_ms"] > 0
    # one sample per second on the monotonic grid that starts at ready
    assert driver.output.ready_t is not None
    for k, s in enumerate(full):
        assert s["t"] == pytest.approx(driver.output.ready_t + k + 1, abs=1e-6)
    connected = events(driver, "connected")
    assert len(connected) == 2
    for ev in connected:
        assert ev["sockopts"] == {"TCP_USER_TIMEOUT": 2000, "SO_KEEPALIVE": 1, "TCP_KEEPIDLE": 7,
                                  "TCP_KEEPINTVL": 3, "TCP_KEEPCNT": 4, "TCP_NODELAY": 1}
    lines = (tmp_path / "driver.log").read_text().splitlines()
    assert len([ln for ln in lines if SYSBENCH_LINE.match(ln)]) >= 3
    tps = [s["tps"] for s in full]
    print(f"\n2 threads, direct: tps per second {tps}")


@pytest.mark.root
def test_blackhole_error_reconnect_recovered(
    network: Network, server: MariaDBServer, tmp_path: Path
) -> None:
    client = ClientSettings(tcp_user_timeout_ms=2000, so_keepalive=False)
    driver = start_driver(network, server, tmp_path, client)
    try:
        assert events(driver, "connected")[0]["sockopts"]["SO_KEEPALIVE"] == 0
        time.sleep(0.5)
        # the silent drop is on the server side (like the LB dropping client->server): a drop
        # in the client's own output hook is a local send failure, which TCP handles on a
        # different path (measured 2.2 s or 5.6 s, depending on what was in flight)
        network["db"].run(["nft", "-f", "-"], input=DROP_TO_DB)
        fault_t = time.monotonic()
        driver.mark_fault(fault_t)
        error = wait_for(driver, lambda e: e["event"] == "error", 6)
        detect = error["t"] - fault_t
        print(f"\nerror {detect:.2f} s after the drop: {error['detail']}")
        assert 1.8 <= detect <= 3.5  # TCP_USER_TIMEOUT 2 s, counted from the first RTO
        assert error["detail"].startswith("2013 Lost connection to MySQL server during query")
        assert "[Errno 110]" in error["detail"]
        assert not events(driver, "recovered")  # nothing succeeds through the blackhole
        network["db"].run(["nft", "delete", "table", "inet", "lab_blackhole"])
        lifted = time.monotonic()
        reconnect = wait_for(driver, lambda e: e["event"] == "reconnect", 5)
        recovered = wait_for(driver, lambda e: e["event"] == "recovered", 5)
        print(f"reconnect {reconnect['t'] - lifted:+.2f} s after lifting ({reconnect['detail']}),"
              f" recovered {recovered['t'] - fault_t:.2f} s after the fault")
        assert error["t"] < reconnect["t"] <= recovered["t"]
        time.sleep(1.2)
    finally:
        assert driver.stop() == 0
    outage = [s for s in driver.output.samples if fault_t + 1 < s["t"] <= error["t"]]
    assert outage and all(s["tps"] == 0 for s in outage)
    # the blocked request counts by its age: the latency grows with the outage, not 0
    ages = [(round(s["t"] - fault_t, 2), s["lat_p95_ms"] / 1000) for s in outage]
    print(f"(seconds since the fault, lat_p95 s) during the outage: {ages}")
    assert all(abs(lat - since) < 0.3 for since, lat in ages), ages
    assert sum(s["errors"] for s in driver.output.samples) >= 1
    assert sum(s["reconnects"] for s in driver.output.samples) == 1
    assert driver.output.samples[-1]["tps"] > 0


@pytest.mark.root
def test_stop_is_prompt_while_stuck_in_a_blackhole(
    network: Network, server: MariaDBServer, tmp_path: Path
) -> None:
    driver = start_driver(network, server, tmp_path, ClientSettings(), LoadSettings(threads=2))
    network["db"].run(["nft", "-f", "-"], input=DROP_TO_DB)
    time.sleep(1.3)  # both threads now wait for answers that never come
    t = time.monotonic()
    assert driver.stop(timeout=3) == 0
    assert time.monotonic() - t < 1.0
    last = driver.output.samples[-1]
    assert last["interval_s"] < 1.0 and last["tps"] == 0


@pytest.mark.root
def test_killed_server_is_noticed_at_once(
    network: Network, server: MariaDBServer, tmp_path: Path
) -> None:
    driver = start_driver(network, server, tmp_path, ClientSettings())
    try:
        time.sleep(0.3)
        assert server.pid is not None
        fault_t = time.monotonic()
        os.kill(server.pid, signal.SIGKILL)
        driver.mark_fault(fault_t)
        error = wait_for(driver, lambda e: e["event"] == "error", 3)
        print(f"\nerror {1000 * (error['t'] - fault_t):.0f} ms after kill -9: {error['detail']}")
        assert error["t"] - fault_t < 1.0
        assert error["detail"].startswith(("2013 ", "2006 "))
        # reconnects are refused (RST): reported once, not once per attempt. The first one
        # comes ~1 ms after the error and may still reach the dying server's listener: the
        # kernel accepts it, then resets it as the listener closes (2013 on the greeting)
        refused = wait_for(driver, lambda e: e["detail"].endswith("(connect)"), 3)
        assert refused["detail"].split()[0] in ("2003", "2013"), refused
        time.sleep(0.5)
        # one error event for the whole sequence of refused connects, not one per attempt
        # (a reconnect may first land on the dying server's listener and fail on its query)
        refusals = [e for e in events(driver, "error")
                    if e["t"] > error["t"] and e["detail"].endswith("(connect)")]
        assert len(refusals) == 1, refusals
        assert not events(driver, "recovered")  # nothing was served again
    finally:
        assert driver.stop() == 0


@pytest.mark.root
def test_the_password_is_in_no_command_line(
    network: Network, server: MariaDBServer, tmp_path: Path
) -> None:
    """The driver logged in (ready) with a config that came in its environment: ps shows the
    password nowhere, and its environment is not for other users to read."""
    driver = start_driver(network, server, tmp_path, ClientSettings())
    try:
        pid = driver.proc.pid  # `ip netns exec` exec'd the driver: one pid
        assert Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[1:3] == [
            b"-m", b"lab.load.oltp"]
        assert argv_holding(server.password) == []
        # it did arrive through the environment (root reads it), and nobody cannot read that
        assert server.password.encode() in Path(f"/proc/{pid}/environ").read_bytes()
        denied = as_nobody(["cat", f"/proc/{pid}/environ"])
        assert denied.returncode != 0 and "Permission denied" in denied.stderr
        assert as_nobody(["cat", f"/proc/{pid}/cmdline"]).returncode == 0  # what ps reads
    finally:
        assert driver.stop() == 0
    assert server.password not in (tmp_path / "driver.log").read_text()


@pytest.mark.root
def test_a_paced_load_keeps_its_rate_but_not_the_outage_edges(
    network: Network, server: MariaDBServer, tmp_path: Path
) -> None:
    """load.rate = 1/s on 2 threads: 2 tps, yet the fault is seen at its mark (the mark starts
    a transaction at once, not at the next slot up to 1 s later) and its end one reconnect
    after (a failed transaction is retried at once)."""
    driver = start_driver(network, server, tmp_path, ClientSettings(),
                          LoadSettings(threads=2, rate=1))
    try:
        time.sleep(3.5)
        steady = [s["tps"] for s in driver.output.samples if s["interval_s"] == 1.0]
        with resetting(network["db"], server.port):
            fault_t = time.monotonic()
            driver.mark_fault(fault_t)
            error = wait_for(driver, lambda e: e["event"] == "error" and e["t"] >= fault_t, 3)
            time.sleep(0.3)
        lifted = time.monotonic()
        recovered = wait_for(driver, lambda e: e["event"] == "recovered", 3)
    finally:
        assert driver.stop() == 0
    print(f"\nrate 1/s x 2: tps {steady}; error {1000 * (error['t'] - fault_t):.1f} ms after "
          f"the mark, recovered {1000 * (recovered['t'] - lifted):.1f} ms after the lift")
    assert len(steady) >= 2 and all(1 <= tps <= 3 for tps in steady), steady
    assert error["t"] - fault_t < 0.05
    assert recovered["t"] - lifted < 0.1
    # a refused connect costs ~1 ms (no TLS context built per attempt: 40-60 ms of CPU), so
    # the attempts come every RECONNECT_PAUSE_S and the recovery is seen within ~10 ms
    attempts = [int(re.match(r"after (\d+) attempt", e["detail"])[1])  # type: ignore[index]
                for e in events(driver, "reconnect", fault_t)]
    assert attempts and max(attempts) >= 15, attempts  # 0.3 s / (5 ms pause + the connect)


# --- the answer read without decoding it (oltp.query) ------------------------------------------


class FakeConnection:
    """What oltp.query touches of a PyMySQL connection, with a scripted answer."""

    encoding = "utf8"

    def __init__(self, first: bytes, rest: bytes | Exception) -> None:
        self.first, self.rest, self.closed = first, rest, False
        self._rfile = self

    def _execute_command(self, command: int, sql: str) -> None:
        pass

    def _read_packet(self) -> MysqlPacket:
        return MysqlPacket(self.first, self.encoding)

    def read(self, n: int) -> bytes:
        if isinstance(self.rest, Exception):
            raise self.rest
        out, self.rest = self.rest[:n], self.rest[n:]
        return out

    def _force_close(self) -> None:
        self.closed = True


def packet(payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "little") + b"\x00" + payload


EOF_PACKET = packet(b"\xfe\x00\x00\x02\x00")


def test_query_reads_the_whole_result_set_and_no_more() -> None:
    # a column definition, EOF, a row whose first byte is 0xFE but that is long (a string of
    # >= 2^24 bytes would start so), an ordinary row, EOF; then the next answer
    long_row = packet(b"\xfe" + b"x" * 12)
    after = b"next answer"
    conn = FakeConnection(b"\x01", packet(b"coldef") + EOF_PACKET + long_row
                          + packet(b"\x03abc") + EOF_PACKET + after)
    query(conn, "SELECT c FROM sbtest1")  # type: ignore[arg-type]
    assert conn.rest == after and not conn.closed
    ok = FakeConnection(b"\x00\x01\x00\x02\x00\x00\x00", after)  # an OK answer: no more
    query(ok, "UPDATE sbtest1 SET k=k+1")  # type: ignore[arg-type]
    assert ok.rest == after


@pytest.mark.parametrize(("rest", "detail"), [
    (TimeoutError("timed out"), "(timed out)"),
    (ConnectionResetError(104, "Connection reset by peer"),
     "([Errno 104] Connection reset by peer)"),
    (packet(b"coldef")[:5], ""),  # the connection ended mid-packet
])
def test_a_connection_lost_mid_result_is_pymysqls_2013(rest: bytes | Exception,
                                                         detail: str) -> None:
    conn = FakeConnection(b"\x01", rest)
    with pytest.raises(pymysql.err.OperationalError) as info:
        query(conn, "SELECT c FROM sbtest1")  # type: ignore[arg-type]
    assert error_detail(info.value) == \
        f"2013 Lost connection to MySQL server during query{' ' + detail if detail else ''}"
    assert error_code(info.value) == 2013 and conn.closed  # in LOST_CODES: reconnect


def test_a_server_error_mid_result_is_raised() -> None:
    err = packet(b"\xff\x25\x05#70100Query execution was interrupted")
    conn = FakeConnection(b"\x01", packet(b"coldef") + EOF_PACKET + packet(b"\x01a") + err)
    with pytest.raises(pymysql.err.OperationalError, match="interrupted") as info:
        query(conn, "SELECT c FROM sbtest1")  # type: ignore[arg-type]
    assert error_code(info.value) == 1317 and not conn.closed  # rolled back, not reconnected


@pytest.mark.root
def test_query_keeps_the_stream_in_step_with_pymysql(
    network: Network, server: MariaDBServer
) -> None:
    """Against MariaDB: result sets of 100 rows and none, a server error, then PyMySQL's own
    query on the same connection still reads its own answer."""
    def run() -> tuple[int, Any]:
        conn = pymysql.connect(host=str(server.address), port=server.port, ssl_disabled=True,
                               **server.client_params())
        try:
            query(conn, "SELECT c FROM sbtest1 WHERE id BETWEEN 1 AND 100 ORDER BY c")
            query(conn, "SELECT c FROM sbtest1 WHERE id = 0")
            query(conn, "BEGIN")
            with pytest.raises(pymysql.err.ProgrammingError) as info:
                query(conn, "SELEC 1")
            query(conn, "COMMIT")
            with conn.cursor() as cur:
                cur.execute("SELECT COUNT(*) FROM sbtest1 WHERE id BETWEEN 1 AND 100")
                return error_code(info.value), cur.fetchall()
        finally:
            conn.close()

    assert in_netns(network["client"].ns, run) == (1064, ((100,),))
