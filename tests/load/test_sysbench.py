"""The sysbench driver: the real sysbench 1.0.20 binary through the VIP (issue 6, bar 3).

The parsers are checked on sysbench's real output lines; the bar runs
scenarios/sysbench-switchover.toml (sysbench and oltp side by side on the same switchover)
through MatrixRun: sysbench crashes on its reconnect, the driver restarts it, and both drivers
must see the same outage.
"""

from __future__ import annotations

import csv
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from lab.backends.mariadb import MariaDBServer
from lab.config import scenario
from lab.config.settings import LoadSettings, TrialSettings
from lab.experiment.matrix import MatrixRun
from lab.load.base import CONFIG_ENV, DriverProcess
from lab.load.foreign import hex_addr
from lab.load.oltp import OltpConfig, Target
from lab.load.sysbench import (
    CRASH_DETAIL,
    IN_PROCESS_DETAIL,
    build_reconnect_fix,
    crashed,
    parse_ignored,
    parse_sample,
    password_file,
    sysbench_argv,
)
from lab.net.topology import Network
from tests.backends.access import argv_holding, children

ROOT = Path(__file__).resolve().parents[2]


def test_parses_sysbench_lines() -> None:
    line = ("[ 12s ] thds: 2 tps: 283.55 qps: 5682.99 (r/w/o: 3980.69/1134.20/568.10) "
            "lat (ms,95%): 5.00 err/s: 0.00 reconn/s: 1.00")
    s = parse_sample(line)
    assert s is not None
    assert (s["t_s"], s["threads"], s["tps"], s["qps"]) == (12, 2, 283.55, 5682.99)
    assert (s["reads"], s["writes"], s["other"], s["lat_p95_ms"]) == (3980.69, 1134.2, 568.1, 5.0)
    assert (s["errors"], s["reconnects"]) == (0.0, 1.0)
    assert parse_sample("Threads started!") is None
    assert parse_ignored("DEBUG: Ignoring error 2013 Lost connection to server during query, ") \
        == (2013, "Lost connection to server during query")
    assert parse_ignored("DEBUG: Reconnecting") is None


def test_command_line_and_exit_codes() -> None:
    cfg = OltpConfig(target=Target(host="198.18.0.100", port=3001, password="s3cret"),
                     load=LoadSettings(driver="sysbench", threads=3, tables=2, table_size=500))
    argv = sysbench_argv(cfg, config_file="/dev/fd/5")
    for flag in ("oltp_read_write", "--mysql-host=198.18.0.100", "--mysql-port=3001",
                 "--threads=3", "--tables=2", "--table-size=500", "--report-interval=1",
                 "--mysql-ignore-errors=all", "run"):
        assert flag in argv
    assert argv[1] == "--config-file=/dev/fd/5"
    assert not any("s3cret" in a or a.startswith("--mysql-password") for a in argv)
    assert "--config-file" not in " ".join(sysbench_argv(cfg))
    fd = password_file("s3cret")
    try:
        # sysbench 1.0.20's config file: option=value, no dashes (checked against a server
        # in test_the_password_is_in_no_command_line)
        assert Path(f"/dev/fd/{fd}").read_text() == "mysql-password=s3cret\n"
        assert not os.get_inheritable(fd)  # only the sysbench it is passed to gets it
    finally:
        os.close(fd)
    assert crashed(-11) and crashed(139) and not crashed(1) and not crashed(0)
    assert hex_addr("0100A8C0:0CEA") == "192.168.0.1:3306"


def test_settings_reject_what_sysbench_cannot_do() -> None:
    with pytest.raises(ValueError, match=r"cannot apply client\.tcp_user_timeout_ms"):
        TrialSettings.model_validate({"load": {"driver": "sysbench"},
                                      "client": {"tcp_user_timeout_ms": 3000}})
    with pytest.raises(ValueError, match=r"only load\.shape=.busy."):
        TrialSettings.model_validate({"load": {"driver": "sysbench", "shape": "idle"}})
    TrialSettings.model_validate({"load": {"driver": "sysbench"},
                                  "client": {"tcp_retries2": 5}})  # a sysctl: fine


def test_the_rate_is_sysbench_s_rate_of_the_whole_run() -> None:
    target = Target(host="198.18.0.100", port=3001)
    paced = OltpConfig(target=target, load=LoadSettings(driver="sysbench", threads=3, rate=20))
    assert "--rate=60" in sysbench_argv(paced)  # load.rate is per thread, --rate per run
    assert not any(a.startswith("--rate") for a in sysbench_argv(OltpConfig(target=target)))
    TrialSettings.model_validate({"load": {"driver": "sysbench", "threads": 2, "rate": 2.5}})
    with pytest.raises(ValueError, match=r"--rate, a whole number: 2.25 x 2 = 4.5 is not"):
        TrialSettings.model_validate({"load": {"driver": "sysbench", "threads": 2,
                                               "rate": 2.25}})


