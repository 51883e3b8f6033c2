"""The scripted stacks of the zoo (Node mysql2, PHP mysqli, Python mysqlclient and PyMySQL)
as real clients in the client namespace: their lines, how each library's timeouts end a
blackholed transaction, and how they reconnect. Each measured figure is printed (`-s`)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lab.backends.mariadb import MariaDBServer
from lab.errors import LabError
from lab.load.command import session_pids
from lab.load.foreign import foreign_sockopts, tcp_sockets
from lab.load.zoo import program_env
from lab.load.zoo.scripted import RUNNERS, PythonRunner
from lab.model.kernel import rto_abort_time, syn_abort_time, user_timeout_abort_time
from lab.net.process import ChildProcess
from lab.net.topology import Network
from tests.load.conftest import blackhole

STACKS = sorted(RUNNERS)
LINE = re.compile(r"^(\d+) (OK|ERR|CONNECTED|VERSION)(?: (.*))?$")
LOAD = {"tables": 4, "table_size": 1000}
UTO_STACKS = ("python-mysqlclient", "python-pymysql")  # the others cannot set it


def runnable(stack: str) -> None:
    gone = RUNNERS[stack].missing()
    if gone:
        pytest.skip(f"{stack}: {gone[0]} -- {gone[1]}")


class Program:
    """One zoo program in the client namespace: its contract lines, read as they come."""

    def __init__(self, stack: str, network: Network, server: MariaDBServer, tmp_path: Path,
                 client: dict[str, Any]) -> None:
        target = {"host": str(server.address), "port": server.port, **server.client_params()}
        env = {"PATH": os.environ["PATH"], **program_env(stack, target, client, LOAD, 0)}
        self.stdout = tmp_path / f"{stack}.out"
        self._out = self.stdout.open("w")
        argv = RUNNERS[stack].argv(tmp_path)
        self.proc: ChildProcess = network["client"].start(
            argv, tmp_path / f"{stack}.err", stdout=self._out, env=env)

    def lines(self) -> list[tuple[int, str, str]]:
        """(epoch_ms, word, text) of every line so far; a line outside the contract fails."""
        found = []
        for raw in self.stdout.read_text().splitlines(keepends=True):
            if not raw.endswith("\n"):
                break  # still being written
            m = LINE.match(raw.rstrip("\n"))
            assert m, f"not a contract line: {raw!r}"
            found.append((int(m[1]), m[2], m[3] or ""))
        return found

    def wait(self, word: str, after: int = 0, count: int = 1,
             timeout: float = 15.0) -> tuple[int, int, str]:
        """(index, epoch_ms, text) of the count-th `word` line at index >= after."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            hits = [(i, ms, text) for i, (ms, w, text) in enumerate(self.lines())
                    if i >= after and w == word]
            if len(hits) >= count:
                return hits[count - 1]
            assert self.proc.alive(), f"exited {self.proc.returncode}: {self.proc.tail()}"
            time.sleep(0.02)
        raise AssertionError(f"no {word} in {timeout}s: {self.lines()[after:][-5:]} "
                             f"{self.proc.tail()}")

    def last_ok_before(self, index: int) -> int:
        return max(ms for ms, w, _ in self.lines()[:index] if w == "OK")

    def stop(self) -> int:
        try:
            return self.proc.stop()
        finally:
            self._out.close()


@pytest.fixture
def start(network: Network, mariadb: MariaDBServer,
          tmp_path: Path) -> Iterator[Any]:
    """start(stack, **client keys) -> a running Program, stopped afterwards."""
    started: list[Program] = []

    def go(stack: str, **client: Any) -> Program:
        runnable(stack)
        prog = Program(stack, network, mariadb, tmp_path, client)
        started.append(prog)
        return prog

    yield go
    for prog in started:
        prog.stop()


