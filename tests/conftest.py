"""Shared fixtures. Tests marked `root` build real namespaces; CI runs as root."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.net import runtime
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
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private STATE_DIR (what BHL_STATE_DIR sets when the module is imported), also for
    the subprocesses a test starts: the records and slots of a user's runs on this machine
    are never read or touched. (A run's claim is not per state dir: see lab.net.runtime.)"""
    state = tmp_path / "state"
    monkeypatch.setenv("BHL_STATE_DIR", str(state))
    monkeypatch.setattr(runtime, "STATE_DIR", state)
    return state


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