def test_reconnect_fix_builds_once(tmp_path: Path) -> None:
    first = build_reconnect_fix(tmp_path)
    assert first.suffix == ".so" and first.stat().st_size > 0
    mtime = first.stat().st_mtime_ns
    assert build_reconnect_fix(tmp_path) == first and first.stat().st_mtime_ns == mtime
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no temporary left


# --- a lost connection, without a load balancer: the crash and the fix -------------------------


@pytest.fixture
def server(mariadb: MariaDBServer) -> MariaDBServer:
    return mariadb  # tests/load/conftest.py's


def lose_the_connection(network: Network, server: MariaDBServer, tmp_path: Path,
                        fix: bool, load: LoadSettings | None = None,
                        ) -> tuple[DriverProcess, float]:
    """Run the driver, then destroy sysbench's socket (ss -K): its next query fails with
    2013 and sysbench reconnects: a crash (stock 1.0.20) or an in-process reconnect (fix)."""
    load = load or LoadSettings(driver="sysbench")
    cfg = OltpConfig(target=Target(host=str(server.address), port=server.port,
                                   password=server.password),
                     load=load.model_copy(update={"sysbench_reconnect_fix": fix}))
    driver = DriverProcess(network["client"], "lab.load.sysbench", cfg.model_dump(mode="json"),
                           tmp_path / "driver.log")
    try:
        driver.wait_ready(15)
        time.sleep(1.3)
        fault_t = time.monotonic()
        driver.mark_fault(fault_t)
        network["client"].run(["ss", "-K", "dst", str(server.address)], check=False)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not any(
                e["event"] == "recovered" for e in driver.output.events):
            time.sleep(0.05)
        time.sleep(1.1)  # one more report
    finally:
        assert driver.stop() == 0
    return driver, fault_t


def kinds(driver: DriverProcess, fault_t: float) -> list[tuple[str, str]]:
    return [(e["event"], e["detail"]) for e in driver.output.events
            if e["t"] >= fault_t and e["event"] != "connected"]


@pytest.mark.root
def test_stock_sysbench_crashes_and_is_restarted(
    network: Network, server: MariaDBServer, tmp_path: Path
) -> None:
    driver, fault_t = lose_the_connection(network, server, tmp_path, fix=False)
    evs = kinds(driver, fault_t)
    assert [k for k, _ in evs] == ["error", "reconnect", "recovered"], evs
    # ss -K hits sysbench in a read (2013 lost) or before a write (2006 gone away): both are
    # the lost-connection errors that send 1.0.20 down its reconnect path
    assert evs[0][1].split()[0] in ("2013", "2006") and CRASH_DETAIL in evs[1][1], evs
    log = (tmp_path / "driver.log").read_text()
    assert "crashed (SIGSEGV)" in log and log.count("Threads started!") == 2
    after: list[dict[str, Any]] = [s for s in driver.output.samples if s["t"] > fault_t]
    assert after[0]["errors"] == 1.0 and after[0]["reconnects"] == 1.0 and after[0]["tps"] > 0
    assert len([e for e in driver.output.events if e["event"] == "connected"]) == 2


@pytest.mark.root
def test_reconnect_fix_reconnects_in_process(
    network: Network, server: MariaDBServer, tmp_path: Path
) -> None:
    driver, fault_t = lose_the_connection(network, server, tmp_path, fix=True)
    evs = kinds(driver, fault_t)
    assert [k for k, _ in evs] == ["error", "reconnect", "recovered"], evs
    assert evs[1][1] == IN_PROCESS_DETAIL
    log = (tmp_path / "driver.log").read_text()
    assert "crashed" not in log and log.count("Threads started!") == 1
    assert sum(s["reconnects"] for s in driver.output.samples) == 1.0  # sysbench's reconn/s
    assert sum(s["errors"] for s in driver.output.samples) == 1.0  # the 2013, counted by us
    rec = next(e for e in driver.output.events if e["event"] == "recovered")
    assert rec["t"] - fault_t < 0.5