def service_sockopts(prog: Program, server: MariaDBServer) -> dict[str, int]:
    """The options of the program's socket to the service (its own or its children's), read
    off a pidfd_getfd duplicate."""
    peer = f"{server.address}:{server.port}"
    assert prog.proc.pid is not None
    for pid in session_pids({prog.proc.pid}):
        for fd, _, _ in tcp_sockets(pid, peer):
            return foreign_sockopts(pid, fd)
    raise AssertionError(f"no socket to {peer} in the program's session")


def report(stack: str, what: str, value: float | str) -> None:
    print(f"\n[{stack}] {what}: {value}")


@pytest.mark.root
@pytest.mark.parametrize("stack", STACKS)
def test_read_timeout_then_reconnect(stack: str, start: Any, network: Network) -> None:
    """OK lines flow; blackholed, the read timeout (2 s) ends the transaction; each connect
    attempt then lasts the connect timeout (1 s); lifted, the program is back to OK."""
    prog = start(stack, read_timeout_s=2.0, connect_timeout_s=1.0)
    _, _, version = prog.wait("VERSION")
    assert version.split()[-1] == RUNNERS[stack].version()
    prog.wait("CONNECTED")
    ok, _, _ = prog.wait("OK", count=5)
    with blackhole(network["db"]):
        err, err_ms, text = prog.wait("ERR", after=ok, timeout=8)
        waited = (err_ms - prog.last_ok_before(err)) / 1000
        report(stack, "read timeout 2 s: ERR after last OK (s)", f"{waited:.2f}")
        report(stack, "read timeout error", text)
        assert 1.9 <= waited <= 3.0
        _, first_ms, _ = prog.wait("ERR", after=err + 1, timeout=5)
        _, second_ms, connect_text = prog.wait("ERR", after=err + 1, count=2, timeout=5)
        attempt = (second_ms - first_ms) / 1000
        report(stack, "connect timeout 1 s: one attempt (s)", f"{attempt:.2f}")
        report(stack, "connect timeout error", connect_text)
        assert 0.9 <= attempt <= 1.6
        lifted = len(prog.lines())
        lift_ms = time.time_ns() // 1_000_000  # the rule goes as the block ends
    _, back_ms, _ = prog.wait("OK", after=lifted, timeout=10)
    report(stack, "blackhole lifted: first OK after (s)", f"{(back_ms - lift_ms) / 1000:.2f}")
    assert prog.stop() == 0


@pytest.mark.root
@pytest.mark.parametrize("stack", STACKS)
def test_defaults_end_at_the_kernel_limit(stack: str, start: Any, network: Network) -> None:
    """With the library's defaults, tcp_retries2=3 ends the blackholed transaction (at the
    kernel's ~6.7 s, lab.model.kernel) and tcp_syn_retries=1 each connect attempt (~3.1 s,
    below every library's connect timeout); a SIGTERM in that connect still exits 0."""
    client = network["client"]
    client.sysctl_set("net.ipv4.tcp_retries2", 3)
    client.sysctl_set("net.ipv4.tcp_syn_retries", 1)
    prog = start(stack)
    ok, _, _ = prog.wait("OK", count=5)
    with blackhole(network["db"]):
        err, err_ms, text = prog.wait("ERR", after=ok, timeout=10)
        waited = (err_ms - prog.last_ok_before(err)) / 1000
        report(stack, "defaults, tcp_retries2=3: ERR after last OK (s)", f"{waited:.2f}")
        report(stack, "tcp_retries2 error", text)
        assert abs(waited - rto_abort_time(3)) <= 0.5
        _, connect_ms, connect_text = prog.wait("ERR", after=err + 1, timeout=6)
        report(stack, "defaults, tcp_syn_retries=1: failed connect after (s)",
               f"{(connect_ms - err_ms) / 1000:.2f}")
        report(stack, "tcp_syn_retries error", connect_text)
        assert abs((connect_ms - err_ms) / 1000 - syn_abort_time(1)) <= 0.5
        time.sleep(0.5)  # inside the next connect
        t0 = time.monotonic()
        assert prog.proc.pid is not None
        os.killpg(prog.proc.pid, signal.SIGTERM)  # as lab.load.command stops its programs
        rc = prog.proc.proc.wait(3)
        report(stack, "SIGTERM to the group in a blackholed connect: exit, after (s)",
               f"{rc}, {time.monotonic() - t0:.2f}")
        assert rc == 0


