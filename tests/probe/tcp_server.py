"""Request-response TCP server for the model's kernel checks: `python tests/probe/tcp_server.py
ADDR PORT` answers every line with "ok:<line>" and prints "listening" once it can accept."""

from __future__ import annotations

import socketserver
import sys


class _Answer(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        for line in self.rfile:
            self.wfile.write(b"ok:" + line)


def main(argv: list[str]) -> None:
    socketserver.ThreadingTCPServer.allow_reuse_address = True
    socketserver.ThreadingTCPServer.daemon_threads = True
    server = socketserver.ThreadingTCPServer((argv[0], int(argv[1])), _Answer)
    print("listening", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main(sys.argv[1:])
