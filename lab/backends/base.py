"""What the trial needs from a backend server, whatever its kind, and the start-up and
shut-down steps that every kind shares (a health wait, the socket path check, the process
provider's one ChildProcess)."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Protocol

from lab.errors import LabError
from lab.net.process import UNIX_PATH_MAX, ChildProcess, wait_until
from lab.net.topology import Host


class Pollable(Protocol):
    """What a start-up wait watches: a ChildProcess, or a container's state."""

    @property
    def returncode(self) -> int | None: ...

    def alive(self) -> bool: ...


class NotReady(Exception):
    """A health probe got an answer, but not the healthy one (yet)."""


def wait_healthy(probe: Callable[[], bool], server: Pollable, timeout: float, *,
                 interval: float, exited: Callable[[], str],
                 silent: Callable[[BaseException | None], str],
                 errors: tuple[type[BaseException], ...] = ()) -> None:
    """Poll `probe` until it returns True; a server that exits first is reported at once.

    An exception of `errors` from the probe means "not yet" and is remembered. RuntimeError
    with `exited()` if the server died, with `silent(last error)` at the timeout.
    """
    last: BaseException | None = None

    def healthy() -> bool:
        nonlocal last
        try:
            return probe()
        except errors as exc:
            last = exc
            return False

    if wait_until(healthy, timeout, interval, alive=server.alive):
        return
    if not server.alive():
        raise RuntimeError(exited())
    raise RuntimeError(silent(last))


PRIVATE_DIR_MODE = 0o700  # a server's folder, the MariaDB template: root only


def private_dir(path: Path) -> None:
    """Create `path` (and parents) if needed and make it 0700: what a server keeps there (its
    unix socket, its data, its logs) is for root only, whatever the modes of the folders
    above (no local user may reach a lab server)."""
    path.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR_MODE)
    os.chmod(path, PRIVATE_DIR_MODE)  # mkdir's mode is masked, and an existing dir kept its own


def check_socket_path(path: Path) -> None:
    """A unix socket deeper than UNIX_PATH_MAX cannot be bound: say so before the server."""
    if len(str(path)) > UNIX_PATH_MAX:
        raise LabError(f"unix socket path too long ({len(str(path))} > {UNIX_PATH_MAX}): {path}",
                       "use a shorter scratch directory")


class Backend(ABC):
    """A server process in one backend namespace, started healthy, stopped on close.

    `pid` is the server process itself (faults signal it: kill -9, SIGSTOP/SIGCONT).
    Faults act through `kill()` and `hang()`, so a provider can map them onto its own parts
    (a container is paused, not SIGSTOPped); `stop()` undoes a hang.
    """

    kind: str = ""
    provider: str = "process"
    port: int = 0

    def __init__(self, host: Host, address: ipaddress.IPv4Address) -> None:
        self.host = host
        self.address = address
        self.timings: dict[str, float] = {}  # what start and stop took (benchmarks print it)

    @property
    def name(self) -> str:
        return self.host.name

    @property
    @abstractmethod
    def pid(self) -> int | None: ...

    @abstractmethod
    def start(self) -> None:
        """Start the server and return once it answers its health check."""

    @abstractmethod
    def stop(self) -> None:
        """Stop the server (idempotent; also after it was killed or stopped by a fault)."""

    def kill(self) -> str:
        """kill -9 of the server process: its kernel closes every socket (RST / FIN)."""
        pid = self._require_pid("kill")
        os.kill(pid, signal.SIGKILL)
        return f"kill -9 {pid} ({self.kind} on {self.name}): its kernel resets"

    def hang(self) -> str:
        """Freeze the server: its kernel still ACKs, the server never answers."""
        pid = self._require_pid("stop")
        os.kill(pid, signal.SIGSTOP)
        return f"SIGSTOP {pid}: its kernel still ACKs, the server never answers"

    def _use_dir(self, folder: str, socket_name: str) -> None:
        """The server's folder in the host's scratch dir, with its unix socket and error log
        (setup and health checks go over the socket, never over TCP from the host)."""
        self.dir = self.host.workdir / folder
        self.socket_path = self.dir / socket_name
        self.error_log = self.dir / "error.log"

    def _refuse_if_running(self, what: str) -> None:
        if self.pid is not None:
            raise RuntimeError(f"{self.name}: {what} already running (pid {self.pid})")

    @contextlib.contextmanager
    def _stopped_on_failure(self) -> Iterator[None]:
        """A start that fails (or is interrupted) after launching leaves nothing running."""
        try:
            yield
        except BaseException:
            self.stop()
            raise

    def _require_pid(self, what: str) -> int:
        pid = self.pid
        if pid is None:
            raise RuntimeError(f"{self.name} has no server process to {what}")
        return pid

    def client_params(self) -> dict[str, str]:
        """What a load driver needs besides host:port to use this server (credentials...)."""
        return {}

    def __enter__(self) -> Backend:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ProcessBackend(Backend):
    """Provider "process": the server is one program started in the host's namespace."""

    stop_timeout_s: float = 5.0

    def __init__(self, host: Host, address: ipaddress.IPv4Address) -> None:
        super().__init__(host, address)
        self._server: ChildProcess | None = None

    @property
    def pid(self) -> int | None:
        """The server's pid, None once it has exited."""
        return self._server.pid if self._server is not None else None

    def _launch(self, argv: Sequence[str], log_path: Path) -> ChildProcess:
        self._server = self.host.start(argv, log_path)
        return self._server

    def stop(self) -> None:
        """SIGCONT (a fault may have stopped it), SIGTERM, SIGKILL if it is stuck."""
        if self._server is not None:
            t0 = time.monotonic()
            self._server.stop(self.stop_timeout_s)
            self._server = None
            self.timings["stop_s"] = time.monotonic() - t0
