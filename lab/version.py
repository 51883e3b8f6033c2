"""Which lab made a result: the package version and, in a checkout, its git commit.

Recorded in run.json and printed by `lab --version`, so a result can be traced to the code that
measured it.
"""

from __future__ import annotations

import functools
import subprocess
from importlib import metadata
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent


def version() -> str:
    try:
        return metadata.version("blackhole-lab")
    except metadata.PackageNotFoundError:
        return "unknown"


@functools.cache
def git_commit() -> str | None:
    """The checkout's commit, with "+dirty" when files differ from it; None outside a checkout
    (an installed wheel). git is run because no library reads a worktree's state as cheaply."""
    if not (_ROOT / ".git").exists():
        return None
    try:
        head = subprocess.run(["git", "-C", str(_ROOT), "rev-parse", "HEAD"],
                              capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "-C", str(_ROOT), "status", "--porcelain",
                                "--untracked-files=no"], capture_output=True, text=True,
                               timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
