"""The Java stacks of the zoo (issue 14): Connector/J 2.7.6 alone and behind HikariCP 2.7.9.

The programs are built once into a module cache and run in the client namespace against a
real MariaDB on `db`; the figures they are checked against (socketTimeout, the kernel's
tcp_retries2 limit, connectTimeout, the pool's connectionTimeout) are the ones
lab.config.stacks and the README's zoo table state.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lab.backends.mariadb import MariaDBServer
from lab.load.foreign import foreign_sockopts
from lab.load.zoo import program_env
from lab.load.zoo.jvm import RUNNERS, JvmRunner
from lab.model.kernel import rto_abort_time
from lab.net.process import SBIN_PATH, ChildProcess
from lab.net.topology import Network
from tests.load.conftest import blackhole

STACKS = sorted(RUNNERS)
LINE = re.compile(r"^(\d{13}) (VERSION|CONNECTED|OK|ERR)(?: (.*))?$")
no_jdk = pytest.mark.skipif(any(RUNNERS[s].missing() for s in STACKS),
                            reason="needs the JDK and the Debian jars ('make setup')")


def runner(stack: str) -> JvmRunner:
    found = RUNNERS[stack]
    assert isinstance(found, JvmRunner)
    return found


# --- finding and building, without a network -------------------------------------------------


def test_missing_names_the_debian_package(tmp_path: Path) -> None:
    hikari = dataclasses.replace(runner("java-hikaricp"), java_dir=tmp_path)
    problem = hikari.missing()
    assert problem is not None and "HikariCP.jar" in problem[0]
    assert "libhikaricp-java" in problem[1] and hikari.version() is None
    (tmp_path / "HikariCP.jar").write_text("not a jar")
    problem = hikari.missing()
    assert problem is not None and "mariadb-java-client.jar" in problem[0]
    assert "libmariadb-java" in problem[1]
    no_java = dataclasses.replace(runner("java-connectorj"), path=str(tmp_path))
    problem = no_java.missing()
    assert problem is not None and problem[0].startswith("java not found")
    assert "default-jdk-headless" in problem[1]


@no_jdk
def test_versions_come_from_the_jars() -> None:
    assert runner("java-connectorj").version() == "2.7.6"
    assert runner("java-hikaricp").version() == "2.7.9 (mariadb-java-client 2.7.6)"


@no_jdk
def test_built_once_keyed_by_the_sources(tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    cj = runner("java-connectorj")
    argv = cj.argv(tmp_path)
    (built,) = tmp_path.iterdir()  # no temporary left
    stamp = (built / "Zoo.class").stat().st_mtime_ns
    assert cj.argv(tmp_path) == argv and (built / "Zoo.class").stat().st_mtime_ns == stamp
    assert argv[-1] == "Zoo" and str(built) in argv[argv.index("-cp") + 1]
    src = tmp_path / "src"
    shutil.copytree(Path(__file__).parents[3] / "lab/load/zoo/java", src)
    with (src / "Zoo.java").open("a") as f:
        f.write("// changed\n")
    monkeypatch.setattr("lab.load.zoo.jvm.JAVA_SRC", src)
    assert cj.argv(tmp_path) != argv  # a new source is a new build


@no_jdk
def test_refuses_what_connectorj_cannot_apply(jvm_argv: dict[str, list[str]]) -> None:
    for stack in STACKS:  # exits before it connects anywhere
        proc = subprocess.run(jvm_argv[stack], env={"PATH": SBIN_PATH, "LAB_TCP_KEEPIDLE": "5"},
                              capture_output=True, text=True, timeout=30)
        assert proc.returncode == 64 and proc.stdout == ""
        assert proc.stderr.strip().splitlines() == [
            "LAB_TCP_KEEPIDLE is set but Connector/J 2.7.6 has no tcpKeepIdle option"]


# --- real runs in the client namespace -------------------------------------------------------


@pytest.fixture(scope="module")
def jvm_argv(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    cache = tmp_path_factory.mktemp("zoo-cache")
    return {stack: RUNNERS[stack].argv(cache) for stack in STACKS}


class Program:
    """One zoo program in the client namespace, its stdout lines read back from its log."""

    def __init__(self, network: Network, server: MariaDBServer, argv: list[str], stack: str,
                 log: Path, pause_ms: int | None = None, **client: object) -> None:
        target = {"host": str(server.address), "port": server.port, **server.client_params()}
        env = program_env(stack, target, client, {"tables": 4, "table_size": 1000}, 0)
        if pause_ms is not None:
            env["LAB_PAUSE_MS"] = str(pause_ms)
        self.peer = f"{server.address}:{server.port}"
        self.started_ms = time.time() * 1000
        self.child: ChildProcess = network["client"].start(argv, log,
                                                           env={"PATH": SBIN_PATH, **env})

    def lines(self) -> list[tuple[int, str, str]]:
        found = []
        for text in self.child.log_path.read_text(errors="replace").splitlines():
            m = LINE.match(text)
            if m:
                found.append((int(m[1]), m[2], m[3] or ""))
        return found

    def wait(self, check: Callable[[list[tuple[int, str, str]]], object],
             timeout: float) -> list[tuple[int, str, str]]:
        """The lines once `check` holds on them (the log's tail in the failure otherwise)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.lines()
            if check(found):
                return found
            assert self.child.alive(), self.child.tail()
            time.sleep(0.02)
        raise AssertionError(f"timed out after {timeout} s:\n{self.child.tail(30)}")

    def socket_options(self, network: Network) -> dict[str, int]:
        """The options of the program's socket to the server (the JVM's sockets are AF_INET6,
        v4-mapped: /proc/net/tcp does not list them, ss does)."""
        out = network["client"].run(["ss", "-Htnp", "state", "established", "dst",
                                     self.peer.split(":")[0]]).stdout
        fds = [int(m) for m in re.findall(rf"pid={self.child.pid},fd=(\d+)", out)]
        assert len(fds) == 1 and self.child.pid is not None, out
        return foreign_sockopts(self.child.pid, fds[0])

    def count(self, kind: str, after_ms: float = 0) -> int:
        return sum(1 for t, k, _ in self.lines() if k == kind and t > after_ms)


def oks_after(after_ms: float, n: int = 1) -> Callable[[list[tuple[int, str, str]]], bool]:
    return lambda lines: sum(1 for t, k, _ in lines if k == "OK" and t > after_ms) >= n


def errs_after(after_ms: float, n: int = 1) -> Callable[[list[tuple[int, str, str]]], bool]:
    return lambda lines: sum(1 for t, k, _ in lines if k == "ERR" and t > after_ms) >= n


def last(lines: list[tuple[int, str, str]], kind: str, before_ms: float) -> int:
    return max(t for t, k, _ in lines if k == kind and t < before_ms)


def first(lines: list[tuple[int, str, str]], kind: str, after_ms: float) -> tuple[int, str]:
    return min((t, text) for t, k, text in lines if k == kind and t > after_ms)


@pytest.fixture
def program(network: Network, mariadb: MariaDBServer, jvm_argv: dict[str, list[str]],
            tmp_path: Path) -> Iterator[Callable[..., Program]]:
    """Start a stack's program with some client keys set; stopped (exit 0) afterwards."""
    started: list[Program] = []

    def start(stack: str, pause_ms: int | None = None, **client: object) -> Program:
        p = Program(network, mariadb, jvm_argv[stack], stack, tmp_path / f"{stack}.log",
                    pause_ms, **client)
        started.append(p)
        return p

    yield start
    for p in started:
        assert p.child.stop() == 0, p.child.tail()


def print_figure(stack: str, what: str, seconds: float, text: str = "") -> None:
    print(f"\n[{stack}] {what}: {seconds:.3f} s {text}")


@pytest.mark.root
@no_jdk
@pytest.mark.parametrize("stack", STACKS)
def test_read_timeout_then_reconnect(stack: str, network: Network,
                                     program: Callable[..., Program]) -> None:
    """socketTimeout 2 s ends a query to a blackholed server ~2 s after the last OK; the
    program reconnects (connectTimeout 1 s while it lasts) and runs again once it lifts."""
    p = program(stack, read_timeout_s=2.0, connect_timeout_s=1.0)
    lines = p.wait(oks_after(0, 5), 15)
    kinds = [k for _, k, _ in lines]
    assert kinds[:2] == ["VERSION", "CONNECTED"] and "ERR" not in kinds
    print_figure(stack, "start-up to the first OK", (first(lines, "OK", 0)[0] - p.started_ms)
                 / 1000)
    assert p.socket_options(network).get("SO_KEEPALIVE") == 1  # tcpKeepAlive's default
    with blackhole(network["db"]):
        on_ms = time.time() * 1000
        lines = p.wait(errs_after(on_ms), 10)
        err_ms, text = first(lines, "ERR", on_ms)
        gap = (err_ms - last(lines, "OK", err_ms)) / 1000
        print_figure(stack, "last OK to ERR (socketTimeout 2000)", gap, text)
        assert 1.9 <= gap <= 2.8, text
        assert "Read timed out" in text or "timed out" in text.lower(), text
        if stack == "java-connectorj":  # a connect attempt per connectTimeout
            lines = p.wait(errs_after(err_ms, 3), 10)
            connects = [t for t, k, _ in lines if k == "ERR" and t > err_ms][:3]
            spacing = (connects[-1] - connects[0]) / 2000
            print_figure(stack, "connect attempt while blackholed (connectTimeout 1000)",
                         spacing, first(lines, "ERR", err_ms)[1])
            assert 0.95 <= spacing <= 1.5
        else:
            time.sleep(3)
    off_ms = time.time() * 1000
    lines = p.wait(oks_after(off_ms, 3), 15)
    print_figure(stack, "blackhole lifted to OK", (first(lines, "OK", off_ms)[0] - off_ms)
                 / 1000)
    assert p.count("CONNECTED") == 2


@pytest.mark.root
@no_jdk
@pytest.mark.parametrize("stack", STACKS)
def test_so_keepalive_off_is_tcpkeepalive_false(stack: str, network: Network,
                                                program: Callable[..., Program]) -> None:
    p = program(stack, so_keepalive=False)
    p.wait(oks_after(0), 15)
    assert p.socket_options(network)["SO_KEEPALIVE"] == 0


@pytest.mark.root
@no_jdk
@pytest.mark.parametrize("stack", STACKS)
def test_defaults_end_at_the_kernels_limit(stack: str, network: Network,
                                           program: Callable[..., Program]) -> None:
    """Without socketTimeout only the kernel ends a query: tcp_retries2=3 is its 3.0 s budget
    counted from the first RTO and checked when the timer fires (~6.7 s: lab.model.kernel);
    the reconnect's connect (connectTimeout 30 s) then waits out a short outage."""
    network["client"].run(["sysctl", "-w", "net.ipv4.tcp_retries2=3"])
    p = program(stack)
    p.wait(oks_after(0, 5), 15)
    with blackhole(network["db"]):
        on_ms = time.time() * 1000
        lines = p.wait(errs_after(on_ms), 15)
        err_ms, text = first(lines, "ERR", on_ms)
        gap = (err_ms - last(lines, "OK", err_ms)) / 1000
        print_figure(stack, "last OK to ERR (tcp_retries2=3)", gap, text)
        assert abs(gap - rto_abort_time(3)) <= 0.5, text
        time.sleep(0.3)
    off_ms = time.time() * 1000
    lines = p.wait(oks_after(off_ms, 3), 10)
    print_figure(stack, "blackhole lifted to OK (SYN retransmission)",
                 (first(lines, "OK", off_ms)[0] - off_ms) / 1000)
    assert p.count("ERR", err_ms) == 0  # the reconnect's connect waited, it did not fail


@pytest.mark.root
@pytest.mark.slow
@no_jdk
@pytest.mark.parametrize("stack", STACKS)
def test_default_connect_timeout_while_blackholed(stack: str, network: Network,
                                                  program: Callable[..., Program]) -> None:
    """How long the application waits for a reconnect to a server that is still gone: the
    driver's connectTimeout (30 s, Connector/J), the pool's connectionTimeout (30 s, HikariCP)."""
    p = program(stack, read_timeout_s=2.0)
    p.wait(oks_after(0, 5), 15)
    with blackhole(network["db"]):
        on_ms = time.time() * 1000
        err_ms = first(p.wait(errs_after(on_ms), 10), "ERR", on_ms)[0]
        lines = p.wait(errs_after(err_ms), 45)
        next_ms, text = first(lines, "ERR", err_ms)
        print_figure(stack, "reconnect attempt while blackholed", (next_ms - err_ms) / 1000, text)
        assert 29.5 <= (next_ms - err_ms) / 1000 <= 32.5, text
    off_ms = time.time() * 1000
    p.wait(oks_after(off_ms), 15)


@pytest.mark.root
@pytest.mark.slow
@no_jdk
def test_hikari_validation_of_an_idle_connection(network: Network,
                                                 program: Callable[..., Program]) -> None:
    """A connection idle for more than 500 ms (aliveBypassWindowMs) is validated at checkout
    (isValid, validationTimeout 5 s): the dead one is evicted inside getConnection, which then
    waits for a new one until connectionTimeout (30 s), so the application's error is at 30 s."""
    p = program("java-hikaricp", pause_ms=1000)
    p.wait(oks_after(0, 2), 15)
    with blackhole(network["db"]):
        on_ms = time.time() * 1000
        lines = p.wait(errs_after(on_ms), 45)
        err_ms, text = first(lines, "ERR", on_ms)
        gap = (err_ms - last(lines, "OK", err_ms)) / 1000
        print_figure("java-hikaricp", "idle (pause 1 s): last OK to ERR", gap, text)
        assert 30.5 <= gap <= 33.5 and "Connection is not available" in text, text
    off_ms = time.time() * 1000
    p.wait(oks_after(off_ms), 15)
