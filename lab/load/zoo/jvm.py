"""The Java stacks of the zoo: MariaDB Connector/J 2.7.6 alone (`java-connectorj`) and behind
a HikariCP 2.7.9 pool (`java-hikaricp`), the Debian jars of /usr/share/java on OpenJDK 17.

The programs are lab/load/zoo/java/*.java, compiled with javac on first use into the lab's
cache dir, keyed by the hash of their sources (a changed source is a new build, an old one is
never reused). The JVM is started for a small, quick client: C1 only, the serial collector,
small heap and stacks, so that many copies start in about a second side by side on 2 cores.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import zipfile
from dataclasses import dataclass
from pathlib import Path

from lab.errors import LabError
from lab.load.zoo import Runner
from lab.net.process import find_binary

JAVA_SRC = Path(__file__).with_name("java")
JAVA_DIR = Path("/usr/share/java")  # where Debian's lib*-java packages put their jars
JDK_PACKAGE = "default-jdk-headless"
# a small client JVM: no C2, no GC threads, no perf file in /tmp (start-up ~0.5 s, ~40 MB)
JVM_FLAGS = ("-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC", "-Xss512k", "-Xms16m", "-Xmx64m",
             "-XX:-UsePerfData", "-Xshare:auto")


@dataclass(frozen=True)
class Jar:
    """A library jar the program needs, and the Debian package that installs it."""

    file: str
    package: str


CONNECTORJ = Jar("mariadb-java-client.jar", "libmariadb-java")
HIKARICP = Jar("HikariCP.jar", "libhikaricp-java")
SLF4J_API = Jar("slf4j-api.jar", "libslf4j-java")
# HikariCP logs through slf4j: slf4j-nop silences it (its warning of a broken connection is a
# stack trace per error; the program prints the exception's causes on stderr itself)
SLF4J_NOP = Jar("slf4j-nop.jar", "libslf4j-java")


@dataclass(frozen=True)
class JvmRunner:
    """One Java stack: its sources, main class, the jars it compiles and runs with."""

    name: str
    main: str
    sources: tuple[str, ...]
    compile_jars: tuple[Jar, ...]  # on javac's class path
    run_jars: tuple[Jar, ...]  # on java's class path (the driver is found at run time)
    versioned: tuple[Jar, ...]  # whose Bundle-Version is the stack's version
    java_dir: Path = JAVA_DIR
    path: str | None = None  # where java and javac are looked for (None: PATH, sbin dirs)

    def _jar(self, jar: Jar) -> Path:
        return self.java_dir / jar.file

    def missing(self) -> tuple[str, str] | None:
        """The first thing absent (java, javac, a jar) and the package that installs it."""
        for tool in ("java", "javac"):
            if find_binary(tool, self.path) is None:
                return (f"{tool} not found (needed for load.stack={self.name!r})",
                        f"run 'make setup' (installs {JDK_PACKAGE})")
        for jar in (*self.compile_jars, *self.run_jars):
            if not self._jar(jar).is_file():
                return (f"{self._jar(jar)} not found (needed for load.stack={self.name!r})",
                        f"run 'make setup' (installs {jar.package})")
        return None

    def version(self) -> str | None:
        """'2.7.6' (Connector/J) or '2.7.9 (mariadb-java-client 2.7.6)' (HikariCP over it)."""
        found = [jar_version(self._jar(jar)) for jar in self.versioned]
        if any(v is None for v in found):
            return None
        head, *rest = found
        return head + "".join(f" (mariadb-java-client {v})" for v in rest)

    def _classpath(self, jars: tuple[Jar, ...], *extra: Path) -> str:
        return os.pathsep.join([*(str(p) for p in extra), *(str(self._jar(j)) for j in jars)])

    def build(self, cache_dir: Path) -> Path:
        """The directory of compiled classes (built once, atomically, keyed by the sources)."""
        digest = hashlib.sha256()
        for name in self.sources:
            digest.update(name.encode() + b"\0" + (JAVA_SRC / name).read_bytes() + b"\0")
        target = cache_dir / f"zoo-{self.name}-{digest.hexdigest()[:12]}"
        if target.is_dir():
            return target
        problem = self.missing()
        if problem is not None:
            raise LabError(*problem)
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = cache_dir / f".{target.name}.{os.getpid()}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            _javac(find_binary("javac", self.path) or "javac", tmp,
                   self._classpath(self.compile_jars), [JAVA_SRC / s for s in self.sources])
            try:
                os.rename(tmp, target)
            except OSError:
                if not target.is_dir():  # else a concurrent builder won: the same classes
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return target

    def argv(self, cache_dir: Path) -> list[str]:
        """java FLAGS -cp CLASSES:JARS MAIN (the classes built first if needed)."""
        classes = self.build(cache_dir)
        java = find_binary("java", self.path) or "java"
        return [java, *JVM_FLAGS, "-cp", self._classpath(self.run_jars, classes), self.main]


def _javac(javac: str, out: Path, classpath: str, sources: list[Path]) -> None:
    """Compile `sources` into `out` (a failure is the lab's error, with javac's message)."""
    argv = [javac, "-nowarn", "-encoding", "UTF-8", "--release", "17", "-d", str(out)]
    if classpath:
        argv += ["-cp", classpath]
    try:
        subprocess.run([*argv, *map(str, sources)], check=True, capture_output=True, text=True,
                       timeout=120)
    except subprocess.CalledProcessError as exc:
        raise LabError(f"compiling {', '.join(s.name for s in sources)} failed: "
                       f"{(exc.stderr or exc.stdout).strip()}",
                       f"check the JDK ('make setup' installs {JDK_PACKAGE})") from None


def jar_version(jar: Path) -> str | None:
    """The Bundle-Version of a jar's manifest (Debian's jars have no Implementation-Version)."""
    try:
        with zipfile.ZipFile(jar) as z:
            manifest = z.read("META-INF/MANIFEST.MF").decode("utf-8", "replace")
    except (OSError, KeyError, zipfile.BadZipFile):
        return None
    # manifest lines are folded at 72 bytes: a continuation starts with one space
    for line in manifest.replace("\r\n", "\n").replace("\n ", "").splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "Bundle-Version":
            return value.strip()
    return None


RUNNERS: dict[str, Runner] = {r.name: r for r in (
    JvmRunner("java-connectorj", "Zoo", ("Zoo.java",), compile_jars=(),
              run_jars=(CONNECTORJ,), versioned=(CONNECTORJ,)),
    JvmRunner("java-hikaricp", "ZooHikari", ("Zoo.java", "ZooHikari.java"),
              compile_jars=(HIKARICP,), run_jars=(CONNECTORJ, HIKARICP, SLF4J_API, SLF4J_NOP),
              versioned=(HIKARICP, CONNECTORJ)),
)}
