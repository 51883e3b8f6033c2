"""The zoo's scripted stacks: Node (mysql2), PHP (mysqli) and Python (mysqlclient, PyMySQL).

Nothing is built: each program is a source file under lab/load/zoo/<language>/ run by its
interpreter, and nothing is fetched at run time either. The libraries are installed once by
`make setup`: Debian's php-cli and php-mysql, mysql2 by `npm ci` of node/package-lock.json
into <repo>/.zoo/node (or the folder BHL_ZOO_NODE_DIR names: the npm prefix, holding
node_modules), and the Python libraries into the lab's own environment (extra "zoo": the
programs run with sys.executable).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from lab.errors import LabError
from lab.load.zoo import Runner

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
MYSQL2_MAJOR = "3"


def node_dir() -> Path:
    """The npm prefix that holds mysql2 (node_modules/ inside it)."""
    return Path(os.environ.get("BHL_ZOO_NODE_DIR") or REPO / ".zoo" / "node")


def _program(path: Path) -> Path:
    if not path.is_file():
        raise LabError(f"the zoo program {path} is missing",
                       "reinstall blackhole-lab (the program ships with lab/load/zoo)")
    return path


@dataclass
class NodeRunner:
    """node-mysql2: /usr/bin/node running node/mysql2_client.js with mysql2 3.x from npm."""

    name: str = "node-mysql2"
    program: Path = HERE / "node" / "mysql2_client.js"

    def _package(self) -> Path:
        return node_dir() / "node_modules" / "mysql2" / "package.json"

    def missing(self) -> tuple[str, str] | None:
        if shutil.which("node") is None:
            return "node is not installed", "apt-get install nodejs npm"
        found = self.version()
        if found is None or found.split(".")[0] != MYSQL2_MAJOR:
            where = node_dir()
            return (f"mysql2 {MYSQL2_MAJOR}.x is not installed in {where} "
                    f"(found: {found or 'none'})",
                    f"make setup (npm ci of lab/load/zoo/node's lock into .zoo/node), or "
                    f"npm install --prefix {where} mysql2@{MYSQL2_MAJOR}")
        return None

    def version(self) -> str | None:
        try:
            return str(json.loads(self._package().read_text())["version"])
        except (OSError, ValueError, KeyError):
            return None

    def argv(self, cache_dir: Path) -> list[str]:
        node = shutil.which("node") or "node"
        return [node, str(_program(self.program)), str(node_dir() / "node_modules")]


@cache
def _php_probe(php: str) -> tuple[str, bool]:
    """(mysqli_get_client_info() or "", whether pcntl and posix are there: the program's
    supervisor needs them)."""
    code = ('echo function_exists("mysqli_get_client_info") ? mysqli_get_client_info() : "",'
            ' "\\n", function_exists("pcntl_fork") && function_exists("posix_kill") ? 1 : 0;')
    try:
        out = subprocess.run([php, "-r", code], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "", False
    info, _, signals = out.stdout.partition("\n")
    return info.strip(), signals.strip() == "1"


@dataclass
class PhpRunner:
    """php-mysqli: the php CLI running php/mysqli_client.php (mysqli over mysqlnd)."""

    name: str = "php-mysqli"
    program: Path = HERE / "php" / "mysqli_client.php"

    def missing(self) -> tuple[str, str] | None:
        php = shutil.which("php")
        if php is None:
            return "php is not installed", "apt-get install php-cli php-mysql"
        info, signals = _php_probe(php)
        if not info:
            return f"{php} has no mysqli extension", "apt-get install php-mysql"
        if not signals:
            return (f"{php} has no pcntl or posix extension (the program's supervisor)",
                    "apt-get install php-cli (Debian builds both in)")
        return None

    def version(self) -> str | None:
        php = shutil.which("php")
        info = _php_probe(php)[0] if php else ""
        return info.split()[-1] if info else None

    def argv(self, cache_dir: Path) -> list[str]:
        return [shutil.which("php") or "php", str(_program(self.program))]


@dataclass
class PythonRunner:
    """A Python library, imported by a standalone program run with the lab's interpreter."""

    name: str
    module: str  # what the program imports
    distribution: str  # what pip installs (and importlib.metadata knows)
    program: Path
    fix: str

    def missing(self) -> tuple[str, str] | None:
        if importlib.util.find_spec(self.module) is None:
            return (f"{self.distribution} is not installed for {sys.executable}", self.fix)
        return None

    def version(self) -> str | None:
        try:
            return importlib.metadata.version(self.distribution)
        except importlib.metadata.PackageNotFoundError:
            return None

    def argv(self, cache_dir: Path) -> list[str]:
        return [sys.executable, str(_program(self.program))]


RUNNERS: dict[str, Runner] = {r.name: r for r in (
    NodeRunner(),
    PhpRunner(),
    PythonRunner(
        "python-mysqlclient", "MySQLdb", "mysqlclient", HERE / "python" / "mysqlclient_client.py",
        "pip install 'blackhole-lab[zoo]' (mysqlclient: it builds against Debian's "
        "libmariadb-dev, pkg-config and python3-dev)"),
    PythonRunner(
        "python-pymysql", "pymysql", "PyMySQL", HERE / "python" / "pymysql_client.py",
        "pip install blackhole-lab (PyMySQL is one of its dependencies)"),
)}
