"""The zoo's python-pymysql client: PyMySQL as an application uses it (one connection, kept,
reconnected on error; lab/load/zoo/README.md is the contract).

PyMySQL's own options: connect_timeout (s, default 10), read_timeout and write_timeout (s,
floats, default none). PyMySQL turns SO_KEEPALIVE on by itself; the other socket options
have no parameter and are set on its socket (conn._sock) once connected.
"""

from __future__ import annotations

from importlib.metadata import version
from typing import Any

import pymysql
from zoo_client import Service, env_int, run, tune_socket


def options() -> dict[str, Any]:
    """PyMySQL's keyword arguments for the LAB_* keys that are set (absent: its default)."""
    kwargs: dict[str, Any] = {}
    for var, key in (("LAB_CONNECT_TIMEOUT_MS", "connect_timeout"),
                     ("LAB_READ_TIMEOUT_MS", "read_timeout"),
                     ("LAB_WRITE_TIMEOUT_MS", "write_timeout")):
        ms = env_int(var)
        if ms is not None:
            kwargs[key] = ms / 1000
    return kwargs


def main() -> None:
    kwargs = options()

    def connect(svc: Service) -> pymysql.connections.Connection:
        conn = pymysql.connect(host=svc.host, port=svc.port, user=svc.user,
                               password=svc.password, database=svc.database, **kwargs)
        tune_socket(conn._sock)
        return conn

    run("PyMySQL", version("PyMySQL"), connect)


if __name__ == "__main__":
    main()
