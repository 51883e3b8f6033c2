"""NginxServer and the article's LVS + NGINX switchover (issue 6, bar 1).

The server tests use a real nginx in a namespace, reached only from the client namespace.
The switchover tests run scenarios/nginx-switchover.toml through MatrixRun (both trials side
by side), exactly as `lab run` would.
"""

from __future__ import annotations

import csv
import ipaddress
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.backends.nginx import KEEPALIVE_S, NginxServer, render_config
from lab.config import scenario
from lab.experiment.matrix import MatrixRun
from lab.net.topology import Network
from tests.backends.access import nobody_connects, nobody_lists

ROOT = Path(__file__).resolve().parents[2]

# runs inside the client namespace: GET / over a fresh connection, prints "status body" or
# the error's class name
CLIENT_GET = """
import http.client, sys
try:
    c = http.client.HTTPConnection(sys.argv[1], int(sys.argv[2]), timeout=float(sys.argv[3]))
    c.request("GET", "/")
    r = c.getresponse()
    print(r.status, r.read().decode().strip())
except Exception as exc:
    print(type(exc).__name__)
"""


def get(net: Network, server: NginxServer, timeout: float = 2.0) -> str:
    out = net["client"].run([sys.executable, "-c", CLIENT_GET, str(server.address),
                             str(server.port), str(timeout)], timeout=timeout + 10)
    return out.stdout.strip()


def nginx_pids() -> set[int]:
    """Every nginx process on the machine (ours must be gone after a stop / a run)."""
    out = subprocess.run(["pgrep", "-x", "nginx"], capture_output=True, text=True).stdout
    return {int(p) for p in out.split()}


def test_config_keeps_connections_and_serves_its_name(tmp_path: Path) -> None:
    conf = render_config("backend1", ipaddress.IPv4Address("198.18.1.2"), 80, tmp_path)
    assert "master_process off;" in conf and "daemon off;" in conf and "user root;" in conf
    assert f"keepalive_timeout {KEEPALIVE_S}s;" in conf and "keepalive_requests 1000000000;" \
        in conf and f"keepalive_time {KEEPALIVE_S}s;" in conf
    assert "listen 198.18.1.2:80;" in conf and f"listen unix:{tmp_path}/nginx.sock;" in conf
    assert 'return 200 "backend1\\n";' in conf
    assert "/etc/nginx" not in conf and "/var/" not in conf  # nothing of the system's nginx


@pytest.fixture
def server(network: Network) -> Iterator[NginxServer]:
    db = network["db"]
    s = NginxServer(db, db.address_towards("client"))
    try:
        s.start()
        yield s
    finally:
        s.stop()


@pytest.mark.root
def test_server_answers_its_name_from_the_client_namespace(
    network: Network, server: NginxServer
) -> None:
    pid = server.pid
    assert pid is not None
    assert Path(f"/proc/{pid}/comm").read_text().strip() == "nginx"
    # single process mode: the pid faults signal is the only nginx process of the namespace
    assert [p for p in network["db"].pids()
            if Path(f"/proc/{p}/comm").read_text().strip() == "nginx"] == [pid]
    assert get(network, server) == "200 db"
    assert server.identity() == "db"
    server.stop()
    server.stop()  # idempotent
    assert server.pid is None and pid not in nginx_pids()


@pytest.mark.root
def test_kill_and_hang_act_on_the_serving_process(network: Network, server: NginxServer) -> None:
    pid = server.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)  # the "hang" fault: the kernel still accepts, nobody answers
    assert get(network, server, timeout=1.0) == "TimeoutError"
    os.kill(pid, signal.SIGKILL)  # the "kill" fault: nothing listens any more
    time.sleep(0.1)
    assert get(network, server) == "ConnectionRefusedError"
    server.stop()  # copes with a killed server
    server.start()  # and starts again (a stale unix socket must not stop it)
    assert get(network, server) == "200 db"


