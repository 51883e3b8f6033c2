"""The compiled stacks of the zoo: go-sql-driver (Go) and c-libmariadb (C, Connector/C).

Each is one source file under this package (go/main.go, c/zoo.c) compiled at run time, never
committed as a binary: the binary is cached in the cache dir under a name keyed by the hash of
its source, its build command and the library's installed version (an upgraded library is a
new binary), built once under a lock and renamed into place, so concurrent trials share it and
a killed build leaves nothing behind. Everything comes from Debian packages: Go builds offline
(GO111MODULE=off against the packaged driver in /usr/share/gocode, GOPROXY=off).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lab.errors import LabError
from lab.load.zoo import Runner
from lab.net.process import find_binary

HERE = Path(__file__).resolve().parent
GOPATH = Path("/usr/share/gocode")
GO_DRIVER = GOPATH / "src/github.com/go-sql-driver/mysql"
BUILD_TIMEOUT_S = 300.0


def dpkg_version(package: str) -> str | None:
    """The upstream part of an installed Debian package's version ("1:10.11.19-0+deb12u1" ->
    "10.11.19"), or None when it is not installed."""
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f", "${db:Status-Status} ${Version}",
                              package], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    status, _, version = out.stdout.strip().partition(" ")
    if out.returncode != 0 or status != "installed" or not version:
        return None
    return version.split(":", 1)[-1].rsplit("-", 1)[0]


@dataclass(frozen=True)
class Requirement:
    """Something the build needs: an executable on PATH or a file, and its Debian package."""

    what: str
    package: str
    is_file: bool = False

    def absent(self) -> bool:
        return not Path(self.what).exists() if self.is_file else find_binary(self.what) is None


@dataclass(frozen=True)
class NativeRunner:
    """One compiled stack: its source, what building it needs, and how it is compiled."""

    name: str
    source: Path
    library_package: str  # whose version is the stack's
    needs: tuple[Requirement, ...]
    keyed_by: tuple[str, ...]  # packages whose version is part of the cache key
    # (source, output, library version, private dir) -> (argv, extra environment)
    build_command: Callable[[Path, Path, str, Path], tuple[list[str], dict[str, str]]]
    # the library's own version where its package carries another (libmariadb3 10.11.19 is
    # Connector/C 3.3.20: mariadb_config --cc_version says so)
    version_command: tuple[str, ...] = ()

    def missing(self) -> tuple[str, str] | None:
        """(problem, fix) naming the Debian package of the first thing absent, else None."""
        for need in self.needs:
            if need.absent():
                return (f"{need.what} not found (needed to build load.stack={self.name!r})",
                        f"run 'make setup' (installs {need.package})")
        return None

    def version(self) -> str | None:
        """The library's version (version_command, else its package's upstream version from
        dpkg-query), None when not installed."""
        if self.version_command and find_binary(self.version_command[0]):
            out = subprocess.run(list(self.version_command), capture_output=True, text=True,
                                 check=False).stdout.strip()
            if out:
                return out
        return dpkg_version(self.library_package)

    def binary(self, cache_dir: Path) -> Path:
        """Where the binary of the current source and library lives in `cache_dir`."""
        argv, env = self.build_command(self.source, Path("OUT"), self.version() or "", Path())
        key = hashlib.sha256(self.source.read_bytes())
        versions = [dpkg_version(package) for package in self.keyed_by]
        key.update(repr((argv, sorted(env.items()), versions)).encode())
        return cache_dir / f"zoo-{self.name}-{key.hexdigest()[:12]}"

    def argv(self, cache_dir: Path) -> list[str]:
        """The program's argv, built into `cache_dir` first if it is not there yet."""
        problem = self.missing()
        if problem is not None:
            raise LabError(*problem)
        target = self.binary(cache_dir)
        if not target.exists():
            self.build(target)
        return [str(target)]

    def build(self, target: Path) -> float:
        """Compile into `target` under a lock (one builder at a time); the seconds it took
        (0 when another builder made it while we waited)."""
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target.parent / f".{target.name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if target.exists():
                return 0.0
            return self._compile(target)

    def _compile(self, target: Path) -> float:
        tmp = target.parent / f".{target.name}.{os.getpid()}.tmp"
        private = target.parent / f".{self.name}-build"
        argv, extra = self.build_command(self.source, tmp, self.version() or "", private)
        started = time.monotonic()
        try:
            done = subprocess.run(argv, env={**os.environ, **extra}, capture_output=True,
                                  text=True, timeout=BUILD_TIMEOUT_S, cwd=self.source.parent)
            if done.returncode != 0:
                raise LabError(f"building load.stack={self.name!r} failed: "
                               f"{(done.stderr or done.stdout).strip()[-800:]}",
                               "check the toolchain and library packages ('make setup')")
            os.replace(tmp, target)
        except subprocess.TimeoutExpired:
            raise LabError(f"building load.stack={self.name!r} took over "
                           f"{BUILD_TIMEOUT_S:.0f} s", "check the machine's load") from None
        finally:
            tmp.unlink(missing_ok=True)
        return time.monotonic() - started


def _go_build(source: Path, out: Path, version: str,
              private: Path) -> tuple[list[str], dict[str, str]]:
    """GOPATH mode against Debian's packaged driver: no module download, no network."""
    env = {"GO111MODULE": "off", "GOPATH": str(GOPATH), "GOPROXY": "off", "GOFLAGS": "",
           "GOENV": "off", "CGO_ENABLED": "0", "GOCACHE": str(private / "gocache")}
    return (["go", "build", "-ldflags", f"-X main.driverVersion={version}",
             "-o", str(out), source.name], env)


def _c_build(source: Path, out: Path, version: str,
             private: Path) -> tuple[list[str], dict[str, str]]:
    """gcc with Connector/C's own flags (mariadb_config --cflags --libs)."""
    del version, private  # the library's version is in the cache key (keyed_by)
    flags = subprocess.run(["mariadb_config", "--cflags", "--libs"], capture_output=True,
                           text=True, check=True, timeout=10).stdout.split()
    return ["gcc", "-O2", "-Wall", "-Wextra", "-o", str(out), source.name, *flags], {}


GO = NativeRunner(
    "go-sql-driver", HERE / "go" / "main.go", "golang-github-go-sql-driver-mysql-dev",
    (Requirement("go", "golang-go"),
     Requirement(str(GO_DRIVER / "driver.go"), "golang-github-go-sql-driver-mysql-dev", True)),
    ("golang-go", "golang-github-go-sql-driver-mysql-dev"), _go_build)
C = NativeRunner(
    "c-libmariadb", HERE / "c" / "zoo.c", "libmariadb3",
    (Requirement("gcc", "gcc"), Requirement("mariadb_config", "libmariadb-dev"),
     Requirement("/usr/include/mariadb/mysql.h", "libmariadb-dev", True)),
    ("gcc", "libmariadb-dev", "libmariadb3"), _c_build, ("mariadb_config", "--cc_version"))

RUNNERS: dict[str, Runner] = {GO.name: GO, C.name: C}
