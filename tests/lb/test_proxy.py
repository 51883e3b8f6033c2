"""The proxy engine (HAProxy, mode tcp): LVS-like controls, and what layer 7 does to the
blackhole (issue 6, bar 2). Real namespaces, real HAProxy, real MariaDB, no mocks.

The layer-7 trials run scenarios/proxy-layer7.toml side by side with `proxy_trial` below:
the same phases as lab.experiment.trial.run_trial (build, load, inject, observe), but the test keeps
the namespaces, so it can read the client's and the proxy's kernel counters (nstat) before
and after the fault, and the trial gets its lb.proxy_* settings (see the report: run_trial
does not pass them to the engine yet).
"""

from __future__ import annotations

import contextlib
import ipaddress
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from lab import backends, lb
from lab.config import scenario
from lab.config.settings import LbSettings, TrialSettings
from lab.experiment import faults
from lab.experiment.options import backend_options, lb_options
from lab.lb import LbOptions, RealServer
from lab.lb.proxy import ProxyLoadBalancer, ProxyTuning, _duration_s, parse_show_sess, render_config
from lab.load.base import DriverProcess
from lab.net.runtime import Run, new_run
from lab.net.topology import Host, Network, lvs_topology, lvs_vip

ROOT = Path(__file__).resolve().parents[2]
ECHO = str(Path(__file__).with_name("echo.py"))
PORT = 7000


# --- unit ----------------------------------------------------------------------------------------


def test_config_leaves_timeout_server_to_haproxy_unless_set(tmp_path: Path) -> None:
    vip = ipaddress.IPv4Address("198.18.0.100")
    default = render_config(vip, 3001, tmp_path / "s", ProxyTuning())
    settings_lines = [line.strip() for line in default.splitlines() if not line.startswith("#")]
    assert not [line for line in settings_lines if line.startswith(("timeout server",
                                                                    "timeout client"))]
    assert "mode tcp" in default and "bind 198.18.0.100:3001" in default
    tuned = ProxyTuning(timeout_server_s=4.5, health_check=True, check_fall=2)
    assert "timeout server 4500" in render_config(vip, 3001, tmp_path / "s", tuned)
    assert tuned.server_args() == (" check inter 2000 fall 2 rise 2 "
                                   "on-marked-down shutdown-sessions")
    assert ProxyTuning().server_args() == ""


def test_parse_show_sess() -> None:
    text = (
        "0x564af2d2acc0: proto=tcpv4 src=198.18.0.1:39272 fe=fe be=be srv=backend1 ts=00 "
        "epoch=0 age=1s calls=2 rate=1 cpu=0 lat=0 rq[f=848202h,i=0,an=00h,rx=,wx=,ax=] "
        "rp[f=80048202h,i=0,an=00h,rx=,wx=,ax=] scf=[8,0h,fd=8] scb=[8,1h,fd=9] exp=3s rc=0 "
        "c_exp=\n"
        "0x564af2e373a0: proto=unix_stream src=unix:1 fe=GLOBAL be=<NONE> srv=<none> ts=00 "
        "exp= rc=0 c_exp=\n\n")
    sess = parse_show_sess(text)
    assert len(sess) == 1
    assert (sess[0]["src"], sess[0]["srv"], sess[0]["age"]) == ("198.18.0.1:39272", "backend1",
                                                                "1s")
    assert _duration_s("3s") == 3.0 and _duration_s("250ms") == 0.25 and _duration_s("") == -1


def test_settings_accept_the_proxy_engine() -> None:
    s = TrialSettings.model_validate({"lb": {"engine": "proxy", "proxy_timeout_server_s": 4}})
    assert lb.choose_engine(s.lb.engine)[0] == "proxy"
    with pytest.raises(ValueError):
        LbSettings(proxy_check_fall=0)


# --- the engine's controls, with a line echo server ------------------------------------------


class Rig:
    """client -> HAProxy on the VIP -> backend1/backend2 running tests/lb/echo.py."""

    def __init__(self, net: Network, run: Run, options: LbOptions) -> None:
        self.net = net
        vip = lvs_vip(run)
        net.add_address("lb", str(vip), "to-client")
        self.servers = []
        self.procs: list[subprocess.Popen[str]] = []
        for name in ("backend1", "backend2"):
            addr = net[name].address_towards("lb")
            p = net[name].popen([sys.executable, ECHO, "server", name, str(addr), str(PORT)],
                                stdout=subprocess.PIPE, text=True)
            assert p.stdout is not None and p.stdout.readline().strip() == "listening"
            self.procs.append(p)
            self.servers.append(RealServer(name, addr, PORT))
        balancer = lb.make("proxy", net["lb"], vip, 3001, options)
        assert isinstance(balancer, ProxyLoadBalancer)
        self.lb = balancer
        self.lb.setup()
        self.lb.add_real_server(self.servers[0])
        self.client = net["client"].popen([sys.executable, ECHO, "client", str(vip), "3001"],
                                          stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                          text=True)
        self.procs.append(self.client)
        assert self.ask("") == "connected"

    def ask(self, cmd: str) -> str:
        assert self.client.stdin is not None and self.client.stdout is not None
        if cmd:
            self.client.stdin.write(cmd + "\n")
            self.client.stdin.flush()
        return self.client.stdout.readline().strip()

    def close(self) -> None:
        for p in self.procs:
            p.kill()
            p.wait()
        self.lb.close()


