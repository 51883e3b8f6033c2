"""Backends: real servers (MariaDB, NGINX) inside backend namespaces, as host processes
(provider "process") or in containers wired into the same namespaces (provider "docker")."""

from __future__ import annotations

import ipaddress

from lab.backends.base import Backend
from lab.backends.docker.container import DockerMariaDB, DockerNginx
from lab.backends.mariadb import MariaDBServer
from lab.backends.nginx import NginxServer
from lab.config.settings import TrialSettings
from lab.net.topology import Host

__all__ = ["Backend", "make"]


def make(settings: TrialSettings, host: Host, address: ipaddress.IPv4Address) -> Backend:
    """The backend server a trial asks for, in `host`, listening on `address`."""
    if settings.provider == "docker":
        if settings.backend == "mariadb":
            return DockerMariaDB(host, address, image=settings.images.mariadb,
                                 tables=settings.load.tables, table_size=settings.load.table_size)
        return DockerNginx(host, address, image=settings.images.nginx)
    if settings.backend == "mariadb":
        return MariaDBServer(
            host, address, tables=settings.load.tables, table_size=settings.load.table_size
        )
    if settings.backend == "nginx":
        return NginxServer(host, address)
    raise ValueError(f"unknown backend {settings.backend!r}")
