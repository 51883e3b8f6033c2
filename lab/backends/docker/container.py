"""Provider `docker`: the same MariaDB / NGINX servers, each in a container.

A container gets no Docker networking (network_mode "none"). Once it runs, the topology layer
moves the backend host's links into the container's network namespace and re-points the
host's namespace name at it (lab.net.topology.adopt_namespace), so the LB engines, faults, captures
and drivers work on it by name, unchanged. Faults map onto the container: crash = its link's
packets dropped (nft in its namespace, as for a process), kill = kill -9 of its server process
(the container's PID 1), hang = `docker pause` (the cgroup freezer: the kernel still ACKs).

A folder of the host's scratch dir is bind-mounted at MOUNT: the server's unix socket, logs and
config live there, so setup and health checks go over the unix socket from the host as for a
process backend, and never over TCP from the host namespace. The containers carry the run's
labels (lab.backends.docker.engine.run_labels) and are removed, thawed first, on stop().

That folder is 0700 (only root reaches a lab server). The lab image's mariadbd and
every nginx run as root in their container; an official mysql/mariadb image's server runs as
its own `mysql` user, so for it the folder is chowned to that user's uid (read from the image)
instead of being opened to everyone. The official image's root is created for localhost only
(the socket), never for '%', and sbtest gets the run's password when it is created.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import time
from pathlib import Path
from typing import Any

import docker.errors

from lab.backends.base import Pollable, check_socket_path, private_dir, wait_healthy
from lab.backends.docker import engine as docker_engine
from lab.backends.mariadb import (
    SET_IDENTITY_SQL,
    MariaDBServer,
    _server_argv,
    _wait_healthy,
    load_sbtest,
)
from lab.backends.nginx import NginxServer, render_config
from lab.errors import LabError
from lab.images import docker as docker_image
from lab.net.process import tail
from lab.net.topology import Host, adopt_namespace

MOUNT = "/run/lab"
START_TIMEOUT_S = 60.0  # an official mysql image initialises its datadir on first start
# "auto" without the lab image: the official images (they have an entrypoint that sets up)
OFFICIAL = {"mariadb": "mysql", "nginx": "nginx"}


def resolve_image(client: docker.DockerClient, kind: str, setting: str) -> tuple[str, bool]:
    """(image reference, is it the lab's image) for a backend kind's `images.<kind>` setting.

    An image the engine lacks is pulled (the ordinary `docker run` behaviour), except the lab
    image, which only `lab image build` makes."""
    if setting == "auto":
        if docker_image.find(client) is not None:
            return docker_image.image_ref(), True
        setting = OFFICIAL[kind]
    try:
        image = client.images.get(setting)
    except docker.errors.ImageNotFound:
        if setting == docker_image.image_ref():
            raise LabError(f"image {setting} not built", "run 'lab image build'") from None
        try:
            image = client.images.pull(setting)
        except docker.errors.APIError as exc:
            raise LabError(f"image {setting!r} is not in the engine and cannot be pulled "
                           f"({exc.explanation or exc})",
                           "run 'lab image build' (the offline lab image) and use "
                           f"images.{kind}='auto'") from None
    return setting, docker_image.LABEL_IMAGE in (image.labels or {})


_image_users: dict[tuple[str, str], tuple[int, int]] = {}


def _image_user(client: docker.DockerClient, image: str, user: str,
                labels: dict[str, str]) -> tuple[int, int]:
    """(uid, gid) of `user` in `image`, asked of a throw-away container (once per image;
    `labels`: the run's, so that `lab clean` finds it if the lab dies meanwhile)."""
    if (image, user) in _image_users:
        return _image_users[image, user]
    out = client.containers.run(image, ["-c", f"id -u {user} && id -g {user}"],
                                entrypoint="sh", network_mode="none", remove=True,
                                labels=labels)
    try:
        uid, gid = (int(v) for v in out.decode().split())
    except ValueError:
        raise LabError(f"image {image}: no user {user!r} to give its server's folder to "
                       f"(id said {out.decode().strip()!r})",
                       "use the lab image (images.mariadb='auto', 'lab image build')") from None
    _image_users[image, user] = uid, gid
    return uid, gid


class Container:
    """One backend's container: engine reference, start, adoption of its netns, removal.

    Also what a startup wait watches (`alive()` / `returncode`, like a ChildProcess)."""

    def __init__(self, host: Host, kind: str, image: str) -> None:
        self.host = host
        self.kind = kind
        self.image_setting = image
        self.image = ""
        self.lab_image = False
        self._engine: docker_engine.Engine | None = None
        self._c: Any = None  # docker.models.containers.Container
        self.returncode: int | None = None

    @property
    def name(self) -> str:
        return self.host.ns

    def open(self) -> bool:
        """Take an engine reference and resolve the image; True if it is the lab's image."""
        if self._engine is None:
            self._engine = docker_engine.acquire()
        self.image, self.lab_image = resolve_image(self._engine.client, self.kind,
                                                   self.image_setting)
        return self.lab_image

    def user_ids(self, user: str) -> tuple[int, int]:
        """(uid, gid) of `user` in the resolved image."""
        assert self._engine is not None, "open() first"
        return _image_user(self._engine.client, self.image, user,
                           docker_engine.run_labels(self.host.run_id))

    def run(self, argv: list[str], run_dir: Path, environment: dict[str, str] | None = None
            ) -> int:
        """Start the container and move the host's namespace into it; returns its PID."""
        assert self._engine is not None, "open() first"
        self._c = self._engine.client.containers.run(
            self.image, argv, detach=True, name=self.name, hostname=self.host.name,
            network_mode="none", labels={**docker_engine.run_labels(self.host.run_id),
                                         "blackhole-lab.host": self.host.name},
            volumes={str(run_dir): {"bind": MOUNT, "mode": "rw"}},
            environment=environment or {},
        )
        self._c.reload()
        pid = int(self._c.attrs["State"].get("Pid") or 0)
        if pid <= 0:
            raise RuntimeError(f"{self.name}: container exited at once "
                               f"({self._c.attrs['State'].get('ExitCode')}):\n{self.logs()}")
        adopt_namespace(self.host, pid)
        return pid

    def state(self) -> dict[str, Any]:
        if self._c is None:
            return {}
        try:
            self._c.reload()
        except docker.errors.NotFound:
            return {}
        return dict(self._c.attrs["State"])

    def poll(self) -> int | None:
        state = self.state()
        if state.get("Running"):
            return None
        self.returncode = int(state.get("ExitCode", -1))
        return self.returncode

    def alive(self) -> bool:
        return self.poll() is None

    @property
    def pid(self) -> int | None:
        """The server process (the container's PID 1, seen from here); None once it exited."""
        state = self.state()
        return int(state["Pid"]) if state.get("Running") and state.get("Pid") else None

    def logs(self, lines: int = 15) -> str:
        try:
            return self._c.logs(tail=lines).decode(errors="replace") if self._c else ""
        except docker.errors.APIError as exc:
            return f"(no logs: {exc})"

    def pause(self) -> str:
        self._c.pause()
        return (f"docker pause {self.name} (cgroup freezer): its kernel still ACKs, the "
                "server never answers")

    def remove(self) -> None:
        """Thaw, remove by force (idempotent), and drop the engine reference. Also finds the
        container by name when a Ctrl-C hit between its creation and `run()` returning."""
        try:
            if self._c is None and self._engine is not None:
                with contextlib.suppress(docker.errors.NotFound):
                    found = self._engine.client.containers.get(self.name)
                    if found.labels.get(docker_engine.LABEL_RUN) == self.host.run_id:
                        self._c = found
            if self._c is not None:
                docker_engine.remove_container(self._c)
                self._c = None
        finally:
            if self._engine is not None:
                self._engine = None
                docker_engine.release()


def _wait_listening(host: Host, container: Container, port: int, log: Path,
                    timeout: float = START_TIMEOUT_S) -> None:
    """Until the server listens on *:port in its namespace (an official image's entrypoint
    first runs a socket-only server to initialise, then restarts: that one must not count)."""

    def listening() -> bool:
        out = host.run(["ss", "-Hltn"], check=False).stdout
        return any(tok.endswith(f":{port}")
                   for line in out.splitlines() for tok in line.split()[3:4])

    wait_healthy(
        listening, container, timeout, interval=0.05,
        exited=lambda: (f"{host.name}: container exited ({container.returncode}) during "
                        f"startup:\n{container.logs()}\n{tail(log)}"),
        silent=lambda _: (f"{host.name}: nothing listens on port {port} after {timeout:.0f}s:"
                          f"\n{container.logs()}\n{tail(log)}"))


class InContainer:
    """What a backend in a container does differently from its process provider: its server
    is the container's PID 1, a hang is `docker pause`, stop removes the container."""

    provider = "docker"
    container: Container
    timings: dict[str, float]

    @property
    def pid(self) -> int | None:
        return self.container.pid

    def hang(self) -> str:
        return self.container.pause()

    def stop(self) -> None:
        t0 = time.monotonic()
        self.container.remove()
        self.timings["stop_s"] = time.monotonic() - t0


class DockerMariaDB(InContainer, MariaDBServer):
    """MariaDB in a container (the lab image's mariadbd, or an official mysql/mariadb image).

    The lab image's datadir is the one its package postinst initialised; the sbtest tables
    (what sysbench prepare makes) are loaded at each start, in the container's own layer,
    which goes away with it."""

    def __init__(self, host: Host, address: ipaddress.IPv4Address, *, image: str = "auto",
                 port: int = 3306, tables: int = 4, table_size: int = 1000) -> None:
        super().__init__(host, address, port=port, tables=tables, table_size=table_size)
        self._use_dir("mariadb-container", "mysqld.sock")
        self.container = Container(host, self.kind, image)

    def _argv(self, lab_image: bool) -> tuple[list[str], dict[str, str]]:
        mount = Path(MOUNT)
        options = ["--bind-address=0.0.0.0", f"--port={self.port}",
                   "--innodb-fast-shutdown=3", f"--report-host={self.name}"]
        if lab_image:
            # --no-defaults must be the first option (mariadbd rejects it anywhere else)
            return _server_argv(Path("/var/lib/mysql"), mount, mount / "mysqld.sock", *options,
                                binary="/usr/sbin/mariadbd"), {}
        # an official image: its entrypoint initialises the datadir (root over the socket,
        # no password, and only for localhost: no root@'%' on TCP), then runs the server with
        # these options
        server = "mariadbd" if self.container.image.split("/")[-1].startswith("mariadb") \
            else "mysqld"
        return [server, f"--socket={mount}/mysqld.sock", f"--log-error={mount}/error.log",
                f"--pid-file={mount}/mysqld.pid", "--skip-log-bin", "--skip-name-resolve",
                *options], {"MYSQL_ALLOW_EMPTY_PASSWORD": "yes",
                            "MARIADB_ALLOW_EMPTY_ROOT_PASSWORD": "yes",
                            "MYSQL_ROOT_HOST": "localhost", "MARIADB_ROOT_HOST": "localhost"}

    def _own_dir(self, lab_image: bool) -> None:
        """The mounted folder, 0700, owned by the user the server runs as: root (the lab
        image), or the official image's `mysql` (its entrypoint drops to it)."""
        private_dir(self.dir)
        if not lab_image:
            uid, gid = self.container.user_ids("mysql")
            os.chown(self.dir, uid, gid)

    def start(self) -> None:
        self._refuse_if_running("container")
        check_socket_path(self.socket_path)
        t0 = time.monotonic()
        self.socket_path.unlink(missing_ok=True)
        with self._stopped_on_failure():
            lab_image = self.container.open()
            self._own_dir(lab_image)
            argv, env = self._argv(lab_image)
            self.container.run(argv, self.dir, env)
            t1 = time.monotonic()
            _wait_listening(self.host, self.container, self.port, self.error_log)
            _wait_healthy(self.container, self.socket_path, self.error_log, START_TIMEOUT_S)
            t2 = time.monotonic()
            # a new account, created with the run's password: no window with a known one
            load_sbtest(self.socket_path, self.tables, self.table_size, self.password)
            self.query(SET_IDENTITY_SQL, (self.name,))
        t3 = time.monotonic()
        self.timings = {"container_s": t1 - t0, "ready_s": t2 - t1, "load_s": t3 - t2,
                        "total_s": t3 - t0}


class DockerNginx(InContainer, NginxServer):
    """nginx in a container, with the process provider's config (single process, long
    keep-alive, body = the backend's name), listening on 0.0.0.0 of its namespace."""

    start_timeout_s = START_TIMEOUT_S
    health_interval_s = 0.02

    def __init__(self, host: Host, address: ipaddress.IPv4Address, *, image: str = "auto",
                 port: int = 80) -> None:
        super().__init__(host, address, port=port)
        self._use_dir("nginx-container", "nginx.sock")
        self.container = Container(host, self.kind, image)

    def _config(self) -> str:
        return render_config(self.name, ipaddress.IPv4Address("0.0.0.0"), self.port,
                             Path(MOUNT))

    def _run_server(self) -> Pollable:
        self.container.open()
        self.container.run(["nginx", "-p", MOUNT, "-c", f"{MOUNT}/nginx.conf",
                            "-e", f"{MOUNT}/error.log"], self.dir)
        return self.container

    def _startup_log(self) -> str:
        return f"container logs:\n{self.container.logs()}\n{tail(self.error_log)}"
