"""The zoo's python-mysqlclient client: mysqlclient (MySQLdb over libmariadb) as an
application uses it (one connection, kept, reconnected on error; lab/load/zoo/README.md).

mysqlclient's own options are libmariadb's, in whole seconds: connect_timeout
(MYSQL_OPT_CONNECT_TIMEOUT, default none: only the kernel's SYN retries end a connect),
read_timeout and write_timeout (MYSQL_OPT_READ/WRITE_TIMEOUT, default none). The socket
options have no parameter and are set on its socket (conn.fileno()) once connected.
"""

from __future__ import annotations

import os
import socket
from importlib.metadata import version
from typing import Any

import MySQLdb
from zoo_client import Service, run, tune_socket, whole_seconds


def options() -> dict[str, Any]:
    """mysqlclient's keyword arguments for the LAB_* keys that are set (absent: default)."""
    kwargs: dict[str, Any] = {}
    for var, key in (("LAB_CONNECT_TIMEOUT_MS", "connect_timeout"),
                     ("LAB_READ_TIMEOUT_MS", "read_timeout"),
                     ("LAB_WRITE_TIMEOUT_MS", "write_timeout")):
        seconds = whole_seconds(var, f"mysqlclient's {key}")
        if seconds is not None:
            kwargs[key] = seconds
    return kwargs


def main() -> None:
    kwargs = options()

    def connect(svc: Service) -> Any:
        conn = MySQLdb.connect(host=svc.host, port=svc.port, user=svc.user,
                               password=svc.password, database=svc.database, **kwargs)
        # a second descriptor of libmariadb's socket: the options land on the same socket
        with socket.socket(fileno=os.dup(conn.fileno())) as sock:
            tune_socket(sock)
        return conn

    run("mysqlclient", version("mysqlclient"), connect)


if __name__ == "__main__":
    main()
