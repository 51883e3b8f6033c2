"""The http driver against a real nginx: protocol, keep-alive, socket options and timeouts,
and its reconnect when the server hangs or dies (real namespaces, no mocks)."""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from lab.backends.nginx import NginxServer
from lab.config.settings import ClientSettings, LoadSettings
from lab.load import driver_config
from lab.load.base import CALLBACK_DRAIN_S, DriverProcess
from lab.load.http import HttpConfig
from lab.net.topology import Network
from tests.load.conftest import events, kill_and_wait_dead, wait_for

SYSBENCH_LINE = re.compile(
    r"^\[ (\d+)s \] thds: (\d+) tps: ([\d.]+) qps: ([\d.]+) \(r/w/o: ([\d.]+)/([\d.]+)/([\d.]+)\)"
    r" lat \(ms,(\d+)%\): ([\d.]+) err/s: ([\d.]+) reconn/s: ([\d.]+)$")


def test_config_takes_what_the_trial_passes() -> None:
    # the trial sends {"target": {host, port, **backend.client_params()}, "client", "load"}
    cfg = HttpConfig.model_validate({"target": {"host": "198.18.0.100", "port": 3001,
                                                "path": "/"},
                                     "client": {"read_timeout_s": 2}, "load": {"threads": 3}})
    assert (cfg.target.port, cfg.target.path, cfg.load.threads) == (3001, "/", 3)
    again = HttpConfig.model_validate(driver_config(
        "http", "10.0.0.1", 80, {"path": "/"}, ClientSettings().model_dump(),
        LoadSettings(driver="http").model_dump()).config)
    assert again.target.host == "10.0.0.1" and again.load.driver == "http"


@pytest.fixture
def server(network: Network) -> Iterator[NginxServer]:
    db = network["db"]
    s = NginxServer(db, db.address_towards("client"))
    s.start()
    try:
        yield s
    finally:
        s.stop()


def start_driver(network: Network, server: NginxServer, tmp_path: Path, client: ClientSettings,
                 threads: int = 1,
                 on_record: Callable[[dict[str, Any]], None] | None = None,
                 rate: float = 0.0) -> DriverProcess:
    config = driver_config("http", str(server.address), server.port, server.client_params(),
                           client.model_dump(),
                           LoadSettings(driver="http", threads=threads, rate=rate).model_dump())
    driver = DriverProcess(network["client"], config.module, config.config,
                           tmp_path / "driver.log", on_record=on_record)
    driver.wait_ready(15)
    return driver


@pytest.mark.root
def test_keepalive_connections_samples_and_socket_options(
    network: Network, server: NginxServer, tmp_path: Path
) -> None:
    client = ClientSettings(tcp_user_timeout_ms=3000, so_keepalive=True, tcp_keepidle=30,
                            tcp_keepintvl=5, tcp_keepcnt=4)
    driver = start_driver(network, server, tmp_path, client, threads=2)
    try:
        time.sleep(2.3)
        # one long-lived connection per thread: nginx sees exactly two, after thousands of
        # requests
        est = network["db"].run(["ss", "-Htn", "state", "established", "sport", "= :80"]).stdout
        assert len(est.splitlines()) == 2
    finally:
        assert driver.stop() == 0
    connected = events(driver, "connected")
    assert len(connected) == 2
    for ev in connected:
        assert ev["sockopts"] == {"TCP_USER_TIMEOUT": 3000, "SO_KEEPALIVE": 1,
                                  "TCP_KEEPIDLE": 30, "TCP_KEEPINTVL": 5, "TCP_KEEPCNT": 4,
                                  "TCP_NODELAY": 1}
    full = [s for s in driver.output.samples if s["interval_s"] == 1.0]
    assert len(full) >= 2 and all(s["tps"] > 100 for s in full)
    for s in driver.output.samples:
        assert s["qps"] == s["reads"] == s["tps"] and s["writes"] == s["other"] == 0
        assert s["errors"] == s["reconnects"] == 0 and s["threads"] == 2
    lines = (tmp_path / "driver.log").read_text().splitlines()
    assert lines and all(SYSBENCH_LINE.match(line) for line in lines)