@pytest.mark.root
def test_only_root_reaches_it(network: Network) -> None:
    os.chmod(network.run.workdir, 0o700)  # what a run's scratch dir is: it must still work
    db = network["db"]
    server = NginxServer(db, db.address_towards("client"))
    try:
        server.start()
        assert get(network, server) == "200 db"
        assert server.pid is not None
        uids = next(line for line in Path(f"/proc/{server.pid}/status").read_text().splitlines()
                    if line.startswith("Uid:"))
        assert uids.split()[1:] == ["0"] * 4  # it never drops to `nobody` (user root)
        assert stat.S_IMODE(os.stat(server.dir).st_mode) == 0o700
        os.chmod(network.run.workdir, 0o755)  # even with an open scratch dir above it:
        assert nobody_connects(server.socket_path) == "EACCES"
        assert nobody_lists(server.dir) != 0
    finally:
        server.stop()


# --- bar 1: the article's LVS + NGINX switchover -------------------------------------------------


def rows_by_trial(run_dir: Path) -> dict[str, dict[str, str]]:
    with open(run_dir / "summary.csv") as f:
        return {r["trial"]: r for r in csv.DictReader(f)}


def events(trial_dir: Path) -> list[dict[str, str]]:
    with open(trial_dir / "events.csv") as f:
        return list(csv.DictReader(f))


def timeline(trial_dir: Path) -> list[dict[str, float]]:
    with open(trial_dir / "timeline.csv") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


@pytest.fixture(scope="module")
def nginx_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, dict[str, str]]]:
    run_dir = tmp_path_factory.mktemp("nginx-run")
    before = nginx_pids()
    scen = scenario.load(ROOT / "scenarios" / "nginx-switchover.toml")
    matrix = MatrixRun(scen, run_dir)
    matrix.run()
    assert matrix.failures == {}
    assert nginx_pids() <= before, "a finished run left nginx servers behind"
    return run_dir, rows_by_trial(run_dir)


@pytest.mark.root
def test_nginx_switchover_blackholes_with_retries2_5(
    nginx_run: tuple[Path, dict[str, dict[str, str]]],
) -> None:
    run_dir, rows = nginx_run
    row = rows["nginx-switchover-retries2-5"]
    outage = float(row["measured_outage_s"])
    print(f"nginx switchover, tcp_retries2=5: outage {outage:.2f} s "
          f"(model {row['predicted_outage_s']} s)")
    assert (row["backend"], row["driver"]) == ("nginx", "http")
    assert 12.0 <= outage <= 16.0
    assert int(row["reconnects"]) == 1
    evs = events(run_dir / row["trial"])
    first_error = next(e["detail"] for e in evs if e["event"] == "first_error")
    assert "Errno 110" in first_error  # ETIMEDOUT: the client's kernel gave up
    fault_t = next(float(e["t_s"]) for e in evs if e["event"] == "fault")
    tl = timeline(run_dir / row["trial"])
    before = [s["tps"] for s in tl if s["t_s"] <= fault_t]
    during = [s["tps"] for s in tl if fault_t + 1.0 < s["t_s"] <= fault_t + outage - 0.5]
    after = [s["tps"] for s in tl if s["t_s"] > fault_t + outage + 1.0]
    assert before and min(before) > 0 and during and max(during) == 0 and after
    assert min(after) > 0
    assert all(s["qps"] == s["reads"] == s["tps"] and s["writes"] == 0 for s in tl)


@pytest.mark.root
def test_nginx_switchover_recovers_fast_with_expire_nodest_conn(
    nginx_run: tuple[Path, dict[str, dict[str, str]]],
) -> None:
    run_dir, rows = nginx_run
    row = rows["nginx-switchover-expire-nodest-conn"]
    outage = float(row["measured_outage_s"])
    print(f"nginx switchover, expire_nodest_conn=1: outage {outage:.3f} s")
    assert outage < 2.0
    first_error = next(e["detail"] for e in events(run_dir / row["trial"])
                       if e["event"] == "first_error")
    assert "Errno 104" in first_error  # ECONNRESET: the lb reset the old connection
