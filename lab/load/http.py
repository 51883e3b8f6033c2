"""The `http` driver: HTTP/1.1 keep-alive requests on long-lived connections.

    BHL_DRIVER_CONFIG=CONFIG_JSON python -m lab.load.http
                                             (started by DriverProcess in the client namespace)

What a pooled HTTP client (urllib3, requests, a Java/Go pool) does against the article's
LVS + NGINX: each of `load.threads` threads owns one persistent HTTP/1.1 connection and sends
GET requests on it in a loop (busy: back to back, or `load.rate` a second on a schedule;
idle: `load.idle_s` apart). When the connection fails (timeout, reset, EOF, a malformed
answer) the thread drops it, reports one `error` event and opens a new one, retrying every
RECONNECT_PAUSE_S, then reports `reconnect`.
A non-2xx answer is counted as an error but the connection is kept (the server still talks).

The worker threads, the per-second accounting, the fault mark and the stdin/stdout protocol
are lab.load.runtime's, as for oltp, so both drivers behave the same around the requests:
same `ready`/`sample`/`event` records, same `connected` event with the socket options read
back from the kernel, same recovery rule. Counting: one request = one
transaction = one query = one read (tps = qps = reads, writes = other = 0).

Socket options and timeouts are applied exactly as oltp does: `connect_timeout_s` bounds the
TCP connect; right after connect, the runtime's `apply_sockopts` sets TCP_USER_TIMEOUT and the
keepalive options; `write_timeout_s` / `read_timeout_s` become the socket timeout before each
send / each response read (None: block, like urllib3's default). Unlike PyMySQL, http.client
leaves SO_KEEPALIVE off (urllib3's default socket options are just TCP_NODELAY), so
`so_keepalive=None` means no keepalive here.
"""

from __future__ import annotations

import http.client
import sys

from lab.load import runtime
from lab.load.oltp import OltpConfig, Target


class HttpTarget(Target):
    """host:port plus the request path; the inherited MySQL credentials are ignored."""

    port: int = 80
    path: str = "/"


class HttpConfig(OltpConfig):
    """The driver's CONFIG_JSON: the same shape as oltp's (target, client, load)."""

    target: HttpTarget


class _Connection(http.client.HTTPConnection):
    """http.client's connection, but the connect timeout covers only the connect: afterwards
    the socket blocks unless read/write timeouts are configured (set per operation)."""

    def connect(self) -> None:
        super().connect()  # create_connection(timeout=connect_timeout_s), TCP_NODELAY
        assert self.sock is not None
        self.sock.settimeout(None)


def error_detail(exc: BaseException) -> str:
    """'TimeoutError: [Errno 110] Connection timed out', 'ConnectionResetError: [Errno 104]
    Connection reset by peer', 'RemoteDisconnected: Remote end closed connection ...'."""
    text = str(exc) or repr(exc)
    return f"{type(exc).__name__}: {text}"


class HttpError(Exception):
    """A complete answer that is not 2xx (the connection itself is fine)."""


class HttpWorker(runtime.Worker[_Connection]):
    """One client thread: one keep-alive connection, requests in a loop."""

    CONNECT_ERRORS = (OSError,)
    program = "http"

    def __init__(self, index: int, cfg: HttpConfig, clock: runtime.Clock, fault: runtime.FaultMark,
                 ready: runtime.Queue) -> None:
        super().__init__(index, cfg, clock, fault, ready)
        self.http_cfg = cfg
        self.last_body = ""

    # connections
    def _open(self) -> None:
        t, c = self.http_cfg.target, self.cfg.client
        conn = _Connection(t.host, t.port, timeout=c.connect_timeout_s)
        try:
            conn.connect()
            assert conn.sock is not None
            report = runtime.SocketReport.configure(conn.sock, c)
        except OSError:
            conn.close()
            raise
        runtime.emit_connected(self.index, report.local, report.peer, report.sockopts)
        self.conn = conn

    _error_detail = staticmethod(error_detail)

    # one request
    def _request(self) -> str:
        conn = self.conn
        assert conn is not None and conn.sock is not None
        c = self.cfg.client
        conn.sock.settimeout(c.write_timeout_s)
        conn.request("GET", self.http_cfg.target.path)
        conn.sock.settimeout(c.read_timeout_s)
        resp = conn.getresponse()
        body = resp.read().decode(errors="replace").strip()
        if resp.will_close:  # the server ends keep-alive: a pool opens a new connection
            self._drop_connection()
        if not 200 <= resp.status < 300:
            raise HttpError(f"HTTP {resp.status} {resp.reason}: {body[:80]}")
        return body

    def _transaction(self) -> bool:
        if self.conn is None:  # closed by the server after its last answer
            self._connect(after_error=False)
        start = self._begin()
        try:
            self.last_body = self._request()
        except HttpError as exc:
            self._failed(str(exc))
            return False
        except (OSError, http.client.HTTPException) as exc:
            self._failed(error_detail(exc))
            self._reconnect()
            return False
        self._completed(start, r=1)
        return True


def main(argv: list[str]) -> None:
    runtime.run_driver(argv, HttpConfig, HttpWorker, "lab.load.http")


if __name__ == "__main__":
    main(sys.argv)
