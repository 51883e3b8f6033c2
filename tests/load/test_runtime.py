"""The driver runtime without a server: the sample grid, per-second rates, the stdin commands,
the records on stdout. (The drivers against real servers: test_oltp, test_http.)"""

from __future__ import annotations

import itertools
import json
import os
import queue
import threading
import time

import pytest

from lab.config.settings import ClientSettings, LoadSettings
from lab.load.base import CONFIG_ENV
from lab.load.oltp import OltpConfig, OltpWorker, Target
from lab.load.runtime import (
    Clock,
    Driver,
    FaultMark,
    Pacer,
    emit_connected,
    is_stop,
    p95,
    parse_config,
)


def test_p95_is_nearest_rank() -> None:
    assert p95([]) == 0.0
    assert p95([float(i) for i in range(1, 101)]) == 95.0
    assert p95([3.0, 1.0, 2.0]) == 3.0


def test_clock_puts_warm_up_outside_the_grid() -> None:
    clock = Clock()
    assert clock.index(5.0) is None  # not ready yet
    clock.t0 = 10.0
    assert [clock.index(t) for t in (9.99, 10.0, 10.99, 11.0, 13.5)] == [None, 0, 0, 1, 3]


def test_fault_mark_moves_on_fault_commands_only(capsys: pytest.CaptureFixture[str]) -> None:
    mark = FaultMark()
    assert not mark.take("stop", "oltp")
    assert mark.take("fault 12.5", "oltp") and (mark.t, mark.generation) == (12.5, 1)
    assert not mark.take("fault soon", "oltp")
    assert (mark.t, mark.generation) == (12.5, 1)  # a malformed mark leaves the last one
    assert "oltp: ignoring malformed command 'fault soon'" in capsys.readouterr().err
    assert mark.take("fault 20", "oltp") and (mark.t, mark.generation) == (20.0, 2)
    assert is_stop("cmd", "stop") and is_stop("eof", None) and not is_stop("cmd", "fault 1")


def test_samples_are_per_second_rates_of_every_worker() -> None:
    cfg = OltpConfig(target=Target(host="198.18.0.2"), load=LoadSettings(threads=2))
    driver = Driver(cfg, OltpWorker)
    driver.clock.t0 = 100.0
    first, second = driver.workers
    first._count(99.5, r=14, w=4, o=2, txn_latency=0.010)  # warm-up: not sampled
    first._count(100.2, r=14, w=4, o=2, txn_latency=0.004)
    second._count(100.7, r=3, o=1, error=True)
    second._count(101.1, reconnect=True)  # the next interval
    sample = driver.sample(0, 101.0, 1.0)
    assert {k: sample[k] for k in ("tps", "qps", "reads", "writes", "other", "errors",
                                   "reconnects", "threads", "lat_p95_ms")} == {
        "tps": 1.0, "qps": 24.0, "reads": 17.0, "writes": 4.0, "other": 3.0, "errors": 1.0,
        "reconnects": 0.0, "threads": 2, "lat_p95_ms": 4.0}
    partial = driver.sample(1, 101.5, 0.5)  # the last, partial interval on stop
    assert (partial["reconnects"], partial["interval_s"]) == (2.0, 0.5)


def test_a_request_in_flight_counts_by_its_age(capsys: pytest.CaptureFixture[str]) -> None:
    """A stalled request shows in lat_p95_ms as its age; a failed attempt does not end it."""
    cfg = OltpConfig(target=Target(host="198.18.0.2"), load=LoadSettings(threads=2))
    driver = Driver(cfg, OltpWorker)
    stuck, idle = driver.workers
    start = stuck._begin()
    driver.clock.t0 = start - 0.5
    assert stuck.inflight_age(start + 3.0) == pytest.approx(3.0)
    assert stuck.inflight_age(start - 0.1) is None  # not yet started at that instant
    assert idle.inflight_age(start + 3.0) is None
    sample = driver.sample(3, start + 3.0, 1.0)
    assert (sample["tps"], sample["lat_p95_ms"]) == (0.0, pytest.approx(3000.0))
    stuck._failed("2013 Lost connection to MySQL server during query")
    retry = stuck._begin()
    assert stuck.request_since == start  # the retry is the same request
    stuck._completed(retry)
    assert stuck.request_since is None and stuck.inflight_age(retry + 1) is None
    (latency,) = stuck.drain(10**6).latencies  # the request's, failed attempt included
    assert latency >= 1000.0 * (retry - start)
    assert '"event": "error"' in capsys.readouterr().out


def test_connected_event_names_the_socket(capsys: pytest.CaptureFixture[str]) -> None:
    emit_connected(3, "198.18.0.1:40000", "198.18.0.2:3306", {"TCP_USER_TIMEOUT": 5}, pid=42)
    record = json.loads(capsys.readouterr().out)
    assert (record["kind"], record["event"], record["thread"]) == ("event", "connected", 3)
    assert record["detail"] == ("local=198.18.0.1:40000 peer=198.18.0.2:3306 pid=42 "
                                "TCP_USER_TIMEOUT=5")
    assert record["sockopts"] == {"TCP_USER_TIMEOUT": 5}


