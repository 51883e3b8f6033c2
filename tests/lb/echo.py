"""A tiny TCP peer for LB tests, run inside a lab namespace.

server NAME ADDR PORT     answer every line with "NAME:<line>"
client VIP PORT          read commands on stdin: "send X" -> print the answer, "timeout",
                         "reset" or "error <errno>"; keeps ONE long-lived connection
"""

import socket
import socketserver
import sys


class Echo(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        for line in self.rfile:
            self.wfile.write(f"{sys.argv[2]}:".encode() + line)


def main() -> None:
    if sys.argv[1] == "server":
        socketserver.ThreadingTCPServer.allow_reuse_address = True
        srv = socketserver.ThreadingTCPServer((sys.argv[3], int(sys.argv[4])), Echo)
        print("listening", flush=True)
        srv.serve_forever()
    vip, port = sys.argv[2], int(sys.argv[3])
    sock = socket.create_connection((vip, port), timeout=3)
    sock.settimeout(1.5)
    print("connected", flush=True)
    for cmd in sys.stdin:
        if cmd.startswith("send "):
            try:
                sock.sendall(cmd[5:].encode())
                print(sock.recv(100).decode().strip() or "eof", flush=True)
            except TimeoutError:
                print("timeout", flush=True)
            except ConnectionResetError:
                print("reset", flush=True)
            except OSError as exc:
                print(f"error {exc.errno}", flush=True)
        elif cmd.startswith("new"):
            try:
                s2 = socket.create_connection((vip, port), timeout=3)
                s2.sendall(b"hello\n")
                print(s2.recv(100).decode().strip(), flush=True)
                s2.close()
            except OSError as exc:
                print(f"error {exc.errno}", flush=True)


if __name__ == "__main__":
    main()
