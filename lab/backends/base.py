"""What the trial needs from a backend server, whatever its kind."""

from __future__ import annotations

import ipaddress
from abc import ABC, abstractmethod

from lab.topology import Host


class Backend(ABC):
    """A server process in one backend namespace, started healthy, stopped on close.

    `pid` is the server process itself (faults signal it: kill -9, SIGSTOP/SIGCONT).
    """

    kind: str = ""
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

    def client_params(self) -> dict[str, str]:
        """What a load driver needs besides host:port to use this server (credentials...)."""
        return {}

    def __enter__(self) -> Backend:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
