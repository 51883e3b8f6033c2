"""Fixtures of the load tests: a real MariaDB on the `db` host, and a blackhole towards it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from lab.backends.mariadb import MariaDBServer
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
