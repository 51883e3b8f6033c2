"""Provider `docker` (issue 9): the real servers as containers, wired into the lab's namespaces.

One module-scoped run feeds the root tests: it takes the lab's engine (a private dockerd here
and in CI), builds the lab image if it is absent (the same code as `lab image build`), starts
a *user's* container (no lab label), runs scenarios/docker-switchover.toml (process vs docker
switchover, and two hangs of a paused container) side by side, then checks what is left:
the user's container untouched, no lab container, and once the engine is released no private
dockerd, no new `bhl-` namespace and no new link.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from lab.backends.docker import engine as docker_engine
from lab.backends.docker.container import MOUNT, DockerMariaDB
from lab.config import scenario
from lab.config.settings import TrialSettings
from lab.experiment.matrix import MatrixRun
from lab.images import docker as docker_image
from lab.net import runtime
from lab.net.topology import Host
from lab.ops import cleanup

ROOT = Path(__file__).resolve().parents[3]
DAEMONS = ("dockerd", "containerd", "containerd-shim-runc-v2")


def _lines(argv: list[str]) -> set[str]:
    return set(subprocess.run(argv, capture_output=True, text=True).stdout.splitlines())


def snapshot() -> dict[str, set[str]]:
    """What exists now: so another lab run beside the tests is not taken for a leak."""
    return {
        "namespaces": {n.split()[0] for n in _lines(["ip", "netns", "list"])
                       if n.startswith("bhl-")},
        "links": {line.split()[0] for line in _lines(["ip", "-br", "link"])},
        "daemons": _lines(["pgrep", "-a", "-x", "|".join(DAEMONS)]),
        "iptables": _lines(["nft", "list", "ruleset"]),
        "sysctls": {f"{k}={Path('/proc/sys', *k.split('.')).read_text().strip()}" for k in (
            "net.ipv4.ip_forward", "net.ipv4.tcp_retries2", "net.bridge.bridge-nf-call-iptables")
            if Path("/proc/sys", *k.split(".")).exists()},
    }


def new_since(before: dict[str, set[str]]) -> dict[str, set[str]]:
    """What appeared since `before`, less the namespaces of other live runs (a user's run
    that started meanwhile)."""
    now = snapshot()
    theirs = tuple(f"{runtime.NS_PREFIX}{r}-" for r in runtime.foreign_run_ids((os.getpid(),)))
    still = snapshot()["namespaces"]  # what went meanwhile was removed by its owner
    now["namespaces"] = {n for n in now["namespaces"] & still if not n.startswith(theirs)}
    return {k: now[k] - before[k] for k in before if now[k] - before[k]}


@pytest.fixture(scope="module")
def docker_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    before = snapshot()
    facts: dict[str, Any] = {}
    eng = docker_engine.acquire()
    try:
        facts["engine"] = eng.describe()
        facts["build"] = docker_image.build(eng.client)
        print(f"\n{facts['engine']}\n{facts['build'].line()}")
        user = eng.client.containers.run(
            docker_image.image_ref(), ["sleep", "infinity"], detach=True, network_mode="none",
            name=f"user-container-{secrets.token_hex(3)}")
        try:
            user.reload()
            started = user.attrs["State"]["StartedAt"]
            run_dir = tmp_path_factory.mktemp("docker-run")
            scen = scenario.load(ROOT / "scenarios" / "docker-switchover.toml")
            matrix = MatrixRun(scen, run_dir)
            facts["rows"] = {r["trial"]: r for r in matrix.run()}
            facts["failures"] = matrix.failures
            facts["run_dir"] = run_dir
            user.reload()
            facts["user_after"] = (user.status, user.attrs["State"]["StartedAt"] == started,
                                   user.labels)
            facts["lab_containers"] = [c.name for c in eng.client.containers.list(
                all=True, filters={"label": docker_engine.LABEL_RUN})]
        finally:
            user.remove(force=True)
    finally:
        docker_engine.release()
    facts["left"] = new_since(before)
    facts["private_dockerd"] = docker_engine.private_pid()
    yield facts


def _outage(row: dict[str, Any]) -> float | None:
    value = row["measured_outage_s"]
    return None if value in ("", None) else float(value)


@pytest.mark.root
def test_docker_switchover_outage_matches_process_provider(docker_run: dict[str, Any]) -> None:
    rows = docker_run["rows"]
    assert not docker_run["failures"], docker_run["failures"]
    process = _outage(rows["process-switchover"])
    container = _outage(rows["docker-switchover"])
    print(f"\nswitchover tcp_retries2=5: process {process} s, docker {container} s "
          f"(predicted {rows['docker-switchover']['predicted_outage_s']} s)")
    assert process is not None and container is not None
    assert abs(container - process) <= 0.05 * process, (process, container)
    assert rows["docker-switchover"]["verdict"].startswith("ok"), rows["docker-switchover"]


@pytest.mark.root
def test_docker_hang_only_a_read_timeout_ends_it(docker_run: dict[str, Any]) -> None:
    rows = docker_run["rows"]
    assert not docker_run["failures"], docker_run["failures"]
    with_timeout = rows["docker-hang-read-timeout"]
    without = rows["docker-hang-no-timeout"]
    print(f"\ndocker pause, read_timeout_s=3: outage {with_timeout['measured_outage_s']} s; "
          f"no read timeout: {without['measured_outage_s'] or 'not recovered'} by "
          f"{without['deadline_s']} s")
    outage = _outage(with_timeout)
    assert outage is not None and 2.9 <= outage <= 3.6, with_timeout
    assert _outage(without) is None, without  # tcp_retries2=5 never fires: the kernel ACKs
    events = (docker_run["run_dir"] / "docker-hang-read-timeout" / "events.csv").read_text()
    assert "docker pause" in events


@pytest.mark.root
def test_docker_nginx_kill_resets_at_once(docker_run: dict[str, Any]) -> None:
    row = docker_run["rows"]["docker-nginx-kill"]
    print(f"\nnginx container, kill -9: outage {row['measured_outage_s']} s ({row['verdict']})")
    assert row["verdict"].startswith("ok"), row
    assert _outage(row) is not None and _outage(row) < 1.0  # type: ignore[operator]


@pytest.mark.root
def test_nothing_left_and_users_container_untouched(docker_run: dict[str, Any]) -> None:
    status, same_start, labels = docker_run["user_after"]
    assert status == "running" and same_start, docker_run["user_after"]
    assert docker_engine.LABEL_RUN not in labels
    assert docker_run["lab_containers"] == [], "lab containers left after the run"
    assert docker_run["left"] == {}, f"left behind: {docker_run['left']}"
    assert docker_run["private_dockerd"] is None
    assert not (docker_engine.ENGINE_DIR / "exec").exists()
    assert not list(docker_image.BUILD_ROOT.glob("build-*")), "image-build leftovers"


@pytest.mark.root
def test_image_build_is_idempotent_and_reports_time_and_size() -> None:
    """`lab image build` twice (the first may build, on a fresh machine): the second skips,
    both print their time and the image's size, and one image of the lab's tag exists."""
    lines = []
    for _ in range(2):
        out = subprocess.run([sys.executable, "-m", "lab.cli", "image", "build"],
                             capture_output=True, text=True, timeout=900)
        assert out.returncode == 0, out.stderr
        lines.append(out.stdout.strip().splitlines()[-1])
    print("\n" + "\n".join(lines))
    pattern = (rf"image {re.escape(docker_image.image_ref())}: (built|present, build skipped) "
               r"in (\d+\.\d) s, size (\d+) MB")
    first, second = (re.fullmatch(pattern, line) for line in lines)
    assert first and second, lines
    assert second.group(1) == "present, build skipped"
    assert float(second.group(2)) < 5 and int(second.group(3)) > 100
    assert docker_engine.private_pid() is None  # each call stopped the dockerd it started
    assert not list(docker_image.BUILD_ROOT.glob("build-*"))


@pytest.mark.root
def test_clean_removes_only_containers_of_dead_runs() -> None:
    with docker_engine.engine() as eng:
        ref = docker_image.build(eng.client).ref
        user = eng.client.containers.run(ref, ["sleep", "infinity"], detach=True,
                                         network_mode="none")
        dead = eng.client.containers.run(
            ref, ["sleep", "infinity"], detach=True, network_mode="none",
            labels={docker_engine.LABEL_RUN: "dead00", docker_engine.LABEL_PID: "1"})
        try:
            dead.pause()  # as a `hang` trial killed mid-fault leaves it
            removed = docker_engine.clean()
            assert any(dead.name in line for line in removed), removed
            names = {c.name for c in eng.client.containers.list(all=True)}
            assert user.name in names and dead.name not in names
            assert docker_engine.private_pid() is not None  # we still hold it
        finally:
            user.remove(force=True)
            docker_engine.remove_container(dead)
    assert docker_engine.private_pid() is None


@pytest.mark.root
def test_doctor_reports_docker_and_images() -> None:
    out = subprocess.run([sys.executable, "-m", "lab.cli", "doctor", "--json"],
                         capture_output=True, text=True).stdout
    rows = {row["name"]: row for row in json.loads(out)}
    assert rows["docker"]["ok"] and "at unix://" in rows["docker"]["detail"], rows["docker"]
    assert docker_image.image_ref() in rows["docker images"]["detail"], rows["docker images"]
    assert docker_engine.private_pid() is None  # the probe stopped the dockerd it started


BUILD_AND_WAIT = """
import time
from lab.backends.docker.container import DockerMariaDB
from lab.net.runtime import new_run
from lab.net.topology import Network, lvs_topology
run = new_run()
net = Network(lvs_topology(), run)
server = DockerMariaDB(net["backend1"], net["backend1"].address_towards("lb"))
server.start()
print(run.run_id, server.container.name, server.pid, flush=True)
time.sleep(1000)
"""


@pytest.mark.root
def test_clean_after_kill_9_of_a_docker_run() -> None:
    """A run killed with its container running: `lab clean` removes the container, the
    private dockerd it held and its namespaces."""
    proc = subprocess.Popen([sys.executable, "-c", BUILD_AND_WAIT], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None
    try:
        run_id, name, pid = proc.stdout.readline().split()
    finally:
        proc.kill()
        proc.wait()
    private = docker_engine.user_engine_url() is None
    assert not private or docker_engine.private_pid() is not None
    removed = cleanup.clean()
    print("\n" + "\n".join(removed))
    assert any(f"container {name}" in line for line in removed), removed
    assert not private or any("private dockerd" in line for line in removed), removed
    assert not any(n.startswith(f"bhl-{run_id}-") for n in _lines(["ip", "netns", "list"]))
    assert docker_engine.private_pid() is None
    assert not Path(f"/proc/{pid}/cmdline").exists() or not Path(
        f"/proc/{pid}/cmdline").read_bytes()  # the container's mariadbd is gone (or a zombie)


def test_provider_and_image_settings_are_validated() -> None:
    s = TrialSettings.model_validate({"provider": "docker", "images": {"mariadb": "mysql:8.4"}})
    assert s.provider == "docker" and s.images.mariadb == "mysql:8.4"
    assert s.flat()["images.nginx"] == "auto"
    with pytest.raises(ValidationError, match="provider"):
        TrialSettings.model_validate({"provider": "podman"})
    with pytest.raises(ValidationError, match=r"images\.mariadb"):
        TrialSettings.model_validate({"images": {"mariadb": "Not An Image!"}})
    with pytest.raises(ValidationError, match="images"):
        TrialSettings.model_validate({"images": {"redis": "redis"}})
    with pytest.raises(ValidationError, match="lab image build"):
        TrialSettings.model_validate({"images": {"nginx": "blackhole-lab/base:old"}})
    ok = TrialSettings.model_validate({"images": {"nginx": docker_image.image_ref()}})
    assert ok.images.nginx == docker_image.image_ref()


def test_an_official_mysql_image_gets_no_root_for_tcp(tmp_path: Path) -> None:
    """Issue 13: the official image's entrypoint would create root@'%' without a password,
    reachable over TCP by anything in the lab's namespaces; root stays at localhost (the
    socket, in a 0700 folder)."""
    host = Host("backend1", "bhl-none-backend1", tmp_path, run_id="none")
    server = DockerMariaDB(host, ipaddress.IPv4Address("198.18.1.2"))
    server.container.image = "mysql:8.4"
    argv, env = server._argv(lab_image=False)
    assert argv[0] == "mysqld" and f"--socket={MOUNT}/mysqld.sock" in argv
    assert env["MYSQL_ROOT_HOST"] == env["MARIADB_ROOT_HOST"] == "localhost"
    assert not any(server.password in a for a in argv) and server.password not in env.values()