@pytest.mark.root
@pytest.mark.parametrize("stack", UTO_STACKS)
def test_tcp_user_timeout(stack: str, start: Any, network: Network) -> None:
    """TCP_USER_TIMEOUT=1500 ms on the library's socket ends a blackholed transaction 1.5 s
    after the first RTO retransmission (~1.9 s after the send, lab.model.kernel)."""
    prog = start(stack, tcp_user_timeout_ms=1500)
    ok, _, _ = prog.wait("OK", count=5)
    with blackhole(network["db"]):
        err, err_ms, text = prog.wait("ERR", after=ok, timeout=6)
    waited = (err_ms - prog.last_ok_before(err)) / 1000
    report(stack, "TCP_USER_TIMEOUT 1500 ms: ERR after last OK (s)", f"{waited:.2f}")
    report(stack, "TCP_USER_TIMEOUT error", text)
    assert abs(waited - user_timeout_abort_time(1.5)) <= 0.4


# (stack, client keys, options its socket must show): unset, each library leaves the kernel's
# keepalive sysctls (7200 s, 75 s, 9) with SO_KEEPALIVE on, and no TCP_USER_TIMEOUT
KERNEL_KEEPALIVE = {"SO_KEEPALIVE": 1, "TCP_KEEPIDLE": 7200, "TCP_KEEPINTVL": 75,
                    "TCP_KEEPCNT": 9, "TCP_USER_TIMEOUT": 0}
ALL_SOCKET_KEYS = {"so_keepalive": True, "tcp_keepidle": 5, "tcp_keepintvl": 2,
                   "tcp_keepcnt": 3, "tcp_user_timeout_ms": 4000}
ALL_SOCKET_OPTS = {"SO_KEEPALIVE": 1, "TCP_KEEPIDLE": 5, "TCP_KEEPINTVL": 2, "TCP_KEEPCNT": 3,
                   "TCP_USER_TIMEOUT": 4000}
SOCKET_CASES = [
    *((stack, {}, KERNEL_KEEPALIVE) for stack in STACKS),
    # libuv (1.46, Node 20) sets a 1 s interval and 10 probes itself along with the idle time
    ("node-mysql2", {"tcp_keepidle": 5},
     {"SO_KEEPALIVE": 1, "TCP_KEEPIDLE": 5, "TCP_KEEPINTVL": 1, "TCP_KEEPCNT": 10}),
    ("node-mysql2", {"so_keepalive": False}, {"SO_KEEPALIVE": 0}),
    ("python-mysqlclient", ALL_SOCKET_KEYS, ALL_SOCKET_OPTS),
    ("python-pymysql", ALL_SOCKET_KEYS, ALL_SOCKET_OPTS),
    ("python-pymysql", {"so_keepalive": False}, {"SO_KEEPALIVE": 0}),
]


@pytest.mark.root
@pytest.mark.parametrize(("stack", "client", "expected"), SOCKET_CASES)
def test_socket_options(stack: str, client: dict[str, Any], expected: dict[str, int],
                        start: Any, mariadb: MariaDBServer) -> None:
    """The options each library's socket really has, the trial's keys set or not."""
    prog = start(stack, **client)
    prog.wait("OK")
    found = service_sockopts(prog, mariadb)
    report(stack, f"socket options with {client}", found)
    assert found.items() >= expected.items()


