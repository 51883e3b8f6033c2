"""One long-lived request-response TCP client, run inside the client namespace.

    python tests/probe/tcp_client.py CONFIG_JSON

CONFIG keys: host, port; connect_timeout_s (default 5, null = blocking connect);
interval_s (pause between exchanges, default 0.05); mode "busy" (exchange until an error) or
"idle" (after `exchanges` exchanges, default 3, block in recv() with nothing outstanding, so
only keepalive can find a dead peer); user_timeout_ms, keepalive [idle_s, intvl_s, cnt],
read_timeout_s (socket options / timeout, like PyMySQL's); max_s (stop after this long: print
{"ev": "end"} and exit 3).

It prints JSON lines on stdout, t = time.monotonic() (one clock for every process):
  {"ev": "connected", "t": T, "rto_us": .., "rtt_us": ..}
  {"ev": "sent", "t": T, "seq": n}             a request was handed to the kernel
  {"ev": "ok", "t": T, "seq": n, "rto_us": .., "rtt_us": ..}   its answer arrived
  {"ev": "idle", "t": T}                        idle mode: now blocking in recv()
  {"ev": "error", "t": T, "seq": n, "sent_t": T0, "errno": e, "error": "ETIMEDOUT"}
and exits 0 after the error.
"""

from __future__ import annotations

import errno
import json
import socket
import struct
import sys
import time
from typing import Any

# struct tcp_info (include/uapi/linux/tcp.h): 8 one-byte fields, then u32 tcpi_rto (µs) ...
# tcpi_rtt is the 16th u32.
_TCPI_RTO_OFFSET = 8
_TCPI_RTT_OFFSET = 8 + 15 * 4


def emit(**record: Any) -> None:
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


def tcp_info(sock: socket.socket) -> dict[str, int]:
    """The kernel's current RTO and smoothed RTT of the socket (what `ss -ti` shows)."""
    raw = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    (rto,) = struct.unpack_from("I", raw, _TCPI_RTO_OFFSET)
    (rtt,) = struct.unpack_from("I", raw, _TCPI_RTT_OFFSET)
    return {"rto_us": rto, "rtt_us": rtt}


def configure(sock: socket.socket, cfg: dict[str, Any]) -> None:
    if cfg.get("user_timeout_ms"):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(cfg["user_timeout_ms"]))
    if cfg.get("keepalive"):
        idle, intvl, cnt = cfg["keepalive"]
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, int(idle))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, int(intvl))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, int(cnt))
    sock.settimeout(cfg.get("read_timeout_s"))


def _error_name(exc: BaseException) -> tuple[int, str]:
    if isinstance(exc, TimeoutError) and exc.errno is None:
        return 0, "timeout"
    code = getattr(exc, "errno", None) or 0
    return code, errno.errorcode.get(code, type(exc).__name__)


def exchange(sock: socket.socket, seq: int, state: dict[str, float]) -> None:
    """Send request `seq` (its send time goes to state["sent"]), wait for its answer line."""
    state["sent"] = time.monotonic()
    sock.sendall(f"{seq}\n".encode())
    emit(ev="sent", t=state["sent"], seq=seq)
    want = f"ok:{seq}\n".encode()
    got = b""
    while not got.endswith(b"\n"):
        chunk = sock.recv(64)
        if not chunk:
            raise ConnectionAbortedError(errno.ECONNABORTED, "EOF from server")
        got += chunk
    if got != want:
        raise RuntimeError(f"unexpected answer {got!r}")


def main(cfg: dict[str, Any]) -> int:
    interval = float(cfg.get("interval_s", 0.05))
    deadline = time.monotonic() + float(cfg.get("max_s", 60))
    seq, state = 0, {"sent": time.monotonic()}
    try:
        # connect_timeout_s null: a blocking connect() that only the kernel's SYN retries end
        sock = socket.create_connection(
            (cfg["host"], int(cfg["port"])), timeout=cfg.get("connect_timeout_s", 5.0)
        )
        configure(sock, cfg)
        emit(ev="connected", t=time.monotonic(), **tcp_info(sock))
        while time.monotonic() < deadline:
            seq += 1
            exchange(sock, seq, state)
            emit(ev="ok", t=time.monotonic(), seq=seq, **tcp_info(sock))
            if cfg.get("mode") == "idle" and seq >= int(cfg.get("exchanges", 3)):
                emit(ev="idle", t=time.monotonic())
                sock.settimeout(max(0.0, deadline - time.monotonic()))
                seq += 1
                state["sent"] = time.monotonic()
                if not sock.recv(64):  # nothing is outstanding: only keepalive can end this
                    raise ConnectionAbortedError(errno.ECONNABORTED, "EOF from server")
                raise RuntimeError("unexpected data while idle")
            time.sleep(interval)
    except (OSError, RuntimeError) as exc:
        t = time.monotonic()
        if isinstance(exc, TimeoutError) and t >= deadline - 0.05:
            emit(ev="end", t=t)
            return 3
        code, name = _error_name(exc)
        emit(ev="error", t=t, seq=seq, sent_t=state["sent"], errno=code, error=name)
        return 0
    emit(ev="end", t=time.monotonic())
    return 3


if __name__ == "__main__":
    sys.exit(main(json.loads(sys.argv[1])))
