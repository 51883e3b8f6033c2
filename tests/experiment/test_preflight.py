"""The host is checked once per run, before anything is built; the first unmet need is one
line naming the trial that needs it and the fix (issue 13, point 1)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from lab import lb
from lab.config.settings import TrialSettings
from lab.errors import LabError
from lab.experiment import preflight
from lab.net.capabilities import netem_available


def trial(**data: Any) -> TrialSettings:
    return TrialSettings.model_validate({"name": "t1", **data})


def namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines()}


def test_needs_follow_the_settings() -> None:
    assert [k for k, _ in preflight.needs(trial())] == [
        "ip", "nft", "libnftables", "engine auto", "mariadbd", "mariadb-install-db"]
    keys = [k for k, _ in preflight.needs(trial(
        backend="nginx", load={"driver": "http"}, latency_ms=10, lb={"engine": "proxy"}))]
    assert keys == ["ip", "nft", "libnftables", "engine proxy", "nginx", "netem"]
    assert "sysbench" in dict(preflight.needs(trial(load={"driver": "sysbench"})))
    assert "docker" in dict(preflight.needs(trial(provider="docker")))


@pytest.mark.root
def test_what_this_host_has_passes() -> None:
    preflight.check([trial(), trial(name="t2", backend="nginx", load={"driver": "http"})])


@pytest.mark.root
@pytest.mark.skipif(lb.kernel_has_ipvs(), reason="this kernel has IP_VS")
def test_ipvs_on_a_kernel_without_it_is_refused_naming_the_trial() -> None:
    before = namespaces()
    with pytest.raises(LabError) as err:
        preflight.check([trial(), trial(name="on-ipvs", lb={"engine": "ipvs"})])
    assert str(err.value) == (
        "trial 'on-ipvs': lb engine 'ipvs' needs a kernel with IP_VS, this one has none -- "
        "use lb.engine=nft (or auto), or run the lab in the VM ('make vm-test')")
    assert namespaces() == before


@pytest.mark.root
def test_latency_without_netem_is_refused_naming_the_trial() -> None:
    if netem_available()[0]:
        pytest.skip("this kernel has sch_netem")
    with pytest.raises(LabError, match=r"^trial 'slow': latency_ms needs sch_netem: .* -- drop "
                       r"latency_ms, or run the lab in the VM \('make vm-test'\)$"):
        preflight.check([trial(name="slow", latency_ms=20)])


@pytest.mark.skipif(os.geteuid() == 0, reason="runs as a user without root")
def test_not_root_is_refused_first() -> None:
    with pytest.raises(LabError, match="the lab needs root"):
        preflight.check([trial()])


WITHOUT_DOCKER = """
import sys
sys.modules["docker"] = None  # `import docker` raises ImportError, as without the extra
from lab.config.settings import TrialSettings
from lab.errors import LabError
from lab.experiment import preflight
try:
    preflight.check([TrialSettings(name="ok"), TrialSettings(name="boxed", provider="docker")])
except LabError as exc:
    print(exc)
"""


@pytest.mark.root
def test_docker_provider_without_the_docker_module_is_one_pip_line() -> None:
    """Without the docker extra, a docker trial stops the run before anything is built."""
    before = namespaces()
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-c", WITHOUT_DOCKER], capture_output=True,
                          text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(root)})
    assert proc.returncode == 0, proc.stderr
    print(proc.stdout)
    assert proc.stdout == (
        "trial 'boxed': provider 'docker' needs the docker Python module, which is not "
        "installed -- pip install 'blackhole-lab[docker]'\n")
    assert namespaces() == before


def test_a_command_that_is_not_there_is_one_line(tmp_path: Path) -> None:
    needs = dict(preflight.needs(trial(load={"driver": "command",
                                             "command": [str(tmp_path / "my-client")]})))
    with pytest.raises(LabError) as exc:
        needs[f"command {tmp_path / 'my-client'}"]()
    assert "is not an executable file" in exc.value.problem
    assert "full path" in exc.value.fix
    needs = dict(preflight.needs(trial(load={"driver": "command", "command": ["sh", "-c", ":"]})))
    needs["command sh"]()  # on PATH: fine


def test_a_zoo_stack_is_built_before_the_run(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The check builds the stack's program into the cache (C: the quickest), so no trial
    builds it inside its ready timeout; a second check is a cache hit."""
    from lab.load.zoo import cache_dir, runners
    monkeypatch.setattr("lab.net.runtime.CACHE_DIR", tmp_path)
    runner = runners()["c-libmariadb"]
    if runner.missing():
        pytest.skip(f"c-libmariadb not installed: {runner.missing()}")
    check = dict(preflight.needs(trial(load={"driver": "zoo", "stack": "c-libmariadb"})))
    check["stack c-libmariadb"]()
    built = list(cache_dir().iterdir())
    assert built and all(p.is_relative_to(tmp_path) for p in built)
    check["stack c-libmariadb"]()
    assert list(cache_dir().iterdir()) == built
