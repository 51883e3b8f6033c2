"""Shared fixtures. Tests marked `root` build real namespaces; CI runs as root."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from lab.net.runtime import Run, new_run
from lab.net.topology import Network, Topology


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root (network namespaces)")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def lab_run() -> Iterator[Run]:
    """A claimed run slot and scratch dir, released afterwards."""
    run = new_run()
    try:
        yield run
    finally:
        run.release()


@pytest.fixture
def network(lab_run: Run) -> Iterator[Network]:
    """Two hosts, `client` and `db`, on one link (no router); removed afterwards."""
    topo = Topology()
    topo.add_host("client")
    topo.add_host("db")
    topo.add_link("client", "db")
    with Network(topo, lab_run) as net:
        yield net
