"""The compiled zoo stacks (go-sql-driver, c-libmariadb), built and run for real: the cache,
then each program as the client of a seeded MariaDB that is blackholed under it.

One blackhole per stack serves several copies at once (CASES), each with its own bound on a
dead peer: a read timeout of 2 s, TCP_USER_TIMEOUT 1500 ms, the kernel's limit
(net.ipv4.tcp_retries2=3 in the client namespace), and the socket options read back off each
connection. The blackhole is kept until every copy has also failed one reconnect (no connect
timeout by default: the kernel's SYN retries, tcp_syn_retries=1, end it), then lifted: each
reconnects and goes on.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest

from lab.backends.mariadb import MariaDBServer
from lab.errors import LabError
from lab.load.foreign import foreign_sockopts, tcp_sockets
from lab.load.zoo import native, program_env
from lab.model.kernel import rto_abort_time, syn_abort_time, user_timeout_abort_time
from lab.net.process import ChildProcess
from lab.net.topology import Network
from tests.load.conftest import blackhole

STACKS = sorted(native.RUNNERS)
LOAD = {"tables": 4, "table_size": 1000}
RETRIES2, SYN_RETRIES = 3, 1  # the client namespace's sysctls in the blackhole test
# copy -> (client keys, when its first error is due after its last OK, in s: lab.model.kernel
# says when the kernel gives up - the budgets count from the first RTO retransmission, after
# the tail-loss probe, so tcp_retries2=3 is 6.7 s and TCP_USER_TIMEOUT 1.5 s is 1.9 s here)
CASES: dict[str, tuple[dict[str, Any], float]] = {
    "read_timeout": ({"read_timeout_s": 2.0}, 2.0),
    "user_timeout": ({"tcp_user_timeout_ms": 1500}, user_timeout_abort_time(1.5)),
    "kernel": ({}, rto_abort_time(RETRIES2)),
    "connect_timeout": ({"read_timeout_s": 2.0, "connect_timeout_s": 1.0}, 2.0),
    "keepalive": ({"read_timeout_s": 2.0, "so_keepalive": True, "tcp_keepidle": 5,
                   "tcp_keepintvl": 2, "tcp_keepcnt": 3}, 2.0),
    "no_keepalive": ({"read_timeout_s": 2.0, "so_keepalive": False}, 2.0),
}
# the socket options each copy's connection really has (getsockopt through pidfd_getfd)
KERNEL_KEEPALIVE = {"TCP_KEEPIDLE": 7200, "TCP_KEEPINTVL": 75, "TCP_KEEPCNT": 9}
DEFAULT_SOCKOPTS = {  # what each library does unasked
    "go-sql-driver": {"SO_KEEPALIVE": 1, "TCP_KEEPIDLE": 15, "TCP_KEEPINTVL": 15,
                      "TCP_KEEPCNT": 9},  # net.Dialer's 15 s keepalive, the driver turns it on
    "c-libmariadb": {"SO_KEEPALIVE": 1, **KERNEL_KEEPALIVE},  # on, with the kernel's timers
}
SET_SOCKOPTS = {
    "user_timeout": {"TCP_USER_TIMEOUT": 1500},
    "keepalive": {"SO_KEEPALIVE": 1, "TCP_KEEPIDLE": 5, "TCP_KEEPINTVL": 2, "TCP_KEEPCNT": 3},
    "no_keepalive": {"SO_KEEPALIVE": 0},
}
TOLERANCE_S = 0.3


def reconnect_due(stack: str, copy: str) -> float:
    """How long the reconnect under the blackhole takes: the SYN retries, unless a connect
    timeout ends it, or Go's TCP_USER_TIMEOUT (set before connect, so it bounds the SYNs)."""
    if copy == "connect_timeout":
        return 1.0
    if copy == "user_timeout" and stack == "go-sql-driver":
        return 1.5
    return syn_abort_time(SYN_RETRIES)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("zoo-cache")


