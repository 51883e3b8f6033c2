"""lab.net.process: the one life cycle of every child program, on real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lab.errors import LabError
from lab.net.process import ChildProcess, find_binary, require_binary, tail, wait_until
from lab.net.topology import Network

# prints "ready" once its signal dispositions are in place, then idles
IDLE = "import time; print('ready', flush=True); time.sleep(60)"
DEAF = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('ready', flush=True); time.sleep(60)")


def _started(argv: list[str], log: Path) -> ChildProcess:
    child = ChildProcess(argv, log)
    assert wait_until(lambda: "ready" in log.read_text(), 15, alive=child.alive), child.tail()
    return child


def _state(pid: int) -> str:
    """The process's state letter in /proc (R, S, T for stopped, Z)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


@pytest.mark.root
def test_host_start_runs_in_the_namespace_and_logs(network: Network, tmp_path: Path) -> None:
    host = network["client"]
    log = tmp_path / "child.log"
    child = host.start([sys.executable, "-c", IDLE], log)
    assert wait_until(lambda: "ready" in log.read_text(), 15, alive=child.alive)
    assert child.pid is not None and child.alive()
    assert child.pid in host.pids()  # `ip netns exec` exec'd the program in the namespace
    assert child.argv[:4] == ["ip", "netns", "exec", host.ns]
    assert os.getsid(child.pid) == child.pid  # its own session: a Ctrl-C reaches only us
    assert child.stop() == -signal.SIGTERM
    assert not child.alive() and child.pid is None and child.log.closed
    assert host.pids() == []


def test_stop_of_a_frozen_process(tmp_path: Path) -> None:
    """A fault's SIGSTOP must not make the stop wait for the SIGKILL: SIGCONT comes first."""
    child = _started([sys.executable, "-c", IDLE], tmp_path / "frozen.log")
    pid = child.proc.pid
    child.send_signal(signal.SIGSTOP)
    assert wait_until(lambda: _state(pid) == "T", 5)
    t0 = time.monotonic()
    assert child.stop(timeout=5) == -signal.SIGTERM
    assert time.monotonic() - t0 < 4


def test_sigkill_after_the_timeout_when_sigterm_is_ignored(tmp_path: Path) -> None:
    child = _started([sys.executable, "-c", DEAF], tmp_path / "deaf.log")
    t0 = time.monotonic()
    assert child.stop(timeout=0.5) == -signal.SIGKILL
    elapsed = time.monotonic() - t0
    assert 0.5 <= elapsed < 5, elapsed


def test_stop_twice_and_stop_after_exit(tmp_path: Path) -> None:
    child = ChildProcess([sys.executable, "-c", "print('bye'); raise SystemExit(3)"],
                         tmp_path / "exits.log")
    assert wait_until(lambda: not child.alive(), 15)
    assert child.returncode == 3 and child.pid is None
    assert child.stop() == 3
    assert child.stop() == 3  # again: same code, nothing raised
    child.send_signal(signal.SIGTERM)  # to a reaped process: ignored
    assert (tmp_path / "exits.log").read_text() == "bye\n"


def test_log_mode_and_pipe(tmp_path: Path) -> None:
    log = tmp_path / "driver.log"
    log.write_text("old line\n")
    child = ChildProcess([sys.executable, "-c",
                          "import sys; print('record'); print('warning', file=sys.stderr)"],
                         log, mode="w", stdout=subprocess.PIPE, text=True)
    out, _ = child.proc.communicate(timeout=15)
    assert child.stop() == 0
    assert out == "record\n"  # stdout was the caller's pipe
    assert log.read_text() == "warning\n"  # stderr went to the log, which "w" truncated


def test_tail(tmp_path: Path) -> None:
    child = ChildProcess([sys.executable, "-c", "for i in range(20): print(i)"],
                         tmp_path / "count.log")
    child.proc.wait(15)
    assert child.tail(3) == "17\n18\n19"
    child.stop()
    assert tail(tmp_path / "count.log", 2) == "18\n19"
    assert tail(tmp_path / "missing.log") == f"(no {tmp_path / 'missing.log'})"


def test_wait_until_returns_the_checks_value() -> None:
    calls: list[int] = []

    def third_time() -> list[int] | None:
        calls.append(1)
        return calls if len(calls) == 3 else None

    assert wait_until(third_time, 5, interval=0.01) == [1, 1, 1]


def test_wait_until_gives_none_at_the_deadline() -> None:
    t0 = time.monotonic()
    assert wait_until(lambda: 0, 0.3, interval=0.02) is None
    assert 0.3 <= time.monotonic() - t0 < 1.0
    calls: list[int] = []
    assert wait_until(lambda: calls.append(1), 0) is None
    assert calls == [1]  # a zero timeout still checks once


def test_wait_until_ends_early_when_the_process_died(tmp_path: Path) -> None:
    child = ChildProcess([sys.executable, "-c", "raise SystemExit(1)"], tmp_path / "dies.log")
    t0 = time.monotonic()
    assert wait_until(lambda: False, 30, alive=child.alive) is None
    assert time.monotonic() - t0 < 10  # not the 30 s timeout
    child.stop()


def test_find_binary(tmp_path: Path) -> None:
    sh = find_binary("sh")
    assert sh is not None and os.path.isabs(sh)
    tool = tmp_path / "bhl-tool"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    assert find_binary("bhl-tool") is None  # not on PATH nor in the sbin directories
    assert find_binary("bhl-tool", path=str(tmp_path)) == str(tool)
    assert find_binary("sh", path=str(tmp_path)) is None  # only `path` is searched


def test_require_binary_names_the_package(tmp_path: Path) -> None:
    assert require_binary("sh", "dash") == find_binary("sh")
    with pytest.raises(LabError) as err:
        require_binary("bhl-no-such-tool", "bhl-tools")
    assert str(err.value) == "bhl-no-such-tool not found -- run 'make setup' (installs bhl-tools)"
    assert "\n" not in str(err.value)
    with pytest.raises(LabError, match="sh not found"):
        require_binary("sh", "dash", path=str(tmp_path))