@pytest.fixture
def rig(request: pytest.FixtureRequest, lab_run: Run) -> Iterator[Rig]:
    options = getattr(request, "param", LbOptions())
    with Network(lvs_topology(), lab_run) as net:
        r = Rig(net, lab_run, options)
        try:
            yield r
        finally:
            r.close()


@pytest.mark.root
def test_switchover_keeps_the_old_session_and_moves_new_ones(rig: Rig) -> None:
    assert rig.ask("send ping") == "backend1:ping"
    assert [c.real_server for c in rig.lb.connections()] == ["backend1"]
    pid = rig.lb.pid
    assert pid is not None and pid in rig.net["lb"].pids()
    rig.lb.switchover(rig.servers[0], rig.servers[1])
    # no blackhole: the proxy still reaches backend1, the session just stays there
    assert rig.ask("send ping") == "backend1:ping"
    assert rig.ask("new") == "backend2:hello"
    states = rig.lb.server_states()
    assert states["backend1"]["status"] == "DRAIN" and states["backend1"]["scur"] == "1"


@pytest.mark.root
@pytest.mark.parametrize("rig", [LbOptions(expire_nodest_conn=1)], indirect=True)
def test_expire_nodest_conn_closes_the_old_session(rig: Rig) -> None:
    assert rig.ask("send ping") == "backend1:ping"
    rig.lb.switchover(rig.servers[0], rig.servers[1])
    assert rig.ask("send ping") in ("eof", "reset")  # the proxy closed the client's side
    assert rig.ask("new") == "backend2:hello"


@pytest.mark.root
@pytest.mark.parametrize("rig", [LbOptions(drain_timeout_s=1.5)], indirect=True)
def test_drain_serves_old_sessions_then_closes_them(rig: Rig) -> None:
    rig.lb.switchover(rig.servers[0], rig.servers[1])
    assert rig.ask("new") == "backend2:hello"
    assert rig.ask("send x") == "backend1:x"
    time.sleep(1.8)
    assert rig.ask("send y") in ("eof", "reset")


@pytest.mark.root
def test_weights_and_quiesce(rig: Rig) -> None:
    rig.lb.add_real_server(rig.servers[1], weight=3)
    answers = [rig.ask("new").split(":")[0] for _ in range(8)]
    assert answers.count("backend2") == 6 and answers.count("backend1") == 2
    rig.lb.set_weight(rig.servers[0], 0)
    assert {rig.ask("new").split(":")[0] for _ in range(4)} == {"backend2"}
    assert rig.ask("send still") == "backend1:still"


# --- bar 2: the layer-7 trials -----------------------------------------------------------------


def retrans_segs(host: Host) -> int:
    """TcpRetransSegs of host's namespace (nstat -a: absolute; -s: no history file)."""
    out = host.run(["nstat", "-asz", "TcpRetransSegs"]).stdout.split()
    return int(out[out.index("TcpRetransSegs") + 1])


@dataclass
class ProxyOutcome:
    settings: TrialSettings
    outage_s: float | None
    errors: list[dict[str, Any]]
    client_retrans: int
    lb_retrans: int
    server_states: dict[str, str]