@pytest.mark.root
def test_a_paced_sysbench_keeps_its_rate_and_is_restarted(
    network: Network, server: MariaDBServer, tmp_path: Path
) -> None:
    """load.rate = 25 x 2 threads: sysbench's --rate=50 (its report's extra "queue length"
    line is only logged); after the crash its first transaction comes one gap (~20 ms) after
    the restart."""
    load = LoadSettings(driver="sysbench", threads=2, rate=25)
    driver, fault_t = lose_the_connection(network, server, tmp_path, fix=False, load=load)
    evs = kinds(driver, fault_t)
    assert [k for k, _ in evs] == ["error", "reconnect", "recovered"], evs
    before = [s["tps"] for s in driver.output.samples if s["t"] < fault_t]
    assert before and all(25 <= tps <= 80 for tps in before), before  # Poisson, mean 50
    reconnect, recovered = (next(e for e in driver.output.events
                                 if e["event"] == k and e["t"] >= fault_t)
                            for k in ("reconnect", "recovered"))
    assert 0 < recovered["t"] - reconnect["t"] < 0.1
    assert "queue length" in (tmp_path / "driver.log").read_text()


@pytest.mark.root
def test_the_password_is_in_no_command_line(
    network: Network, server: MariaDBServer, tmp_path: Path
) -> None:
    """While sysbench runs (it logged in: the config file works), no process on the machine
    has the password in its argv, and sysbench's environment lacks the driver's config."""
    cfg = OltpConfig(target=Target(host=str(server.address), port=server.port,
                                   password=server.password),
                     load=LoadSettings(driver="sysbench"))
    driver = DriverProcess(network["client"], "lab.load.sysbench", cfg.model_dump(mode="json"),
                           tmp_path / "driver.log")
    try:
        driver.wait_ready(15)
        sysbench = [pid for pid in children(driver.proc.pid)
                    if Path(f"/proc/{pid}/comm").read_text().strip() == "sysbench"]
        assert len(sysbench) == 1
        argv = Path(f"/proc/{sysbench[0]}/cmdline").read_bytes().split(b"\0")
        assert any(a.startswith(b"--config-file=/dev/fd/") for a in argv), argv
        assert argv_holding(server.password) == []
        assert CONFIG_ENV.encode() not in Path(f"/proc/{sysbench[0]}/environ").read_bytes()
        time.sleep(1.3)  # a report line: sysbench works with the password it read
    finally:
        assert driver.stop() == 0
    assert driver.output.samples and driver.output.samples[-1]["tps"] > 0
    assert server.password not in (tmp_path / "driver.log").read_text()


# --- bar 3: sysbench and oltp on the same switchover -------------------------------------------


def sysbench_pids() -> set[int]:
    out = subprocess.run(["pgrep", "-x", "sysbench"], capture_output=True, text=True).stdout
    return {int(p) for p in out.split()}


def events(trial_dir: Path) -> list[dict[str, str]]:
    with open(trial_dir / "events.csv") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def sb_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, dict[str, str]]]:
    run_dir = tmp_path_factory.mktemp("sysbench-run")
    before = sysbench_pids()
    scen = scenario.load(ROOT / "scenarios" / "sysbench-switchover.toml")
    matrix = MatrixRun(scen, run_dir)
    rows = matrix.run()
    assert matrix.failures == {}
    assert sysbench_pids() <= before, "the run left sysbench processes behind"
    return run_dir, {r["trial"]: {k: str(v) for k, v in r.items()} for r in rows}


@pytest.mark.root
def test_sysbench_crash_is_one_reconnect(
    sb_run: tuple[Path, dict[str, dict[str, str]]],
) -> None:
    run_dir, rows = sb_run
    row = rows["sysbench-switchover-retries2-5"]
    assert row["driver"] == "sysbench"
    assert int(row["reconnects"]) == 1
    evs = events(run_dir / row["trial"])
    reconnect = [e for e in evs if e["event"] == "reconnect"]
    assert len(reconnect) == 1 and CRASH_DETAIL in reconnect[0]["detail"]
    first_error = next(e for e in evs if e["event"] == "first_error")
    assert first_error["detail"].startswith("2013 ")  # sysbench's own error line
    # sysbench's connections carry the kernel defaults: it sets no TCP_USER_TIMEOUT
    connected = [e for e in evs if e["event"] == "connected"]
    assert len(connected) == 2 and all("TCP_USER_TIMEOUT=0" in e["detail"] for e in connected)
    log = (run_dir / row["trial"] / "driver.log").read_text()
    assert "crashed (SIGSEGV)" in log and log.count("Threads started!") == 2


@pytest.mark.root
def test_sysbench_and_oltp_measure_the_same_outage(
    sb_run: tuple[Path, dict[str, dict[str, str]]],
) -> None:
    _run_dir, rows = sb_run
    sb = float(rows["sysbench-switchover-retries2-5"]["measured_outage_s"])
    oltp = float(rows["oltp-switchover-retries2-5"]["measured_outage_s"])
    print(f"switchover, tcp_retries2=5: sysbench outage {sb:.3f} s, oltp outage {oltp:.3f} s")
    assert 12.0 <= oltp <= 16.0
    assert abs(sb - oltp) <= 0.05 * oltp
