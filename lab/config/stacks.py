"""The client stacks of the zoo (`load.driver = "zoo"`): what each library calls the lab's
client keys, what it does when a key is unset, and which keys it cannot apply at all.

This is configuration knowledge, not code that runs a client: the settings read it to refuse a
key a library cannot apply (before anything is built), the model to know the library's own
connect timeout, and `lab keys` to say which option a key becomes. The programs that run each
stack, and how they are built and found, are lab.load.zoo.

Every value here was read off the library (its documentation, its source, or getsockopt on its
sockets in a lab trial); the README's zoo table lists the versions they were measured with.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# the client keys a stack maps onto its library (sysctls apply to every stack: they are the
# client namespace's, not the library's)
LIBRARY_KEYS = (
    "connect_timeout_s", "read_timeout_s", "write_timeout_s", "tcp_user_timeout_ms",
    "so_keepalive", "tcp_keepidle", "tcp_keepintvl", "tcp_keepcnt",
)


@dataclass(frozen=True)
class StackFacts:
    """One stack: its language and library, its options, its defaults."""

    name: str
    language: str
    library: str
    # client key -> the library's own option it becomes ("socketTimeout (ms)")
    options: dict[str, str]
    # client key -> why the library cannot apply it (refused before the trial runs)
    cannot: dict[str, str] = field(default_factory=dict)
    # the library's connect timeout when client.connect_timeout_s is unset (None: it has none,
    # and only the kernel's SYN retries end a connect to a dead address)
    connect_timeout_s: float | None = None
    # keys whose library option takes whole seconds only (a fraction is refused, not rounded)
    whole_seconds: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        both = set(self.options) & set(self.cannot)
        missing = set(LIBRARY_KEYS) - set(self.options) - set(self.cannot)
        if both or missing:
            raise ValueError(f"stack {self.name}: every key is either an option or cannot "
                             f"(both: {sorted(both)}, neither: {sorted(missing)})")


_JDK_UTO = ("the JDK cannot set TCP_USER_TIMEOUT (jdk.net.ExtendedSocketOptions has no such "
            "option); use client.read_timeout_s (socketTimeout) or the client.tcp_retries2 "
            "sysctl")
_NODE_KEEP = ("Node's net.Socket cannot set {}; with keepAliveInitialDelay set, Node 20 (libuv "
              "1.46) forces a {}")
_CONNECTORJ_OPTIONS = {
    "connect_timeout_s": "connectTimeout (ms; bounds the TCP connect only)",
    "read_timeout_s": "socketTimeout (ms)",
    "so_keepalive": "tcpKeepAlive (default on)",
}
_CONNECTORJ_KEEP = ("Connector/J 2.7.6 has no {} option (only later versions have one); the "
                    "client namespace's net.ipv4.{} applies")
_CONNECTORJ_CANNOT = {
    "write_timeout_s": "Connector/J has no write timeout (socketTimeout bounds reads only)",
    "tcp_user_timeout_ms": _JDK_UTO,
    "tcp_keepidle": _CONNECTORJ_KEEP.format("tcpKeepIdle", "tcp_keepalive_time"),
    "tcp_keepintvl": _CONNECTORJ_KEEP.format("tcpKeepInterval", "tcp_keepalive_intvl"),
    "tcp_keepcnt": _CONNECTORJ_KEEP.format("tcpKeepCount", "tcp_keepalive_probes"),
}
_HIKARI_OPTIONS = {
    **_CONNECTORJ_OPTIONS,
    "connect_timeout_s": "connectTimeout (ms, a data source property; the pool's "
                         "connectionTimeout, 30 s, still bounds getConnection)",
    "read_timeout_s": "socketTimeout (ms, a data source property)",
}
_SOCKET_AFTER_CONNECT = "setsockopt on the connection's socket after connect"
# the socket keys of a library that hands out its socket (set after connect, by the program)
_SOCKET_OPTIONS = {
    key: f"{option}, {_SOCKET_AFTER_CONNECT}" for key, option in (
        ("tcp_user_timeout_ms", "TCP_USER_TIMEOUT"), ("so_keepalive", "SO_KEEPALIVE"),
        ("tcp_keepidle", "TCP_KEEPIDLE"), ("tcp_keepintvl", "TCP_KEEPINTVL"),
        ("tcp_keepcnt", "TCP_KEEPCNT"))
}
# libmariadb's MYSQL_OPT_*_TIMEOUT are unsigned ints of seconds (and exact: not tripled as in
# MySQL's libmysqlclient; measured 2.01 s for 2)
_LIBMARIADB_TIMEOUTS = ("connect_timeout_s", "read_timeout_s", "write_timeout_s")

STACKS: dict[str, StackFacts] = {s.name: s for s in (
    StackFacts(
        "java-connectorj", "Java", "MariaDB Connector/J", _CONNECTORJ_OPTIONS,
        _CONNECTORJ_CANNOT, connect_timeout_s=30.0),
    StackFacts(
        "java-hikaricp", "Java", "HikariCP (a pool of 1) over MariaDB Connector/J",
        _HIKARI_OPTIONS, _CONNECTORJ_CANNOT, connect_timeout_s=30.0),
    StackFacts(
        "go-sql-driver", "Go", "go-sql-driver/mysql", {
            "connect_timeout_s": "timeout (DSN)",
            "read_timeout_s": "readTimeout (DSN)",
            "write_timeout_s": "writeTimeout (DSN)",
            "tcp_user_timeout_ms": "a DialContext that sets TCP_USER_TIMEOUT before connect",
            # the driver turns SO_KEEPALIVE on for every *net.TCPConn it dials (1.5.0,
            # connector.go): off needs a DialContext that returns the conn wrapped
            "so_keepalive": "a DialContext with net.Dialer KeepAlive < 0, its conn wrapped",
            "tcp_keepidle": "net.Dialer KeepAlive (s; Go 1.19 sets TCP_KEEPINTVL to it too)",
            "tcp_keepintvl": f"TCP_KEEPINTVL, {_SOCKET_AFTER_CONNECT}",
            "tcp_keepcnt": f"TCP_KEEPCNT, {_SOCKET_AFTER_CONNECT}",
        }, connect_timeout_s=None),
    StackFacts(
        "node-mysql2", "Node.js", "mysql2", {
            "connect_timeout_s": "connectTimeout (ms)",
            "read_timeout_s": "the query's timeout (ms, a timer from the query's start)",
            "so_keepalive": "enableKeepAlive (default on)",
            "tcp_keepidle": "keepAliveInitialDelay (ms; Node 20 then forces a 1 s interval "
                            "and 10 probes)",
        }, {
            "write_timeout_s": "mysql2 has no write timeout",
            "tcp_user_timeout_ms": "Node's net.Socket cannot set TCP_USER_TIMEOUT",
            "tcp_keepintvl": _NODE_KEEP.format("TCP_KEEPINTVL", "1 s interval"),
            "tcp_keepcnt": _NODE_KEEP.format("TCP_KEEPCNT", "10 probes"),
        }, connect_timeout_s=10.0),
    StackFacts(
        "php-mysqli", "PHP", "mysqli (mysqlnd)", {
            "connect_timeout_s": "MYSQLI_OPT_CONNECT_TIMEOUT (s)",
            "read_timeout_s": "MYSQLI_OPT_READ_TIMEOUT (s; unset: mysqlnd.net_read_timeout, "
                              "86400 s)",
        }, {
            "write_timeout_s": "mysqli has no write timeout option",
            "tcp_user_timeout_ms": "mysqli gives no access to its socket",
            "so_keepalive": "mysqlnd always turns SO_KEEPALIVE on, and mysqli gives no access "
                            "to its socket; the namespace's tcp_keepalive_* sysctls apply",
            "tcp_keepidle": "mysqli gives no access to its socket",
            "tcp_keepintvl": "mysqli gives no access to its socket",
            "tcp_keepcnt": "mysqli gives no access to its socket",
        }, connect_timeout_s=60.0,  # default_socket_timeout (mysqlnd passes none)
        whole_seconds=("connect_timeout_s", "read_timeout_s")),
    StackFacts(
        "c-libmariadb", "C", "MariaDB Connector/C (libmariadb)", {
            "connect_timeout_s": "MYSQL_OPT_CONNECT_TIMEOUT (s)",
            "read_timeout_s": "MYSQL_OPT_READ_TIMEOUT (s)",
            "write_timeout_s": "MYSQL_OPT_WRITE_TIMEOUT (s)",
            **_SOCKET_OPTIONS,
        }, connect_timeout_s=None, whole_seconds=_LIBMARIADB_TIMEOUTS),
    StackFacts(
        "python-mysqlclient", "Python", "mysqlclient (libmariadb)", {
            "connect_timeout_s": "connect_timeout (s)",
            "read_timeout_s": "read_timeout (s)",
            "write_timeout_s": "write_timeout (s)",
            **_SOCKET_OPTIONS,
        }, connect_timeout_s=None, whole_seconds=_LIBMARIADB_TIMEOUTS),
    StackFacts(
        "python-pymysql", "Python", "PyMySQL", {
            "connect_timeout_s": "connect_timeout (s)",
            "read_timeout_s": "read_timeout (s)",
            "write_timeout_s": "write_timeout (s)",
            **_SOCKET_OPTIONS,
        }, connect_timeout_s=10.0),
)}
STACK_NAMES = tuple(STACKS)


def refused(stack: str, set_keys: dict[str, object]) -> str | None:
    """Why `stack` cannot run with these client keys set (the first one), or None."""
    facts = STACKS[stack]
    for key in LIBRARY_KEYS:
        value = set_keys.get(key)
        if value is not None and key in facts.cannot:
            return f"load.stack={stack!r} cannot apply client.{key}: {facts.cannot[key]}"
        if isinstance(value, float) and key in facts.whole_seconds and not value.is_integer():
            return (f"load.stack={stack!r} takes client.{key} in whole seconds only "
                    f"({facts.options[key]}); write {max(1, round(value))}")
    return None


def stack_options() -> list[dict[str, object]]:
    """One row per stack: each library key's option, or why it cannot ("cannot: ..."), and
    the library's own connect timeout (`lab keys --stacks`)."""
    rows: list[dict[str, object]] = []
    for facts in STACKS.values():
        keys = {k: facts.options.get(k) or f"cannot: {facts.cannot[k]}" for k in LIBRARY_KEYS}
        rows.append({"stack": facts.name, "language": facts.language,
                     "library": facts.library, "default_connect_timeout_s":
                     facts.connect_timeout_s, "keys": keys})
    return rows
