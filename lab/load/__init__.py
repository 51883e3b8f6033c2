"""Load drivers: real clients in the client namespace that record per-second samples."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class DriverConfig:
    """What DriverProcess starts: the driver's module (`python -m`) and its CONFIG_JSON,
    {"target": {host, port, and the backend's client params}, "client", "load"}, which holds
    the backend's password and so travels in the driver's environment, never in argv."""

    module: str
    config: dict[str, Any]


def driver_config(
    driver: str, host: str, port: int, target_params: Mapping[str, str],
    client: Mapping[str, Any], load: Mapping[str, Any],
) -> DriverConfig:
    """The config of driver `driver` (oltp, http, sysbench, command, zoo) for the service at
    host:port; target_params are what the backend says a client needs (credentials, path)."""
    return DriverConfig(f"lab.load.{driver}", {
        "target": {"host": host, "port": port, **target_params},
        "client": dict(client),
        "load": dict(load),
    })