@pytest.fixture(scope="module")
def built(cache_dir: Path) -> dict[str, list[str]]:
    """Each stack's argv, built once for the module (the build test times it first)."""
    return {name: runner.argv(cache_dir) for name, runner in native.RUNNERS.items()}


def events(path: Path) -> list[tuple[float, str, str]]:
    """(epoch s, OK|ERR|CONNECTED|VERSION, rest) of a program's stdout."""
    found = []
    for line in path.read_text().splitlines():
        ms, _, rest = line.partition(" ")
        word, _, text = rest.partition(" ")
        found.append((int(ms) / 1000, word, text))
    return found


def wait_for(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


class Copy:
    """One running program: its process and its stdout."""

    def __init__(self, name: str, proc: ChildProcess, out: Path, handle: IO[str]) -> None:
        self.name, self.proc, self.out, self.handle = name, proc, out, handle

    def count(self, word: str, since: float = 0.0) -> int:
        return sum(1 for t, w, _ in events(self.out) if w == word and t >= since)

    def stop(self) -> int:
        rc = self.proc.stop()
        self.handle.close()
        return rc


@pytest.fixture
def start(network: Network, tmp_path: Path) -> Iterator[Any]:
    """start(name, argv, env) runs a program in `client`; all are stopped afterwards."""
    copies: list[Copy] = []

    def run(name: str, argv: list[str], env: dict[str, str]) -> Copy:
        out = tmp_path / f"{name}.out"
        handle = open(out, "w")  # noqa: SIM115 (closed by Copy.stop)
        proc = network["client"].start(argv, tmp_path / f"{name}.log", stdout=handle,
                                       env={"PATH": os.environ["PATH"], **env})
        copies.append(Copy(name, proc, out, handle))
        return copies[-1]

    yield run
    for copy in copies:
        copy.stop()


def target(server: MariaDBServer) -> dict[str, Any]:
    return {"host": str(server.address), "port": server.port, **server.client_params()}


def test_missing_names_the_debian_package(monkeypatch: pytest.MonkeyPatch,
                                          tmp_path: Path) -> None:
    """Without its toolchain a stack says which package to install, and argv() refuses."""
    monkeypatch.setattr(native, "find_binary", lambda name: None)
    assert native.GO.missing() == (
        "go not found (needed to build load.stack='go-sql-driver')",
        "run 'make setup' (installs golang-go)")
    assert native.C.missing() == (
        "gcc not found (needed to build load.stack='c-libmariadb')",
        "run 'make setup' (installs gcc)")
    with pytest.raises(LabError, match="golang-go"):
        native.GO.argv(tmp_path)
    assert not list(tmp_path.iterdir())


@pytest.mark.root
def test_build_once_then_cached(tmp_path: Path) -> None:
    """The first argv() compiles; the second finds the binary keyed by the source."""
    for name, runner in native.RUNNERS.items():
        assert runner.missing() is None, runner.missing()
        assert runner.version()
        started = time.monotonic()
        first = runner.argv(tmp_path)
        built_s = time.monotonic() - started
        binary = Path(first[0])
        mtime = binary.stat().st_mtime_ns
        started = time.monotonic()
        assert runner.argv(tmp_path) == first
        cached_s = time.monotonic() - started
        assert binary.stat().st_mtime_ns == mtime
        assert not list(tmp_path.glob("*.tmp"))
        print(f"{name}: first build {built_s:.2f} s, cached {cached_s * 1000:.0f} ms")


REFUSALS = (  # (stack, a setting its library cannot take, what the one stderr line says)
    ("c-libmariadb", {"LAB_READ_TIMEOUT_MS": "1500"}, "whole seconds"),
    ("c-libmariadb", {"LAB_TCP_KEEPCNT": "x"}, "integer"),
    ("go-sql-driver", {"LAB_TCP_KEEPCNT": "x"}, "integer"),
)


@pytest.mark.root
def test_refuses_what_it_cannot_apply(built: dict[str, list[str]], network: Network) -> None:
    """Exit 64 and one line on stderr, before any connect (the settings refuse it first)."""
    for stack, env, refusal in REFUSALS:
        base = program_env(stack, {"host": "198.18.255.1", "port": 3306}, {}, LOAD, 0)
        done = network["client"].run(
            ["env", *(f"{k}={v}" for k, v in {**base, **env}.items()), *built[stack]],
            check=False, timeout=10)
        assert done.returncode == 64, (stack, env, done)
        assert len(done.stderr.splitlines()) == 1, (stack, done.stderr)
        assert refusal in done.stderr, (stack, done.stderr)


def settled(copy: Copy, blackholed_at: float) -> tuple[float, str, float, str]:
    """(first error - last OK, its text, the failed reconnect's duration, its text)."""
    seen = events(copy.out)
    last_ok = max(t for t, w, _ in seen if w == "OK" and t < blackholed_at + 0.1)
    errors = [(t, text) for t, w, text in seen if w == "ERR" and t > blackholed_at]
    (first_t, first), (second_t, second) = errors[0], errors[1]
    return first_t - last_ok, first, second_t - first_t, second


@pytest.mark.root
@pytest.mark.parametrize("stack", STACKS)
def test_blackhole_bounds_and_recovery(stack: str, built: dict[str, list[str]],
                                       network: Network, mariadb: MariaDBServer,
                                       start: Any) -> None:
    """Each bound ends the blackholed transaction on time; a reconnect under the blackhole
    fails at the SYN retries; after it lifts, every copy reconnects and commits again."""
    client = network["client"]
    client.sysctl_set("net.ipv4.tcp_retries2", RETRIES2)
    client.sysctl_set("net.ipv4.tcp_syn_retries", SYN_RETRIES)
    copies = [start(name, built[stack], program_env(stack, target(mariadb), keys, LOAD, i))
              for i, (name, (keys, _)) in enumerate(CASES.items())]
    wait_for(lambda: all(c.count("OK") >= 20 for c in copies), 15, "OK lines")
    check_sockopts(stack, copies, mariadb)
    with blackhole(network["db"]):
        blackholed_at = time.time()
        wait_for(lambda: all(c.count("ERR", blackholed_at) >= 2 for c in copies), 12,
                 "an error and a failed reconnect in every copy")
    lifted_at = time.time()
    wait_for(lambda: all(c.count("OK", lifted_at) >= 5 for c in copies), 8, "recovery")
    figures = {copy.name: settled(copy, blackholed_at) for copy in copies}
    for copy in copies:
        took, first, reconnect_s, second = figures[copy.name]
        back = min(t for t, w, _ in events(copy.out) if w == "OK" and t >= lifted_at)
        print(f"{stack}/{copy.name}: ERR {took:.2f} s after the last OK: {first!r}; "
              f"reconnect failed after {reconnect_s:.2f} s: {second!r}; "
              f"OK {back - lifted_at:.2f} s after the lift")
    for copy in copies:
        took, first, reconnect_s, second = figures[copy.name]
        assert abs(took - CASES[copy.name][1]) < TOLERANCE_S, (copy.name, took, first)
        due = reconnect_due(stack, copy.name)
        assert abs(reconnect_s - due) < TOLERANCE_S, (copy.name, reconnect_s, due, second)
        assert copy.stop() == 0


def check_sockopts(stack: str, copies: list[Copy], server: MariaDBServer) -> None:
    """Each copy's connection has the library's defaults and exactly the options it was
    asked for (read off the socket: the lab trusts no documentation for these)."""
    for copy in copies:
        pid = copy.proc.pid
        assert pid is not None, copy.proc.tail()
        sockets = tcp_sockets(pid, f"{server.address}:{server.port}")
        assert len(sockets) == 1, (copy.name, sockets)
        opts = foreign_sockopts(pid, sockets[0][0])
        print(f"{stack}/{copy.name} sockopts: {opts}")
        if not opts:
            continue  # no pidfd_getfd: nothing to check
        want = {"TCP_USER_TIMEOUT": 0,
                **(SET_SOCKOPTS.get(copy.name) or DEFAULT_SOCKOPTS[stack])}
        assert {k: opts[k] for k in want} == want, copy.name