@pytest.mark.root
def test_read_timeout_on_a_hung_server_then_recovery(
    network: Network, server: NginxServer, tmp_path: Path
) -> None:
    driver = start_driver(network, server, tmp_path, ClientSettings(read_timeout_s=0.5))
    pid = server.pid
    assert pid is not None
    try:
        fault_t = time.monotonic()
        driver.mark_fault(fault_t)
        os.kill(pid, signal.SIGSTOP)  # the kernel still ACKs; no answer ever comes
        err = wait_for(driver, lambda e: e["event"] == "error", 3)
        assert err["detail"] == "TimeoutError: timed out"
        assert 0.4 <= err["t"] - fault_t <= 1.0  # read_timeout_s, not a kernel timer
        wait_for(driver, lambda e: e["event"] == "reconnect", 2)
        os.kill(pid, signal.SIGCONT)
        rec = wait_for(driver, lambda e: e["event"] == "recovered", 3)
        assert rec["t"] > fault_t
    finally:
        os.kill(pid, signal.SIGCONT)
        driver.stop()


@pytest.mark.root
def test_a_paced_load_sees_the_hang_at_its_mark_and_its_end_at_once(
    network: Network, server: NginxServer, tmp_path: Path
) -> None:
    """load.rate = 1/s: a request a second, yet the hang's timeout runs from the mark (the
    mark starts a request at once) and the request retried after it (at once, not at the
    next slot) is answered as soon as nginx runs again."""
    driver = start_driver(network, server, tmp_path, ClientSettings(read_timeout_s=0.5),
                          rate=1.0)
    pid = server.pid
    assert pid is not None
    try:
        time.sleep(2.3)
        steady = [s["tps"] for s in driver.output.samples if s["interval_s"] == 1.0]
        os.kill(pid, signal.SIGSTOP)
        fault_t = time.monotonic()
        driver.mark_fault(fault_t)
        err = wait_for(driver, lambda e: e["event"] == "error", 3)
        time.sleep(1.0)
        os.kill(pid, signal.SIGCONT)
        resumed = time.monotonic()
        rec = wait_for(driver, lambda e: e["event"] == "recovered", 3)
    finally:
        os.kill(pid, signal.SIGCONT)
        driver.stop()
    print(f"\nrate 1/s: tps {steady}; timeout {err['t'] - fault_t:.3f} s after the mark, "
          f"recovered {1000 * (rec['t'] - resumed):.1f} ms after SIGCONT")
    # one a second (a request that ends on a sample boundary may land in its neighbour)
    assert steady and abs(sum(steady) - len(steady)) <= 1 and max(steady) <= 2, steady
    assert 0.45 <= err["t"] - fault_t <= 0.6  # read_timeout_s from the mark, not the slot
    assert 0 < rec["t"] - resumed < 0.1


@pytest.mark.root
def test_a_stalled_request_shows_as_latency_across_its_retries(
    network: Network, server: NginxServer, tmp_path: Path
) -> None:
    """nginx stopped for 3 s: each attempt times out after 0.5 s and is retried on a new
    connection (the kernel still accepts them). The request is one request from the first
    attempt to the answer: lat_p95_ms grows by about 1000 ms a second, then falls back."""
    driver = start_driver(network, server, tmp_path, ClientSettings(read_timeout_s=0.5))
    pid = server.pid
    assert pid is not None
    try:
        time.sleep(0.2)
        fault_t = time.monotonic()
        driver.mark_fault(fault_t)
        os.kill(pid, signal.SIGSTOP)
        time.sleep(3.3)
        os.kill(pid, signal.SIGCONT)
        wait_for(driver, lambda e: e["event"] == "recovered", 3)
        time.sleep(1.1)
    finally:
        os.kill(pid, signal.SIGCONT)
        driver.stop()
    # the seconds wholly inside the stop
    inside = [s for s in driver.output.samples if fault_t + 1 < s["t"] < fault_t + 3.3]
    stalled = [(round(s["t"] - fault_t, 2), s["lat_p95_ms"] / 1000) for s in inside]
    print(f"\n(seconds since the fault, lat_p95 s) while nginx is stopped: {stalled}")
    assert len(inside) >= 2 and all(s["tps"] == 0 for s in inside)
    assert all(abs(lat - since) < 0.3 for since, lat in stalled), stalled
    assert len(events(driver, "error")) >= 4  # one per timed-out attempt
    assert driver.output.samples[-1]["lat_p95_ms"] < 100  # served again


