"""The command and zoo drivers: an uninstrumented program as the client, its outage measured
from the wire, against a real MariaDB (and NGINX) in namespaces, through a real blackhole; and
the wire's recovery instant against the instrumented drivers' on the same connections.

Run as a module (`python -m tests.load.test_command`) this file is a zoo driver whose runner
is a fake one of the test's (the real runners are lab.load.zoo's), see `fake_zoo_main`.
"""

from __future__ import annotations

import queue
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from lab.backends.mariadb import MariaDBServer
from lab.backends.nginx import NginxServer
from lab.config.settings import ClientSettings, LoadSettings
from lab.load import driver_config
from lab.load.base import DriverProcess
from lab.load.command import CommandConfig, Monitor, lab_env
from lab.load.runtime import Clock, FaultMark
from lab.load.wire import Observer, WireEvent
from lab.net.topology import Network
from lab.workload.sbtest import USER
from tests.load.conftest import blackhole, events, wait_for

# an application's loop of transactions that reconnects on any error, and prints nothing
SILENT_CLIENT = textwrap.dedent("""
    import os, random, time, pymysql
    conn = None
    while True:
        try:
            if conn is None:
                conn = pymysql.connect(
                    host=os.environ["LAB_HOST"], port=int(os.environ["LAB_PORT"]),
                    user=os.environ["LAB_USER"], password=os.environ["LAB_PASSWORD"],
                    database=os.environ["LAB_DATABASE"], connect_timeout=1, autocommit=True)
            with conn.cursor() as cur:
                i = random.randint(1, 1000)
                cur.execute("BEGIN")
                cur.execute("SELECT c FROM sbtest1 WHERE id=%s", (i,))
                cur.fetchall()
                cur.execute("UPDATE sbtest1 SET k=k+1 WHERE id=%s", (i,))
                cur.execute("COMMIT")
            time.sleep(0.005)
        except pymysql.err.Error:
            try:
                conn.close()
            except Exception:
                pass
            conn = None
            time.sleep(0.005)
""")

# a client that gives up by itself after a while
QUITTER = SILENT_CLIENT.replace("        time.sleep(0.005)\n    except",
                                "        time.sleep(0.005)\n"
                                "        if random.random() < 0.05:\n"
                                "            raise SystemExit(3)\n"
                                "    except")

# the mariadb CLI in a shell loop: a new connection per iteration; the password in the
# environment (MYSQL_PWD), never in argv
CLI_LOOP = ('export MYSQL_PWD="$LAB_PASSWORD"; while :; do mariadb --skip-ssl '
            '--connect-timeout=1 -h "$LAB_HOST" -P "$LAB_PORT" -u "$LAB_USER" "$LAB_DATABASE" '
            '-e "SELECT c FROM sbtest1 WHERE id=1; UPDATE sbtest1 SET k=k+1 WHERE id=2" '
            '>/dev/null; sleep 0.01; done')


# --- helpers ---------------------------------------------------------------------------------


def config(address: str, port: int, params: dict[str, str], protocol: str,
           load: LoadSettings) -> dict[str, Any]:
    return driver_config(load.driver, address, port, {**params, "protocol": protocol},
                         ClientSettings(connect_timeout_s=None).model_dump(),
                         load.model_dump()).config


def start(network: Network, cfg: dict[str, Any], log: Path,
          module: str = "lab.load.command", wait: bool = True) -> DriverProcess:
    driver = DriverProcess(network["client"], module, cfg, log)
    if wait:
        driver.wait_ready(20)
    return driver


def command(network: Network, server: MariaDBServer, tmp_path: Path, argv: list[str],
            name: str = "command", wait: bool = True) -> DriverProcess:
    cfg = config(str(server.address), server.port, server.client_params(), "mysql",
                 LoadSettings(driver="command", command=argv))
    return start(network, cfg, tmp_path / f"{name}.log", wait=wait)


def recovered_after(fault_t: float) -> Callable[[dict[str, Any]], bool]:
    return lambda e: e["event"] == "recovered" and e["t"] >= fault_t


@pytest.fixture
def mariadb_client(network: Network) -> Iterator[Network]:
    """The client namespace gives up on unacknowledged data after ~3 s (tcp_retries2=3)."""
    network["client"].run(["sysctl", "-w", "net.ipv4.tcp_retries2=3"])
    yield network


# --- pure: the monitor's accounting ----------------------------------------------------------


