"""Each fault kind on a real small lab: client -> nft lb (VIP) -> backend1 / backend2.

The backends are tests/lb/echo.py servers (real processes whose kernels answer for them);
the client holds ONE long-lived connection through the VIP, as a pooled app connection does.
Each test injects one fault with lab.experiment.faults.inject and looks at what the client and
the kernels then see: no answer and unacked data (silent), a reset, a frozen process whose
kernel still ACKs, and the failover to backend2 the fault leaves for the trial to run.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lab import lb
from lab.backends.base import ProcessBackend
from lab.config.settings import FaultSettings
from lab.experiment import faults
from lab.lb.base import LbOptions, RealServer
from lab.net.process import wait_until
from lab.net.runtime import Run
from lab.net.topology import Network, lvs_topology, lvs_vip

ECHO = str(Path(__file__).resolve().parents[1] / "lb" / "echo.py")
PORT = 7000
VIP_PORT = 3001
FAILOVER_S = 0.7


class EchoBackend(ProcessBackend):
    """The echo server as a backend: kill() and hang() are Backend's own (signals to its pid)."""

    kind = "echo"
    port = PORT

    def start(self) -> None:
        log = self.host.workdir / "echo.log"
        server = self._launch(
            [sys.executable, ECHO, "server", self.name, str(self.address), str(PORT)], log)
        assert wait_until(lambda: "listening" in log.read_text(), 10.0, alive=server.alive)


@dataclass
class SmallLab:
    net: Network
    target: faults.FaultTarget
    client: subprocess.Popen[str]

    def ask(self, cmd: str) -> str:
        """One command to the echo client; its one line of answer ("timeout", "reset", ...)."""
        assert self.client.stdin is not None and self.client.stdout is not None
        self.client.stdin.write(cmd + "\n")
        self.client.stdin.flush()
        return self.client.stdout.readline().strip()

    def queues(self, host: str, port: str) -> list[tuple[int, int]]:
        """(Recv-Q, Send-Q) of host's established connections with `port` (":7000" local on a
        backend, ":3001" remote on the client)."""
        side = "sport" if host.startswith("backend") else "dport"
        out = self.net[host].run(["ss", "-Htn", "state", "established",
                                  f"( {side} = {port} )"]).stdout
        return [(int(f[0]), int(f[1])) for f in (line.split() for line in out.splitlines())]


@pytest.fixture
def small_lab(lab_run: Run) -> Iterator[SmallLab]:
    with Network(lvs_topology(), lab_run) as net:
        vip = lvs_vip(lab_run)
        net.add_address("lb", str(vip), "to-client")
        backends = [EchoBackend(net[n], net[n].address_towards("lb"))
                    for n in ("backend1", "backend2")]
        balancer = lb.make("nft", net["lb"], vip, VIP_PORT, LbOptions())
        client: subprocess.Popen[str] | None = None
        try:
            for b in backends:
                b.start()
            balancer.setup()
            servers = [RealServer(b.name, b.address, b.port) for b in backends]
            balancer.add_real_server(servers[0])
            client = net["client"].popen(
                [sys.executable, ECHO, "client", str(vip), str(VIP_PORT)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            assert client.stdout is not None and client.stdout.readline().strip() == "connected"
            lab = SmallLab(net, faults.FaultTarget(balancer, backends[0], *servers), client)
            assert lab.ask("send ping") == "backend1:ping"
            yield lab
        finally:
            if client is not None:
                client.kill()
                client.wait()
            balancer.close()
            for b in backends:
                b.stop()


def inject(lab: SmallLab, kind: str, mode: str = "drop") -> tuple[str, list[faults.FollowUp]]:
    """Inject fault `kind` now (partition: `mode`), failing over FAILOVER_S later."""
    settings = FaultSettings.model_validate(
        {"kind": kind, "partition_mode": mode, "failover_after_s": FAILOVER_S})
    return faults.inject(settings, lab.target)


def process_state(pid: int | None) -> str:
    """The state letter of /proc/<pid>/stat (R, S, T = stopped, ...)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def assert_lost_silently(lab: SmallLab) -> None:
    """No answer and no reset: the bytes sent were never acked (still in the client's send
    queue) and never reached backend1."""
    assert lab.ask("send x") == "timeout"
    assert lab.queues("client", ":3001") == [(0, 2)]
    assert lab.queues("backend1", ":7000") == [(0, 0)]


def assert_fails_over(lab: SmallLab, followups: list[faults.FollowUp]) -> None:
    """One follow-up, the health checker's failover, due failover_after_s after the fault;
    once run, new connections land on backend2."""
    assert [(f.event, f.delay_s) for f in followups] == [("failover", FAILOVER_S)]
    assert "backend1" in followups[0].detail and "backend2" in followups[0].detail
    followups[0].action()
    assert lab.ask("new") == "backend2:hello"


@pytest.mark.root
def test_crash_is_silent_and_fails_over(small_lab: SmallLab) -> None:
    detail, followups = inject(small_lab, "crash")
    assert "no RST" in detail
    assert_lost_silently(small_lab)
    assert small_lab.target.active.pid is not None  # the server itself still runs
    assert_fails_over(small_lab, followups)


@pytest.mark.root
def test_kill_ends_the_server_and_its_kernel_closes_the_connection(small_lab: SmallLab) -> None:
    pid = small_lab.target.active.pid
    assert pid is not None
    detail, followups = inject(small_lab, "kill")
    assert f"kill -9 {pid}" in detail
    assert wait_until(lambda: small_lab.target.active.pid is None, 5.0)  # it exited
    assert small_lab.ask("send x") in ("eof", "reset")
    assert small_lab.queues("backend1", ":7000") == []
    assert_fails_over(small_lab, followups)


@pytest.mark.root
def test_hang_stops_the_process_while_its_kernel_still_acks(small_lab: SmallLab) -> None:
    pid = small_lab.target.active.pid
    detail, followups = inject(small_lab, "hang")
    assert f"SIGSTOP {pid}" in detail
    assert wait_until(lambda: process_state(pid) == "T", 2.0)  # stopped
    assert small_lab.ask("send x") == "timeout"
    # the kernel acked the bytes (the client's send queue is empty), nobody read them
    assert small_lab.queues("client", ":3001") == [(0, 0)]
    assert small_lab.queues("backend1", ":7000") == [(2, 0)]
    assert_fails_over(small_lab, followups)


@pytest.mark.root
def test_partition_drop_loses_the_packets_silently(small_lab: SmallLab) -> None:
    detail, followups = inject(small_lab, "partition", "drop")
    assert detail == "lb<->backend1 path: drop"
    assert_lost_silently(small_lab)
    assert_fails_over(small_lab, followups)


@pytest.mark.root
def test_partition_reject_resets_the_client(small_lab: SmallLab) -> None:
    detail, followups = inject(small_lab, "partition", "reject")
    assert detail == "lb<->backend1 path: reject"
    assert small_lab.ask("send x") == "reset"
    assert small_lab.queues("client", ":3001") == []  # the reset ended the connection
    assert_fails_over(small_lab, followups)


@pytest.mark.root
def test_switchover_blackholes_the_old_connection_with_no_follow_up(
    small_lab: SmallLab,
) -> None:
    detail, followups = inject(small_lab, "switchover")
    assert detail.startswith("switchover backend1(") and "-> backend2(" in detail
    assert followups == []  # the lb itself moved: nothing left for a health checker
    assert small_lab.ask("new") == "backend2:hello"
    # expire_nodest_conn=0: the lb drops the old connection's packets
    assert_lost_silently(small_lab)
