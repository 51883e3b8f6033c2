"""Backends: real servers (MariaDB, NGINX) inside backend namespaces, as host processes
(provider "process") or in containers wired into the same namespaces (provider "docker")."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Literal

from lab.backends.base import Backend
from lab.backends.mariadb import MariaDBServer
from lab.backends.nginx import NginxServer
from lab.net.topology import Host

__all__ = ["Backend", "BackendOptions", "make"]


@dataclass(frozen=True)
class BackendOptions:
    """Which server a trial runs and how (lab.experiment.options maps the settings onto it).

    `image` is the docker image of that kind ("auto": the lab's, else the official one);
    `tables` x `table_size` rows are what MariaDB is seeded with (nginx ignores both)."""

    kind: Literal["mariadb", "nginx"] = "mariadb"
    provider: Literal["process", "docker"] = "process"
    image: str = "auto"
    tables: int = 4
    table_size: int = 1000


def make(options: BackendOptions, host: Host, address: ipaddress.IPv4Address) -> Backend:
    """The backend server `options` asks for, in `host`, listening on `address`."""
    if options.provider == "docker":
        # the docker SDK is an optional extra: imported only by a trial that uses it
        from lab.backends.docker.container import DockerMariaDB, DockerNginx
        if options.kind == "mariadb":
            return DockerMariaDB(host, address, image=options.image, tables=options.tables,
                                 table_size=options.table_size)
        return DockerNginx(host, address, image=options.image)
    if options.kind == "mariadb":
        return MariaDBServer(host, address, tables=options.tables, table_size=options.table_size)
    if options.kind == "nginx":
        return NginxServer(host, address)
    raise ValueError(f"unknown backend {options.kind!r}")