def proxy_trial(settings: TrialSettings, out_dir: Path) -> ProxyOutcome:
    """One trial, run_trial's phases, with the proxy settings and nstat around the fault."""
    out_dir.mkdir(parents=True, exist_ok=True)
    run = new_run()
    try:
        with Network(lvs_topology(settings.client.sysctls()), run) as net, \
                contextlib.ExitStack() as stack:
            vip = lvs_vip(run)
            net.add_address("lb", str(vip), "to-client")
            servers_ = []
            for name in ("backend1", "backend2"):
                b = backends.make(backend_options(settings), net[name],
                                  net[name].address_towards("lb"))
                stack.callback(b.stop)
                b.start()
                servers_.append(b)
            balancer = lb.make("proxy", net["lb"], vip, settings.lb.port, lb_options(settings))
            stack.callback(balancer.close)
            balancer.setup()
            rs = [RealServer(b.name, b.address, b.port) for b in servers_]
            balancer.add_real_server(rs[0])
            driver = DriverProcess(
                net["client"], f"lab.load.{settings.load.driver}",
                {"target": {"host": str(vip), "port": settings.lb.port,
                            **servers_[0].client_params()},
                 "client": settings.client.model_dump(), "load": settings.load.model_dump()},
                out_dir / "driver.log")
            stack.callback(driver.stop)
            driver.wait_ready(30)
            t0 = driver.output.ready_t or time.monotonic()
            before = retrans_segs(net["client"]), retrans_segs(net["lb"])
            time.sleep(max(0.0, t0 + settings.fault.at_s - time.monotonic()))
            _detail, followups = faults.inject(
                settings.fault, faults.FaultTarget(balancer, servers_[0], rs[0], rs[1]))
            fault_t = time.monotonic()
            driver.mark_fault(fault_t)
            pending = sorted(followups, key=lambda f: f.delay_s)
            recovered_t = None
            while time.monotonic() < fault_t + settings.deadline_s:
                while pending and time.monotonic() >= fault_t + pending[0].delay_s:
                    pending.pop(0).action()
                rec = [e["t"] for e in driver.output.events if e["event"] == "recovered"]
                if rec:
                    recovered_t = min(rec)
                    if time.monotonic() >= recovered_t + settings.after_s and not pending:
                        break
                time.sleep(0.05)
            after = retrans_segs(net["client"]), retrans_segs(net["lb"])
            assert isinstance(balancer, ProxyLoadBalancer)
            states = {k: v["status"] for k, v in balancer.server_states().items()}
            driver.stop()
            return ProxyOutcome(
                settings, None if recovered_t is None else recovered_t - fault_t,
                [e for e in driver.output.events if e["event"] == "error" and e["t"] >= fault_t],
                after[0] - before[0], after[1] - before[1], states)
    finally:
        run.release()


@pytest.fixture(scope="module")
def layer7(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ProxyOutcome]:
    out = tmp_path_factory.mktemp("proxy-layer7")
    before = haproxy_pids()
    trials = scenario.load(ROOT / "scenarios" / "proxy-layer7.toml").trials
    with ThreadPoolExecutor(len(trials)) as pool:
        futures = {t.name: pool.submit(proxy_trial, t, out / t.name) for t in trials}
        outcomes = {name: f.result() for name, f in futures.items()}
    assert haproxy_pids() <= before, "a trial left haproxy behind"
    for name, o in outcomes.items():
        print(f"{name}: outage {o.outage_s if o.outage_s is None else round(o.outage_s, 3)} s, "
              f"client retransmissions {o.client_retrans}, proxy (lb) retransmissions "
              f"{o.lb_retrans}, errors {[e['detail'] for e in o.errors]}")
    return outcomes


def haproxy_pids() -> set[int]:
    out = subprocess.run(["pgrep", "-x", "haproxy"], capture_output=True, text=True).stdout
    return {int(p) for p in out.split()}


@pytest.mark.root
def test_proxy_switchover_of_a_live_backend_has_no_outage(
    layer7: dict[str, ProxyOutcome],
) -> None:
    o = layer7["proxy-switchover"]
    assert o.errors == [] and o.outage_s is not None and o.outage_s < 0.5
    assert o.client_retrans == 0


@pytest.mark.root
def test_proxy_crash_outage_is_the_proxy_server_timeout(layer7: dict[str, ProxyOutcome]) -> None:
    o = layer7["proxy-crash-timeout-server-4s"]
    timeout = o.settings.lb.proxy_timeout_server_s
    assert timeout == 4
    assert o.outage_s is not None and abs(o.outage_s - timeout) <= 0.1 * timeout
    # the client's kernel never retransmitted: the proxy ACKed; the proxy's kernel did
    assert o.client_retrans == 0 and o.lb_retrans > 0
    assert o.errors and o.errors[0]["detail"].startswith("2013 ")  # the proxy closed the session


@pytest.mark.root
def test_proxy_health_check_closes_the_dead_server_sessions(
    layer7: dict[str, ProxyOutcome],
) -> None:
    o = layer7["proxy-crash-health-check"]
    lbs = o.settings.lb
    assert o.outage_s is not None
    # fall failed checks, each lasting up to `inter` (the connect check's timeout)
    assert lbs.proxy_check_fall * lbs.proxy_check_inter_s * 0.9 <= o.outage_s \
        <= 2 * lbs.proxy_check_fall * lbs.proxy_check_inter_s + 1.0
    assert o.client_retrans == 0
    assert o.server_states["backend1"] == "DOWN"


@pytest.mark.root
@pytest.mark.slow
def test_proxy_defaults_inherit_the_lb_kernel_timeout(tmp_path: Path) -> None:
    """HAProxy without `timeout server`: the lb kernel's tcp_retries2=15 ends it (~925 s),
    whatever the client's tcp_retries2 (5 here) says."""
    trial = scenario.load(ROOT / "scenarios" / "proxy-defaults.toml").trials[0]
    o = proxy_trial(trial, tmp_path / trial.name)
    print(f"HAProxy defaults, backend crash: outage {o.outage_s} s, "
          f"client retransmissions {o.client_retrans}, proxy retransmissions {o.lb_retrans}")
    assert o.outage_s is not None and 900 <= o.outage_s <= 960
    assert o.client_retrans == 0