def test_lab_env_holds_the_service_and_the_url() -> None:
    cfg = CommandConfig.model_validate(config("10.0.0.2", 8080, {"path": "/x"}, "http",
                                              LoadSettings(driver="command", command=["a"])))
    assert lab_env(cfg.target)["LAB_URL"] == "http://10.0.0.2:8080/x"
    assert lab_env(cfg.target)["LAB_PORT"] == "8080"


def test_monitor_recovery_latency_and_lines(capsys: pytest.CaptureFixture[str]) -> None:
    clock, fault = Clock(), FaultMark()
    clock.t0 = 0.0
    m = Monitor(Observer("mysql"), clock, fault, "10.0.0.2:3306", None, 1,  # type: ignore[arg-type]
                queue.Queue())

    def ev(kind: str, t: float, **kw: Any) -> WireEvent:
        return WireEvent(kind, t, 0, "10.0.0.1:4000", **kw)

    m.on_wire([ev("usable", 0.1), ev("answer", 0.3, sent=0.2, cls="r")])
    fault.take("fault 1.0", "test")
    m.on_fault()
    m.on_wire([ev("failure", 4.0, sent=0.9, detail="dropped"),  # request sent before the fault
               ev("usable", 6.0), ev("answer", 6.2, sent=0.95, cls="w"),  # still before it
               ev("answer", 6.5, sent=6.4, cls="o")])
    m.on_line(0, f"{int(time.time() * 1000)} ERR 2013 Lost connection")
    m.on_line(0, "hello")
    sample = m.sample(10, 7.0, 7.0)
    out = capsys.readouterr().out
    recs = [r for r in out.splitlines() if '"recovered"' in r]
    assert len(recs) == 1 and '"t": 6.5' in recs[0]  # the first request *sent* after it
    assert '"reconnect"' in out and '"error"' in out
    # the lost request's latency runs from its first send to the success after the outage
    assert sample["lat_p95_ms"] == pytest.approx(1000 * (6.2 - 0.9))
    assert (sample["reads"], sample["writes"], sample["other"]) == (0.14, 0.14, 0.14)


# --- real: uninstrumented clients through a blackhole ---------------------------------------


def blackhole_trial(driver: DriverProcess, network: Network, hold: float,
                    others: tuple[DriverProcess, ...] = (),
                    before_lift: Callable[[float], None] | None = None) -> dict[str, float]:
    """Blackhole the db, mark the fault on every driver, lift it once `driver` reported an
    error and `hold` s have passed, wait for their recoveries; the instants on one axis."""
    with blackhole(network["db"]):
        fault_t = time.monotonic()
        for d in (driver, *others):
            d.mark_fault(fault_t)
        error = wait_for(driver, lambda e: e["event"] == "error" and e["t"] >= fault_t, 15)
        time.sleep(max(0.5, fault_t + hold - time.monotonic()))
        if before_lift is not None:
            before_lift(fault_t)
        assert not events(driver, "recovered", fault_t)
        lifted = time.monotonic()
    out = {"fault": fault_t, "lifted": lifted, "error": error["t"]}
    out["recovered"] = wait_for(driver, recovered_after(fault_t), 10)["t"]
    for i, d in enumerate(others):
        out[f"recovered{i}"] = wait_for(d, recovered_after(fault_t), 10)["t"]
    return out


