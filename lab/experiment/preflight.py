"""Preflight: what a run needs from this host, checked once before anything is built.

Without it each trial finds out for itself, inside its build: not root fails every trial of a
matrix with the same error, `lb.engine = "ipvs"` on a kernel without IP_VS fails after the
namespaces exist, `latency_ms` without sch_netem after four namespaces and two servers. Here
each need is checked once per run (trials that share it share the check) and the first one
missing is one LabError naming the trial that needs it and the fix.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator

from lab import lb
from lab.config.settings import TrialSettings
from lab.errors import LabError
from lab.net import netfilter
from lab.net.capabilities import netem_available
from lab.net.process import require_binary

Check = Callable[[], None]


def _root() -> None:
    if os.geteuid() != 0:
        raise LabError("the lab needs root (network namespaces, nftables)", "run it with sudo")


def _netem() -> None:
    ok, detail = netem_available()
    if not ok:
        raise LabError(f"latency_ms needs sch_netem: {detail}",
                       "drop latency_ms, or run the lab in the VM ('make vm-test')")


def _engine(name: str) -> Check:
    def check() -> None:
        lb.choose_engine(name)  # a LabError when this kernel or host cannot run it
    return check


def _binary(name: str, package: str) -> Check:
    def check() -> None:
        require_binary(name, package)
    return check


def _docker() -> None:
    """An engine for provider "docker", and first the SDK, an optional extra: without it the
    run stops here with the pip line, not in the middle of a build with an ImportError."""
    try:
        import docker  # noqa: F401
    except ImportError:
        raise LabError("provider 'docker' needs the docker Python module, which is not "
                       "installed", "pip install 'blackhole-lab[docker]'") from None
    from lab.backends.docker import engine  # only now: it imports the docker SDK
    usable, detail = engine.status()
    if not usable:
        raise LabError(f"provider 'docker': {detail}", "install docker.io ('make setup') "
                       "or use provider = \"process\"")


def _stack(name: str) -> Check:
    """A zoo stack's runtime and library are installed, and its program is built (once,
    into the cache): a build inside a trial would eat into the driver's ready timeout."""
    def check() -> None:
        from lab.load.zoo import cache_dir, runners
        runner = runners()[name]
        missing = runner.missing()
        if missing:
            raise LabError(f"load.stack={name!r}: {missing[0]}", missing[1])
        try:
            runner.argv(cache_dir())
        except LabError:
            raise
        except (OSError, subprocess.SubprocessError) as exc:
            raise LabError(f"load.stack={name!r}: building its program failed: {exc}",
                           "see 'lab doctor', or run 'make setup'") from None
    return check


def _nft_binding() -> None:
    netfilter.binding()  # LabError naming the missing module and the fix


def _command(program: str) -> Check:
    """load.command's program exists and can be run (the namespace shares this filesystem)."""
    def check() -> None:
        found = shutil.which(program)
        if found is None:
            where = "is not an executable file" if "/" in program else "is not on PATH"
            raise LabError(f"load.command: {program!r} {where}",
                           "write the program's full path as load.command's first item")
    return check


def needs(trial: TrialSettings) -> Iterator[tuple[str, Check]]:
    """(key, check) for everything `trial` needs; equal keys are one check."""
    yield "ip", _binary("ip", "iproute2")
    yield "nft", _binary("nft", "nftables")  # to list the rules by hand (README)
    yield "libnftables", _nft_binding  # the nft engine and every link fault, in-process
    yield f"engine {trial.lb.engine}", _engine(trial.lb.engine)
    if trial.provider == "docker":
        yield "docker", _docker
    elif trial.backend == "mariadb":
        yield "mariadbd", _binary("mariadbd", "mariadb-server")
        yield "mariadb-install-db", _binary("mariadb-install-db", "mariadb-server")
    else:
        yield "nginx", _binary("nginx", "nginx-light")
    if trial.load.driver == "sysbench":
        yield "sysbench", _binary("sysbench", "sysbench")
    if trial.load.stack is not None:
        yield f"stack {trial.load.stack}", _stack(trial.load.stack)
    if trial.load.command is not None:
        yield f"command {trial.load.command[0]}", _command(trial.load.command[0])
    if trial.latency_ms is not None:
        yield "netem", _netem


def check(trials: list[TrialSettings]) -> None:
    """Raise the first unmet need of any trial, naming that trial; root comes first."""
    _root()
    done: set[str] = set()
    for trial in trials:
        for key, need in needs(trial):
            if key in done:
                continue
            try:
                need()
            except LabError as exc:
                raise LabError(f"trial {trial.name!r}: {exc.problem}", exc.fix) from None
            done.add(key)
