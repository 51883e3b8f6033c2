"""lab.version: what run.json and `lab --version` record."""

from __future__ import annotations

import subprocess
from importlib import metadata
from pathlib import Path

from lab import version

ROOT = Path(__file__).resolve().parent.parent


def test_version_is_the_installed_package_version() -> None:
    assert version.version() == metadata.version("blackhole-lab")


def test_git_commit_is_the_checkout_head() -> None:
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()
    commit = version.git_commit()
    assert commit is not None and commit.removesuffix("+dirty") == head
