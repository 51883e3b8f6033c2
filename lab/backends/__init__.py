"""Backends: real server processes (MariaDB, NGINX) inside backend namespaces."""

from __future__ import annotations

import ipaddress

from lab.backends.base import Backend
from lab.backends.mariadb import MariaDBServer
from lab.backends.nginx import NginxServer
from lab.settings import TrialSettings
from lab.topology import Host

__all__ = ["Backend", "make"]


def make(settings: TrialSettings, host: Host, address: ipaddress.IPv4Address) -> Backend:
    """The backend server a trial asks for, in `host`, listening on `address`."""
    if settings.backend == "mariadb":
        return MariaDBServer(
            host, address, tables=settings.load.tables, table_size=settings.load.table_size
        )
    if settings.backend == "nginx":
        return NginxServer(host, address)
    raise ValueError(f"unknown backend {settings.backend!r}")
