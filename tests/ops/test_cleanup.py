"""`lab clean` removes exactly what a kill -9'd run left: namespaces, their processes,
scratch dirs and slots, and nothing of a live run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from lab.net.runtime import STATE_DIR
from lab.ops import cleanup

BUILD_AND_HANG = """
import sys, time
from lab.net.runtime import new_run
from lab.net.topology import Network, lvs_topology
run = new_run()
net = Network(lvs_topology(), run)
server = net["backend1"].popen(["sleep", "1000"])
print(run.prefix, run.workdir, server.pid, flush=True)
time.sleep(1000)
"""


def namespaces() -> str:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


def running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's zombie waits for a reaper we do not control)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def start_run() -> tuple[subprocess.Popen[str], str, Path, int]:
    proc = subprocess.Popen([sys.executable, "-c", BUILD_AND_HANG], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None
    prefix, workdir, pid = proc.stdout.readline().split()
    return proc, prefix, Path(workdir), int(pid)


@pytest.mark.root
def test_clean_removes_a_killed_run_and_spares_a_live_one() -> None:
    live, live_prefix, _, _ = start_run()
    dead, prefix, workdir, server_pid = start_run()
    try:
        os.kill(dead.pid, signal.SIGKILL)
        dead.wait()
        assert prefix in namespaces() and workdir.exists()
        removed = cleanup.clean()
        assert any(prefix in line for line in removed)
        assert prefix not in namespaces()
        assert not workdir.exists()
        assert not running(server_pid)  # the server in it was killed too
        assert not list(STATE_DIR.glob(f"run-{prefix.split('-')[1]}.json"))
        assert live_prefix in namespaces()                 # the live run is untouched
    finally:
        live.kill()
        live.wait()
        cleanup.clean()
    assert live_prefix not in namespaces()


@pytest.mark.root
def test_clean_cli_reports_count() -> None:
    out = subprocess.run([sys.executable, "-m", "lab.cli", "clean"], capture_output=True,
                         text=True, check=True).stdout
    assert "lab clean: removed" in out
