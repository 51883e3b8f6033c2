"""Another process's TCP sockets, seen from outside it: which of its fds are connected to a
peer (/proc/PID/fd and /proc/PID/net/tcp), and their socket options, read off a duplicate
that pidfd_getfd(2) makes (Linux >= 5.6; root, or ptrace rights over the process).

Drivers that run a foreign client (sysbench, your command, the zoo's programs) prove with it
which socket options the client really set: the lab cannot call getsockopt inside them.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
from pathlib import Path

from lab.load.runtime import read_sockopts

SYS_PIDFD_GETFD = 438  # x86_64 syscall number (Python's os module has no pidfd_getfd)


def hex_addr(text: str) -> str:
    """'0100A8C0:0CEA' (/proc/net/tcp, little-endian IPv4) -> '192.168.0.1:3306'."""
    ip, port = text.split(":")
    return f"{socket.inet_ntoa(int(ip, 16).to_bytes(4, 'little'))}:{int(port, 16)}"


def tcp_sockets(pid: int, peer: str) -> list[tuple[int, str, str]]:
    """(fd, local, peer) of pid's established TCP sockets to `peer` (host:port)."""
    inodes: dict[int, int] = {}
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:["):
                    inodes[int(link[8:-1])] = int(fd)
    found = []
    with contextlib.suppress(OSError):
        for row in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
            cols = row.split()
            if cols[3] != "01" or int(cols[9]) not in inodes:  # 01 = ESTABLISHED
                continue
            local, remote = hex_addr(cols[1]), hex_addr(cols[2])
            if remote == peer:
                found.append((inodes[int(cols[9])], local, remote))
    return sorted(found)


def foreign_sockopts(pid: int, fd: int) -> dict[str, int]:
    """The socket options of another process's socket: pidfd_getfd(2) a duplicate, getsockopt.

    {} when the kernel refuses (no pidfd_getfd before Linux 5.6, or no ptrace permission)."""
    libc = ctypes.CDLL(None, use_errno=True)
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return {}
    try:
        dup = libc.syscall(SYS_PIDFD_GETFD, pidfd, fd, 0)
        if dup < 0:
            return {}
        with socket.socket(fileno=dup) as sock:
            return read_sockopts(sock)
    except OSError:
        return {}
    finally:
        os.close(pidfd)