@pytest.mark.root
def test_silent_pymysql_program_through_a_blackhole(
    mariadb_client: Network, mariadb: MariaDBServer, tmp_path: Path
) -> None:
    script = tmp_path / "client.py"
    script.write_text(SILENT_CLIENT)
    driver = command(mariadb_client, mariadb, tmp_path, [sys.executable, str(script)])
    try:
        time.sleep(2.2)
        steady = [s for s in driver.output.samples if s["interval_s"] == 1.0]
        assert steady and all(s["tps"] > 10 and s["errors"] == 0 for s in steady)
        # BEGIN, COMMIT: other; SELECT: read; UPDATE: write (tps = answers, no OK lines)
        s = steady[-1]
        assert s["reads"] == pytest.approx(s["writes"], rel=0.1)
        assert s["other"] == pytest.approx(2 * s["reads"], rel=0.1)
        assert s["qps"] == s["tps"] and s["threads"] == 1
        (connected,) = events(driver, "connected")
        assert "pid=" in connected["detail"] and connected["sockopts"]["SO_KEEPALIVE"] == 1
        t = blackhole_trial(driver, mariadb_client, hold=3.0)
        fault_t = t["fault"]
        errors = events(driver, "error", fault_t)
        detect = errors[0]["t"] - fault_t
        print(f"\ndetection {detect:.2f} s: {errors[0]['detail']}\nrecovered "
              f"{t['recovered'] - fault_t:.2f} s after the fault, "
              f"{t['recovered'] - t['lifted']:+.2f} s after the lift")
        # the kernel gives up on the unacknowledged query: Linux 6.18 sends a RST as it does
        # (seen on the wire); a kernel that does not is seen in its socket table instead
        assert errors[0]["detail"].startswith((
            "the client closed the connection (RST) with a request unanswered",
            "the client's kernel dropped the connection"))
        assert 2.5 <= detect <= 7.0  # tcp_retries2=3: 15 x the 200 ms RTO, checked per RTO
        assert t["lifted"] < t["recovered"] < t["lifted"] + 3
        assert events(driver, "reconnect", fault_t)
        time.sleep(1.2)
    finally:
        assert driver.stop() == 0
    outage = [s for s in driver.output.samples if fault_t + 1 < s["t"] <= t["lifted"]]
    assert outage and all(s["qps"] == 0 for s in outage)
    ages = [s["lat_p95_ms"] / 1000 - (s["t"] - fault_t) for s in outage]
    assert all(abs(a) < 0.3 for a in ages), ages  # the lost request ages with the outage
    assert driver.output.samples[-1]["tps"] > 0
    log = (tmp_path / "command.log").read_text()
    cost = [ln for ln in log.splitlines() if ln.startswith("# wire:")]
    print(cost[0])
    assert " 0 dropped" in cost[0] and mariadb.password not in log


@pytest.mark.root
def test_mariadb_cli_in_a_shell_loop(
    mariadb_client: Network, mariadb: MariaDBServer, tmp_path: Path
) -> None:
    driver = command(mariadb_client, mariadb, tmp_path, ["sh", "-c", CLI_LOOP])
    try:
        time.sleep(2.2)
        s = driver.output.samples[-1]
        print(f"\nmariadb CLI loop: {s}")
        assert s["reads"] > 1 and s["writes"] == pytest.approx(s["reads"], abs=2)
        assert s["reconnects"] > 1  # one connection per iteration
        assert not events(driver, "error")  # a CLI's COM_QUIT + FIN is a normal close
        t = blackhole_trial(driver, mariadb_client, hold=3.0)
        errors = events(driver, "error", t["fault"])
        print(f"detection {errors[0]['t'] - t['fault']:.2f} s: {errors[0]['detail']}; "
              f"recovered {t['recovered'] - t['lifted']:+.2f} s after the lift")
        assert errors and errors[0]["t"] - t["fault"] < 7.0
        assert t["lifted"] < t["recovered"] < t["lifted"] + 3
    finally:
        assert driver.stop() == 0


def kill_zombies(server: MariaDBServer, driver: DriverProcess, fault_t: float) -> None:
    """End the server's sessions of the connections the client lost in the blackhole: the
    server never heard of their end, and their open transactions hold row locks that the next
    connection's transaction would wait for (innodb_lock_wait_timeout, 50 s): a real effect of
    a blackhole, but not what this comparison is about."""
    lost = {e["local"].rsplit(":", 1)[1] for e in events(driver, "connected")
            if e["t"] < fault_t}
    for session, host in server.query(
            "SELECT ID, HOST FROM information_schema.PROCESSLIST WHERE USER = %s", (USER,)):
        if str(host).rsplit(":", 1)[-1] in lost:
            server.query(f"KILL {int(session)}")


@pytest.mark.root
def test_wire_recovery_agrees_with_the_oltp_driver(
    mariadb_client: Network, mariadb: MariaDBServer, tmp_path: Path
) -> None:
    """The instrumented oltp driver and a wire observer (a command driver whose own program
    opens nothing) on the same connections, through the same blackholes: the wire's
    `recovered` must be the driver's within 50 ms."""
    oltp_cfg = driver_config("oltp", str(mariadb.address), mariadb.port,
                             mariadb.client_params(),
                             ClientSettings(tcp_user_timeout_ms=2000, connect_timeout_s=1)
                             .model_dump(), LoadSettings().model_dump())
    # the observer first (it follows connections from their SYN); its ready is oltp's first
    # answer on the wire
    wire = command(mariadb_client, mariadb, tmp_path, ["sleep", "600"], name="wire",
                   wait=False)
    time.sleep(1.0)
    oltp = start(mariadb_client, oltp_cfg.config, tmp_path / "oltp.log", oltp_cfg.module)
    wire.wait_ready(10)
    diffs = []
    try:
        for _ in range(3):
            time.sleep(1.0)
            t = blackhole_trial(wire, mariadb_client, 3.5, others=(oltp,),
                                before_lift=lambda fault_t: kill_zombies(mariadb, oltp, fault_t))
            diffs.append(t["recovered"] - t["recovered0"])
    finally:
        assert wire.stop() == 0
        assert oltp.stop() == 0
    print(f"\nwire - oltp recovered, ms: {[round(1000 * d, 1) for d in diffs]}")
    assert all(abs(d) <= 0.050 for d in diffs), diffs