REFUSALS = [
    ("node-mysql2", "LAB_TCP_USER_TIMEOUT_MS", "1500"),
    ("node-mysql2", "LAB_WRITE_TIMEOUT_MS", "2000"),
    ("php-mysqli", "LAB_TCP_KEEPIDLE", "5"),
    ("php-mysqli", "LAB_SO_KEEPALIVE", "0"),
    ("php-mysqli", "LAB_READ_TIMEOUT_MS", "1500"),
    ("python-mysqlclient", "LAB_READ_TIMEOUT_MS", "1500"),
]


@pytest.mark.parametrize(("stack", "var", "value"), REFUSALS)
def test_refuses_what_its_library_cannot_apply(stack: str, var: str, value: str) -> None:
    """Exit 64 and one line on stderr, before any connect (the service is unreachable)."""
    runnable(stack)
    env = {"PATH": os.environ["PATH"], "LAB_HOST": "192.0.2.1", "LAB_PORT": "9",
           "LAB_TABLES": "1", "LAB_TABLE_SIZE": "1", var: value}
    out = subprocess.run(RUNNERS[stack].argv(Path("/nonexistent")), env=env,
                         capture_output=True, text=True, timeout=20)
    assert out.returncode == 64, (out.stdout, out.stderr)
    assert len(out.stderr.strip().splitlines()) == 1 and var in out.stderr


def test_missing_mysql2_names_the_npm_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """BHL_ZOO_NODE_DIR is the npm prefix; an empty one is a problem with its install line."""
    runnable("node-mysql2")
    monkeypatch.setenv("BHL_ZOO_NODE_DIR", str(tmp_path))
    runner = RUNNERS["node-mysql2"]
    assert runner.version() is None
    problem, fix = runner.missing() or ("", "")
    assert problem == f"mysql2 3.x is not installed in {tmp_path} (found: none)"
    assert fix.endswith(f"npm install --prefix {tmp_path} mysql2@3")
    assert runner.argv(tmp_path)[-1] == str(tmp_path / "node_modules")


def test_a_missing_program_is_a_lab_error(tmp_path: Path) -> None:
    runner = PythonRunner("python-x", "os", "nothing", tmp_path / "gone.py", "reinstall")
    assert runner.missing() is None and runner.version() is None
    with pytest.raises(LabError, match=r"gone\.py is missing"):
        runner.argv(tmp_path)


# each library's own connect timeout, and the SYN retries that let it show (the kernel's
# limit must be the longer one); mysqlclient has none: the kernel's limit is what it gets
CONNECT_DEFAULTS = {
    "node-mysql2": (3, 10.0),  # mysql2 connectTimeout 10000 ms
    "php-mysqli": (6, 60.0),  # mysqlnd: default_socket_timeout, 60 s
    "python-mysqlclient": (3, syn_abort_time(3)),  # libmariadb: none (~19.6 s)
    "python-pymysql": (3, 10.0),  # PyMySQL connect_timeout=10
}


@pytest.mark.slow
@pytest.mark.root
@pytest.mark.parametrize("stack", STACKS)
def test_default_connect_timeout(stack: str, start: Any, network: Network) -> None:
    """A connect into the blackhole, every key unset, lasts the library's own timeout."""
    syn_retries, expected = CONNECT_DEFAULTS[stack]
    client = network["client"]
    client.sysctl_set("net.ipv4.tcp_retries2", 3)
    client.sysctl_set("net.ipv4.tcp_syn_retries", syn_retries)
    prog = start(stack)
    ok, _, _ = prog.wait("OK", count=5)
    with blackhole(network["db"]):
        err, err_ms, _ = prog.wait("ERR", after=ok, timeout=10)
        _, connect_ms, text = prog.wait("ERR", after=err + 1, timeout=expected + 10)
    attempt = (connect_ms - err_ms) / 1000
    report(stack, f"default connect timeout (tcp_syn_retries={syn_retries}) (s)",
           f"{attempt:.2f}")
    report(stack, "default connect timeout error", text)
    assert abs(attempt - expected) <= 0.6