@pytest.mark.root
def test_killed_server_resets_then_the_pool_reconnects(
    network: Network, server: NginxServer, tmp_path: Path
) -> None:
    driver = start_driver(network, server, tmp_path, ClientSettings())
    pid = server.pid
    assert pid is not None
    try:
        fault_t = time.monotonic()
        driver.mark_fault(fault_t)
        os.kill(pid, signal.SIGKILL)  # its kernel closes the sockets; nothing listens after
        first = wait_for(driver, lambda e: e["event"] == "error", 3)
        assert first["detail"].split(":")[0] in ("ConnectionResetError", "RemoteDisconnected",
                                                 "BadStatusLine")
        wait_for(driver, lambda e: e["detail"].endswith("(connect)"), 3)
        time.sleep(0.3)  # many refused connects, one error event for the sequence
        server.stop()
        server.start()
        rec = wait_for(driver, lambda e: e["event"] == "recovered", 5)
        assert rec["t"] > fault_t
    finally:
        driver.stop()
    after = [e for e in driver.output.events if e["t"] >= fault_t]
    seq = [e["event"] for e in after if e["event"] in ("error", "reconnect")]
    # the request's error, the refused connects (one event), the reconnect after the restart;
    # a connect in the instant the dying server's listener still accepts comes first, then
    # fails on its request (seen once in CI): error, reconnect, ... in front
    assert seq in (["error", "error", "reconnect"],
                   ["error", "reconnect", "error", "error", "reconnect"]), seq


# --- output going away never changes a measurement (issue 13) -----------------------------------


@pytest.mark.root
def test_a_callback_that_always_raises_loses_no_record(
    network: Network, server: NginxServer, tmp_path: Path
) -> None:
    """`lab run --plain | head -2`: the printer raises BrokenPipeError on every record. The
    reader must go on: every sample and event, the recovery included, reaches `output`, and
    the callback (kept, the trial's status lives in it too) still sees each one."""
    seen: list[dict[str, Any]] = []

    def printer(record: dict[str, Any]) -> None:
        seen.append(record)
        raise BrokenPipeError(32, "Broken pipe")

    driver = start_driver(network, server, tmp_path, ClientSettings(), on_record=printer)
    try:
        time.sleep(1.2)
        assert server.pid is not None
        # marked once the server is dead: a request started between the mark and the kill
        # could succeed and count as the recovery (seen once in CI)
        kill_and_wait_dead(server.pid)
        fault_t = time.monotonic()
        driver.mark_fault(fault_t)
        wait_for(driver, lambda e: e["detail"].endswith("(connect)"), 3)
        server.stop()
        server.start()
        wait_for(driver, lambda e: e["event"] == "recovered", 5)
        time.sleep(1.1)
    finally:
        assert driver.stop() == 0
    out = driver.output
    assert out.ready_t is not None and len(out.samples) >= 3
    assert [e["event"] for e in out.events if e["t"] >= fault_t and e["event"] in (
        "error", "reconnect", "recovered")][-2:] == ["reconnect", "recovered"]
    assert len(seen) == 1 + len(out.samples) + len(out.events)
    assert [r["kind"] for r in seen].count("ready") == 1
    assert seen[-1] == out.samples[-1]  # the last one, printed on stop, too
    log = (tmp_path / "driver.log").read_text()
    assert log.count("on_record callback failed: BrokenPipeError") == 1
    assert f"on_record callback failed {len(seen)} times in all" in log


@pytest.mark.root
def test_a_callback_that_blocks_delays_no_record(
    network: Network, server: NginxServer, tmp_path: Path
) -> None:
    """A stalled terminal: the callback blocks on the first record. The samples still arrive
    on time, and stop() does not wait for the callback."""
    release = threading.Event()
    seen: list[dict[str, Any]] = []

    def stuck(record: dict[str, Any]) -> None:
        seen.append(record)
        release.wait(30)

    driver = start_driver(network, server, tmp_path, ClientSettings(), on_record=stuck)
    try:
        assert driver.output.ready_t is not None
        time.sleep(2.3)
        assert len(driver.output.samples) >= 2
        t = time.monotonic()
        assert driver.stop() == 0
        assert time.monotonic() - t < CALLBACK_DRAIN_S + 1.0
        assert len(seen) == 1  # still in the first call
    finally:
        release.set()
    last = driver.output.samples[-1]
    assert last["interval_s"] < 1.0 and last["tps"] > 0  # the partial one printed on stop