@pytest.fixture
def nginx(network: Network) -> Iterator[NginxServer]:
    db = network["db"]
    s = NginxServer(db, db.address_towards("client"))
    s.start()
    try:
        yield s
    finally:
        s.stop()


@pytest.mark.root
def test_wire_recovery_agrees_with_the_http_driver(
    mariadb_client: Network, nginx: NginxServer, tmp_path: Path
) -> None:
    http_cfg = driver_config("http", str(nginx.address), nginx.port, nginx.client_params(),
                             ClientSettings(tcp_user_timeout_ms=2000, connect_timeout_s=1)
                             .model_dump(), LoadSettings(driver="http").model_dump())
    wire = start(mariadb_client, config(str(nginx.address), nginx.port, nginx.client_params(),
                                        "http", LoadSettings(driver="command",
                                                             command=["sleep", "600"])),
                 tmp_path / "wire.log", wait=False)
    time.sleep(1.0)
    http = start(mariadb_client, http_cfg.config, tmp_path / "http.log", http_cfg.module)
    wire.wait_ready(10)
    diffs = []
    try:
        for _ in range(2):
            time.sleep(1.0)
            t = blackhole_trial(wire, mariadb_client, 3.5, others=(http,))
            diffs.append(t["recovered"] - t["recovered0"])
        first = wire.output.samples[0]  # before the first fault: GETs, no errors
        assert first["reads"] > 100 and first["errors"] == 0 and first["writes"] == 0
    finally:
        assert wire.stop() == 0
        assert http.stop() == 0
    print(f"\nwire - http recovered, ms: {[round(1000 * d, 1) for d in diffs]}")
    print(next(ln for ln in (tmp_path / "wire.log").read_text().splitlines()
               if ln.startswith("# wire:")))
    assert all(abs(d) <= 0.050 for d in diffs), diffs


@pytest.mark.root
def test_zoo_driver_runs_copies_of_a_stack_with_its_output_contract(
    mariadb_client: Network, mariadb: MariaDBServer, tmp_path: Path
) -> None:
    """`python -m lab.load.zoo`: load.threads copies of a real stack's program (PyMySQL's),
    its OK/ERR/VERSION lines read beside the wire."""
    load = LoadSettings(driver="zoo", stack="python-pymysql", threads=2)
    cfg = config(str(mariadb.address), mariadb.port, mariadb.client_params(), "mysql", load)
    cfg["client"]["read_timeout_s"] = 2.0
    driver = start(mariadb_client, cfg, tmp_path / "zoo.log", "lab.load.zoo")
    try:
        time.sleep(2.2)
        s = driver.output.samples[-1]
        assert s["threads"] == 2 and s["tps"] > 10
        # tps from the OK lines (one per transaction), qps from the wire (4 per transaction)
        assert s["qps"] == pytest.approx(4 * s["tps"], rel=0.15)
        assert sorted(e["thread"] for e in events(driver, "connected")) == [0, 1]
        versions = events(driver, "version")
        assert len(versions) == 2 and "PyMySQL" in versions[0]["detail"]
        t = blackhole_trial(driver, mariadb_client, hold=3.0)
        errors = events(driver, "error", t["fault"])
        assert any("the program's ERR line" in e["detail"] for e in errors)
    finally:
        assert driver.stop() == 0


@pytest.mark.root
def test_a_program_that_exits_is_the_result(
    network: Network, mariadb: MariaDBServer, tmp_path: Path
) -> None:
    script = tmp_path / "once.py"
    assert "SystemExit" in QUITTER
    script.write_text(QUITTER)
    driver = command(network, mariadb, tmp_path, [sys.executable, str(script)])
    try:
        exited = wait_for(driver, lambda e: e["event"] == "exited", 10)
        assert exited["status"] == 3 and "exited with 3" in exited["detail"]
        time.sleep(2.2)  # a whole sample after the exit: nothing, and no recovery ever
        assert driver.alive()
        last = driver.output.samples[-1]
        assert last["qps"] == 0 and last["threads"] == 0
    finally:
        assert driver.stop() == 0