def test_parse_config_reads_the_environment_or_exits_with_usage(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = json.dumps({"target": {"host": "198.18.0.2", "password": "s3cret"},
                      "client": ClientSettings(read_timeout_s=3).model_dump(mode="json")})
    monkeypatch.setenv(CONFIG_ENV, raw)
    cfg = parse_config(["oltp"], OltpConfig, "lab.load.oltp")
    assert (cfg.target.port, cfg.client.read_timeout_s, cfg.load) == (3306, 3, LoadSettings())
    assert cfg.target.password == "s3cret" and "s3cret" not in repr(cfg)
    assert CONFIG_ENV not in os.environ  # what the driver starts does not inherit it
    usage = f"usage: {CONFIG_ENV}=CONFIG_JSON python -m lab.load.oltp\n"
    with pytest.raises(SystemExit) as info:
        parse_config(["oltp"], OltpConfig, "lab.load.oltp")  # no config in the environment
    assert info.value.code == 2
    assert capsys.readouterr().err == usage
    monkeypatch.setenv(CONFIG_ENV, raw)
    with pytest.raises(SystemExit):
        parse_config(["oltp", raw], OltpConfig, "lab.load.oltp")  # argv: refused, not read
    assert capsys.readouterr().err == usage


# --- load.rate: the pacer ----------------------------------------------------------------------


def paced_starts(pacer: Pacer, n: int, latency_s: float = 0.0) -> list[float]:
    """The start times of n transactions of `latency_s` each, paced by `pacer`."""
    starts = []
    for _ in range(n):
        pacer.wait()
        starts.append(time.monotonic())
        if latency_s:
            time.sleep(latency_s)
    return starts


def test_unpaced_is_back_to_back() -> None:
    pacer = Pacer(0)
    t = time.monotonic()
    paced_starts(pacer, 1000)
    assert time.monotonic() - t < 0.05


def test_the_rate_is_a_schedule_latency_does_not_lower_it() -> None:
    """Slot k at t0 + k / rate: 6 ms transactions at 100/s still start 10 ms apart (a sleep
    of 10 ms after each would make it 16 ms, 62/s)."""
    starts = paced_starts(Pacer(100), 31, latency_s=0.006)
    assert 0.295 <= starts[-1] - starts[0] <= 0.35, starts[-1] - starts[0]
    assert all(b - a > 0.006 for a, b in itertools.pairwise(starts))


def test_a_late_transaction_starts_the_next_at_once_and_no_burst_follows() -> None:
    pacer = Pacer(100)
    paced_starts(pacer, 3)
    time.sleep(0.012)  # a transaction 12 ms long: the next slot has passed, but by < 1 slot
    t = time.monotonic()
    pacer.wait()
    assert time.monotonic() - t < 0.005  # at once, still on the grid
    time.sleep(0.2)  # an outage of 20 slots: not made up
    starts = paced_starts(pacer, 4)
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert all(0.005 <= g <= 0.03 for g in gaps), gaps  # 10 ms apart, not back to back


def test_the_fault_mark_ends_the_wait_at_once() -> None:
    """A thread waiting for its slot starts a transaction at the mark: pacing cannot delay
    the first transaction after the fault (nor so the outage's edges)."""
    pacer = Pacer(0.5)  # a slot every 2 s
    paced_starts(pacer, 1)
    woken: list[float] = []
    waiter = threading.Thread(target=lambda: woken.append(paced_starts(pacer, 1)[0]))
    waiter.start()
    time.sleep(0.1)
    marked = time.monotonic()
    pacer.restart()
    waiter.join(2)
    assert woken and woken[0] - marked < 0.02, woken
    t = time.monotonic()
    pacer.restart()  # a mark while a transaction is in flight: the next one starts at once
    pacer.wait()
    assert time.monotonic() - t < 0.02


def test_a_failed_transaction_is_retried_at_once(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The worker waits for its slot after a good transaction only."""
    cfg = OltpConfig(target=Target(host="198.18.0.2"), load=LoadSettings(rate=1))
    worker = OltpWorker(0, cfg, Clock(), FaultMark(), queue.Queue())
    outcomes = iter([True, False, False, True])
    starts: list[float] = []

    def transaction() -> bool:
        starts.append(time.monotonic())
        try:
            return next(outcomes)
        except StopIteration:
            raise SystemExit from None

    monkeypatch.setattr(worker, "_connect", lambda after_error: None)
    monkeypatch.setattr(worker, "_transaction", transaction)
    monkeypatch.setattr(os, "_exit", lambda code: None)  # run() ends the process on SystemExit
    t = time.monotonic()
    worker.run()
    # txn 1 good -> the grid starts; 2 and 3 fail -> retried at once; 4 good -> its slot
    # (1 s after the first wait) -> 5 ends the loop
    assert len(starts) == 5
    assert starts[3] - t < 0.05
    assert 0.95 <= starts[4] - t <= 1.1
    assert "SystemExit" in capsys.readouterr().err  # how the loop was ended
