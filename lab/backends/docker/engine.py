"""The Docker engine the `docker` backend provider runs its containers on.

A user's running engine (DOCKER_HOST, else /var/run/docker.sock) is used as it is and never
stopped. Without one (CI, a bare VM) the lab starts a *private* dockerd: its own socket,
exec-root and pidfile under STATE_DIR/docker, its own data-root (DATA_ROOT, kept between
runs so the image is built once per machine), its own config file (a user's daemon.json is
never read), its own containerd namespace, and no Docker networking at all
(`--iptables=false --ip-forward=false --ip-masq=false --bridge=none`): the host's iptables,
sysctls and links stay untouched, the lab's topology layer wires every container.

The private dockerd is shared: `acquire()`/`release()` count users within a process, and a
holder file per process (STATE_DIR/docker/holders/<pid>, under an flock) counts processes,
so the last user stops it (SIGTERM: dockerd takes its containerd with it). `lab clean`
removes the containers of dead runs (label LABEL_RUN) and a private dockerd no live process
holds; nothing else the engine has (a user's containers, networks, images) is touched.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors

from lab.errors import LabError
from lab.net import runtime
from lab.net.process import find_binary, tail, wait_until
from lab.net.runtime import STATE_DIR, pid_alive, recorded_runs

ENGINE_DIR = STATE_DIR / "docker"
DATA_ROOT = Path(os.environ.get("BHL_DOCKER_DATA_ROOT", "/var/lib/blackhole-lab/docker"))
SOCKET = ENGINE_DIR / "docker.sock"
PIDFILE = ENGINE_DIR / "dockerd.pid"
LOG = ENGINE_DIR / "dockerd.log"
USER_SOCKET = "unix:///var/run/docker.sock"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 20.0

# every container the lab creates carries these labels; `lab clean` matches on LABEL_RUN
LABEL_RUN = "blackhole-lab.run"
LABEL_PID = "blackhole-lab.pid"


@dataclass
class Engine:
    """A reachable engine: its client, address, and whether the lab started it."""

    client: docker.DockerClient
    base_url: str
    private: bool

    def describe(self) -> str:
        version = self.client.version().get("Version", "?")
        owner = "private dockerd started by the lab" if self.private else "the user's engine"
        return f"docker {version} at {self.base_url} ({owner})"


def _client(base_url: str, timeout: float = 120) -> docker.DockerClient:
    return docker.DockerClient(base_url=base_url, timeout=int(timeout))


def _ping(base_url: str) -> bool:
    try:
        client = _client(base_url, timeout=5)
    except docker.errors.DockerException:
        return False
    try:
        return bool(client.ping())
    except Exception:
        return False
    finally:
        client.close()


def user_engine_url() -> str | None:
    """The user's running engine, if any: DOCKER_HOST (a local unix socket), else the default
    socket. Only local unix sockets qualify: the lab moves veths into a container's netns by
    its PID, which needs the engine on this kernel."""
    url = os.environ.get("DOCKER_HOST")
    if url:
        return url if url.startswith("unix://") and _ping(url) else None
    if Path(USER_SOCKET.removeprefix("unix://")).exists() and _ping(USER_SOCKET):
        return USER_SOCKET
    return None


def private_url() -> str:
    return f"unix://{SOCKET}"


def dockerd_binary() -> str | None:
    return find_binary("dockerd")


def _running(pid: int, comm: str) -> bool:
    """pid is alive (not a zombie) and is `comm` (a recycled pid is not our daemon)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    name = stat[stat.index("(") + 1: stat.rindex(")")]
    return name == comm and stat.rsplit(")", 1)[1].split()[0] != "Z"


