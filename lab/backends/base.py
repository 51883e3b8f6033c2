"""What the trial needs from a backend server, whatever its kind."""

from __future__ import annotations

import ipaddress
import os
import signal
from abc import ABC, abstractmethod

from lab.net.topology import Host


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
