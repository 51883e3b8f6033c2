"""Who can reach what a lab server keeps (issue 13): helpers that act as an unprivileged local
user, and that look for a secret in the argv of every process on the machine."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

NOBODY = 65534
# setpriv: the real, effective and saved ids of nobody, and no supplementary groups (root's)
AS_NOBODY = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--"]

# run as nobody: connect to a unix socket, print the errno name (or "connected")
UNIX_CONNECT = """
import errno, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    s.connect(sys.argv[1])
    print("connected")
except OSError as exc:
    print(errno.errorcode.get(exc.errno, exc.errno))
"""


def as_nobody(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    """Run `argv` as the unprivileged user nobody (from the host namespace)."""
    return subprocess.run([*AS_NOBODY, *argv], capture_output=True, text=True, timeout=30)


def nobody_connects(socket_path: Path) -> str:
    """What a connect(2) of nobody to `socket_path` gives: "connected" or an errno name."""
    return as_nobody([sys.executable, "-c", UNIX_CONNECT, str(socket_path)]).stdout.strip()


def nobody_lists(path: Path) -> int:
    """The exit code of `ls` of `path` as nobody (0: it could read the folder)."""
    return as_nobody(["ls", str(path)]).returncode


def argv_holding(secret: str) -> list[tuple[int, str]]:
    """(pid, argv) of every process whose command line holds `secret` (what ps shows to
    every local user)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue  # gone meanwhile
        if secret.encode() in raw:
            found.append((int(entry), raw.replace(b"\0", b" ").decode(errors="replace")))
    return found


def children(pid: int) -> list[int]:
    """The pids of `pid`'s children (every thread's)."""
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            continue
    return out
