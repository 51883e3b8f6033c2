"""Fixtures of the load tests: a real MariaDB on the `db` host, a blackhole towards it, and
reading a driver's events as they arrive."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from lab.backends.mariadb import MariaDBServer
from lab.load.base import DriverProcess
from lab.net.topology import Host, Network

# every packet the db host receives is dropped: the server vanishes without a RST
DROP_ALL_INPUT = """table inet lab_test_blackhole {
    chain input { type filter hook input priority 0; policy drop; }
}
"""


@pytest.fixture
def mariadb(network: Network) -> Iterator[MariaDBServer]:
    """A seeded MariaDB on `db`, listening towards `client`."""
    db = network["db"]
    s = MariaDBServer(db, db.address_towards("client"))
    s.start()
    try:
        yield s
    finally:
        s.stop()


@contextlib.contextmanager
def blackhole(host: Host) -> Iterator[None]:
    """Drop everything `host` receives while inside (the crash of a server that sends no RST)."""
    host.run(["nft", "-f", "-"], input=DROP_ALL_INPUT)
    try:
        yield
    finally:
        host.run(["nft", "delete", "table", "inet", "lab_test_blackhole"])


@contextlib.contextmanager
def resetting(host: Host, port: int) -> Iterator[None]:
    """While inside, `host` answers every packet to `port` with a TCP reset (applied and
    removed in-process: the rule is in place when the block starts, gone when it ends)."""
    host.nft(f"""table inet lab_test_reset {{
    chain input {{ type filter hook input priority 0; policy accept;
        tcp dport {port} reject with tcp reset; }}
}}""")
    try:
        yield
    finally:
        host.nft("delete table inet lab_test_reset")


def wait_for(driver: DriverProcess, pred: Callable[[dict[str, Any]], bool],
             timeout: float) -> dict[str, Any]:
    """The first event of `driver` that `pred` accepts, waiting up to `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for ev in list(driver.output.events):
            if pred(ev):
                return ev
        time.sleep(0.01)
    raise AssertionError(f"no matching event in {timeout}s; events: {driver.output.events}")


def kill_and_wait_dead(pid: int, timeout: float = 5.0) -> None:
    """SIGKILL `pid` and return once it has exited (a zombie or gone): its kernel has closed
    its sockets by then, so no transaction that starts afterwards can still reach it."""
    os.kill(pid, signal.SIGKILL)
    stat = Path(f"/proc/{pid}/stat")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if stat.read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                return
        except (FileNotFoundError, ProcessLookupError):
            return
        time.sleep(0.001)
    raise AssertionError(f"pid {pid} still running {timeout}s after SIGKILL")


def events(driver: DriverProcess, name: str, after: float = 0.0) -> list[dict[str, Any]]:
    """The driver's `name` events so far, from `after` on."""
    return [e for e in driver.output.events if e["event"] == name and e["t"] >= after]
