"""Test data, not a test: a tiny request/response TCP server and client for the capture tests.

    python tcp_echo.py server IP PORT
    python tcp_echo.py client IP PORT [INTERVAL_S]

The client keeps one connection and sends a 16-byte request every INTERVAL_S (default 0.1),
waiting for the echo. It prints "connected LOCAL_IP LOCAL_PORT" once connected and, when the
socket fails, "error ERRNO WALL_TIME"; it then stays alive 3 s with the dead socket open, so a
snapshot can show the kernel dropped the connection while the application still runs.
"""

from __future__ import annotations

import socket
import sys
import threading
import time


def serve(ip: str, port: int) -> None:
    lsock = socket.socket()
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind((ip, port))
    lsock.listen()
    print("listening", flush=True)

    def echo(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(4096):
                conn.sendall(data)

    while True:
        conn, _ = lsock.accept()
        threading.Thread(target=echo, args=(conn,), daemon=True).start()


def client(ip: str, port: int, interval: float) -> None:
    sock = socket.create_connection((ip, port), timeout=10)
    sock.settimeout(None)
    local = sock.getsockname()
    print(f"connected {local[0]} {local[1]}", flush=True)
    i = 0
    try:
        while True:
            sock.sendall(b"req %011d\n" % i)
            if not sock.recv(4096):
                raise ConnectionResetError(0, "EOF")
            i += 1
            time.sleep(interval)
    except OSError as exc:
        print(f"error {exc.errno} {time.time():.6f}", flush=True)
    time.sleep(3)


if __name__ == "__main__":
    mode, addr, p = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if mode == "server":
        serve(addr, p)
    else:
        client(addr, p, float(sys.argv[4]) if len(sys.argv) > 4 else 0.1)