def private_pid() -> int | None:
    """The pid of a running private dockerd, from its pidfile."""
    try:
        pid = int(PIDFILE.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _running(pid, "dockerd") else None


# --- cross-process holders ---------------------------------------------------------------------


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    runtime.ensure_state_dir()  # 0700 before the engine's folder is made in it
    ENGINE_DIR.mkdir(parents=True, exist_ok=True)
    with open(ENGINE_DIR / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _holders() -> list[int]:
    """Processes holding the private dockerd; files of dead ones are removed (under the lock)."""
    folder = ENGINE_DIR / "holders"
    folder.mkdir(parents=True, exist_ok=True)
    alive = []
    for entry in folder.iterdir():
        pid = int(entry.name) if entry.name.isdigit() else -1
        if pid > 0 and pid_alive(pid):
            alive.append(pid)
        else:
            entry.unlink(missing_ok=True)
    return alive


def _hold(held: bool) -> None:
    path = ENGINE_DIR / "holders" / str(os.getpid())
    path.parent.mkdir(parents=True, exist_ok=True)
    if held:
        path.touch()
    else:
        path.unlink(missing_ok=True)


# --- the private daemon ------------------------------------------------------------------------


def _dockerd_argv(binary: str, config: Path) -> list[str]:
    """The private dockerd: its own paths, its own containerd namespace, no networking."""
    return [
        binary, "--config-file", str(config), "-H", private_url(),
        "--data-root", str(DATA_ROOT), "--exec-root", str(ENGINE_DIR / "exec"),
        "--pidfile", str(PIDFILE),
        "--iptables=false", "--ip6tables=false", "--ip-forward=false", "--ip-masq=false",
        "--bridge=none", "--userland-proxy=false",
        # if a system containerd is running dockerd uses it: keep our objects apart
        "--containerd-namespace=blackhole-lab",
        "--containerd-plugins-namespace=blackhole-lab-plugins",
    ]


def _start_private() -> subprocess.Popen[bytes]:
    """Start the private dockerd and wait until it answers (caller holds the lock)."""
    binary = dockerd_binary()
    if binary is None:
        raise LabError("no Docker engine running and dockerd not installed",
                       "run 'make setup' (installs docker.io)")
    for folder in (ENGINE_DIR, DATA_ROOT):
        folder.mkdir(parents=True, exist_ok=True)
    SOCKET.unlink(missing_ok=True)  # left by a killed daemon
    config = ENGINE_DIR / "daemon.json"
    config.write_text("{}\n")
    # shelling out: dockerd is the daemon itself, the SDK only talks to a running one
    argv = _dockerd_argv(binary, config)
    with open(LOG, "wb") as log:
        # own session: a Ctrl-C of the lab must not stop the engine under its containers
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    if wait_until(lambda: SOCKET.exists() and _ping(private_url()), START_TIMEOUT_S,
                  alive=lambda: proc.poll() is None):
        return proc
    if proc.poll() is not None:
        raise LabError(f"private dockerd exited with code {proc.returncode}; {LOG}:\n"
                       f"{tail(LOG)}", "see the log; `lab doctor` checks Docker")
    _stop_pid(proc.pid, proc)
    raise LabError(f"private dockerd did not answer within {START_TIMEOUT_S:.0f}s; {LOG}:\n"
                   f"{tail(LOG)}", "see the log")


def _stop_pid(pid: int, proc: subprocess.Popen[bytes] | None = None) -> None:
    """SIGTERM dockerd (it stops its containerd), SIGKILL both if it hangs."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)

    def gone() -> bool:
        if proc is not None:
            proc.poll()  # reap our child, else it stays a zombie
        return not _running(pid, "dockerd")

    if not wait_until(gone, STOP_TIMEOUT_S):
        _kill_engine(pid)
    if proc is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)
    SOCKET.unlink(missing_ok=True)
    _remove_exec_root()


def _kill_engine(pid: int) -> None:
    """SIGKILL a dockerd that would not stop, and its containerd (it would stay behind)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(OSError, ValueError):
        containerd = int((ENGINE_DIR / "exec" / "containerd" / "containerd.pid").read_text())
        if _running(containerd, "containerd"):
            os.kill(containerd, signal.SIGKILL)


def _remove_exec_root() -> None:
    """The stopped daemon's runtime state; never walk into a mount (a netns file) left in it."""
    exec_root = ENGINE_DIR / "exec"
    prefix = str(exec_root) + "/"
    with open("/proc/mounts") as f:
        points = [line.split()[1] for line in f if line.split()[1].startswith(prefix)]
    for point in sorted(points, key=len, reverse=True):
        # shelling out: umount(8); there is no SDK call for a stopped daemon's mounts
        subprocess.run(["umount", "-l", point], capture_output=True)
    shutil.rmtree(exec_root, ignore_errors=True)


# --- acquire / release -------------------------------------------------------------------------

_lock = threading.Lock()
_refs = 0
_engine: Engine | None = None
_proc: subprocess.Popen[bytes] | None = None


def acquire() -> Engine:
    """The engine to use, started if needed; pair every call with `release()`."""
    global _refs, _engine, _proc
    with _lock:
        if _engine is None:
            url = user_engine_url()
            if url is not None:
                _engine = Engine(_client(url), url, private=False)
            else:
                with _locked():
                    _holders()
                    if private_pid() is None:
                        _proc = _start_private()
                    _hold(True)
                _engine = Engine(_client(private_url()), private_url(), private=True)
        _refs += 1
        return _engine


def release() -> None:
    """Drop one reference; the last user of a private dockerd (in any process) stops it."""
    global _refs, _engine, _proc
    with _lock:
        if _refs == 0:
            return
        _refs -= 1
        if _refs > 0 or _engine is None:
            return
        engine, _engine = _engine, None
        engine.client.close()
        if not engine.private:
            return
        with _locked():
            _hold(False)
            pid = private_pid()
            if pid is not None and not _holders():
                _stop_pid(pid, _proc)
            _proc = None


@contextlib.contextmanager
def engine() -> Iterator[Engine]:
    """acquire() ... release() as a context manager."""
    eng = acquire()
    try:
        yield eng
    finally:
        release()


def run_labels(run_id: str) -> dict[str, str]:
    return {LABEL_RUN: run_id, LABEL_PID: str(os.getpid())}


# --- lab clean / lab doctor --------------------------------------------------------------------


def _live_runs() -> set[str]:
    """Runs alive now: by their kernel-held claim under any state dir (lab.net.runtime), or
    by a record of this state dir that is still alive (an older lab's, judged by its pid)."""
    return runtime.live_run_ids() | {str(r["run_id"]) for r in recorded_runs()
                                     if runtime.record_alive(r)}


def remove_container(container: Any) -> None:
    """Thaw (a `hang` fault pauses it) and remove by force; already gone is fine."""
    with contextlib.suppress(docker.errors.NotFound):
        container.reload()
        if container.status == "paused":
            container.unpause()
        container.remove(force=True)


def clean(include_live: bool = False) -> list[str]:
    """Remove containers of runs that are gone, then a private dockerd nobody holds."""
    removed: list[str] = []
    urls = [u for u in (user_engine_url(),) if u]
    if private_pid() is not None:
        urls.append(private_url())
    live = set() if include_live else _live_runs()
    for url in urls:
        client = _client(url)
        try:
            for c in client.containers.list(all=True, filters={"label": LABEL_RUN}):
                run_id = c.labels.get(LABEL_RUN, "")
                if run_id not in live:
                    remove_container(c)
                    removed.append(f"container {c.name} (run {run_id} gone) on {url}")
        finally:
            client.close()
    if not ENGINE_DIR.exists():
        return removed
    with _locked():
        pid = private_pid()
        if pid is not None and (include_live or not _holders()):
            _stop_pid(pid)
            removed.append(f"private dockerd pid {pid} (no live run holds it)")
    return removed


def status() -> tuple[bool, str]:
    """(usable, detail) for `lab doctor`, without starting anything."""
    url = user_engine_url()
    if url is not None:
        return True, f"user's engine at {url}"
    if private_pid() is not None:
        return True, f"private dockerd running at {private_url()} (pid {private_pid()})"
    if dockerd_binary() is None:
        return False, "no engine running and dockerd not installed: run 'make setup'"
    if os.geteuid() != 0:
        return False, "no engine running; the lab starts a private dockerd only as root"
    return True, f"no engine running: the lab starts a private dockerd (data-root {DATA_ROOT})"


def images_present(client: docker.DockerClient, refs: list[str]) -> dict[str, int | None]:
    """Size in bytes of each image reference present in the engine, None if absent."""
    out: dict[str, int | None] = {}
    for ref in refs:
        try:
            out[ref] = int(client.images.get(ref).attrs.get("Size", 0))
        except docker.errors.ImageNotFound:
            out[ref] = None
    return out
