"""lab.net.capabilities: the netem probe runs as a real run and leaves nothing behind."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pyroute2 import netns

from lab.errors import LabError
from lab.net import capabilities, runtime
from lab.net.runtime import Run


@pytest.fixture
def probe_runs(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Run]]:
    """The runs the probes of this test make (and only those)."""
    made: list[Run] = []
    real = runtime.new_run

    def new_run(scratch_root: Path | None = None) -> Run:
        run = real(scratch_root)
        made.append(run)
        return run

    monkeypatch.setattr(runtime, "new_run", new_run)
    capabilities.netem_available.cache_clear()
    yield made
    capabilities.netem_available.cache_clear()


def namespaces() -> set[str]:
    return set(netns.listnetns())


@pytest.mark.root
def test_probe_is_a_claimed_run_and_leaves_nothing(state_dir: Path,
                                                   probe_runs: list[Run]) -> None:
    ok, detail = capabilities.probe_netem()
    assert detail.startswith("available") if ok else detail.startswith("not in this kernel")
    assert len(probe_runs) == 1
    run = probe_runs[0]
    assert run.namespaces == []  # its namespace was recorded, created, removed
    assert not any(n.startswith(run.prefix) for n in namespaces())
    assert runtime.recorded_runs() == [] and not run.workdir.exists()
    assert run.run_id not in runtime.claimed_run_ids()


@pytest.mark.root
def test_netem_available_probes_once_per_process(state_dir: Path,
                                                 probe_runs: list[Run]) -> None:
    first = capabilities.netem_available()
    assert capabilities.netem_available() is first
    assert len(probe_runs) == 1


def test_a_probe_that_cannot_run_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(scratch_root: Path | None = None) -> Run:
        raise LabError("the lab needs root (network namespaces, nftables)", "run it with sudo")

    monkeypatch.setattr(runtime, "new_run", refuse)
    assert capabilities.probe_netem() == (
        False, "could not probe: the lab needs root (network namespaces, nftables) -- "
        "run it with sudo")
    monkeypatch.setattr(capabilities, "find_binary", lambda name: None)
    assert capabilities.probe_netem() == (
        False, "could not probe: tc not found (apt-get install iproute2)")
