"""The model against the real kernel: client -- router -- server namespaces, one per case.

Every case runs tests/probe/tcp_server.py in `server`
and tests/probe/tcp_client.py in `client`, then
breaks the path at a known moment: an nft drop rule in the router's forward chain for
client->server packets (what an LVS director does to a removed real server's connections with
expire_nodest_conn=0), or SIGSTOP of the server (a hung backend). The measured time is taken
from the client's own CLOCK_MONOTONIC records: from the send of the request that never got an
answer (or from the last answer received, for idle connections) to the socket error. All cases
run side by side (each in its own run slot), so the module takes as long as the slowest case
(tcp_retries2=6, ~27 s) plus setup. `pytest -s` prints the measured-vs-predicted table.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from lab import model
from lab.config.settings import ClientSettings, FaultSettings, LoadSettings, TrialSettings
from lab.net.runtime import new_run
from lab.net.topology import Network, Topology

PROBE = Path(__file__).resolve().parents[1] / "probe"
pytestmark = pytest.mark.root

PORT = 7000
_NETNS_LOCK = threading.Lock()  # build/tear down one network at a time (pyroute2 forks)


def tolerance(predicted_s: float) -> float:
    return max(0.05 * predicted_s, 0.5)


def busy_blackhole(**client: Any) -> Callable[[float], model.Prediction]:
    """predict() for the trial this case emulates: a busy client whose packets the LB drops."""
    trial = TrialSettings(client=ClientSettings(**client), load=LoadSettings(shape="busy"))
    return lambda rto: model.predict(trial, rto_s=rto)


@dataclass
class Case:
    name: str
    what: str
    # predicted seconds (from the measured rto), or None: no error may happen at all
    predict: Callable[[float], float | None]
    probe: dict[str, Any]
    sysctls: dict[str, int] = field(default_factory=dict)
    fault: str = "drop"  # drop | stop (SIGSTOP the server) | drop_first (before connecting)
    since: str = "send"  # send: from the unanswered request's send; last_ok: last answer
    capture: bool = False
    # predict()'s mechanism for the trial this case emulates, and what it must be
    mechanism: Callable[[float], str] | None = None
    want_mechanism: str = ""


@dataclass
class Outcome:
    case: Case
    records: list[dict[str, Any]]
    rto_us: int | None
    measured: float | None
    error: str
    sends: list[float]  # tcpdump: the dropped segment's transmissions, s after the first

    @property
    def rto_s(self) -> float:
        return (self.rto_us or model.DEFAULT_RTO_S * 1e6) / 1e6

    @property
    def predicted(self) -> float | None:
        return self.case.predict(self.rto_s)


def _p(fn: Callable[[float], model.Prediction]) -> Callable[[float], float | None]:
    return lambda rto: fn(rto).detect_s


def _m(fn: Callable[[float], model.Prediction]) -> Callable[[float], str]:
    return lambda rto: fn(rto).mechanism


HANG = TrialSettings(
    client=ClientSettings(tcp_retries2=3, tcp_user_timeout_ms=1000, read_timeout_s=2.0),
    fault=FaultSettings(kind="hang", failover_after_s=1000.0),
)


def _cases() -> list[Case]:
    cases = []
    for n in (3, 4, 5, 6):
        fn = busy_blackhole(tcp_retries2=n)
        cases.append(Case(
            f"retries2={n}", f"busy, drop, tcp_retries2={n} (model {model.tcp_model_timeout(n)}s)",
            _p(fn), {"mode": "busy"}, {"net.ipv4.tcp_retries2": n},
            capture=n == 5, mechanism=_m(fn), want_mechanism="retries2",
        ))
    for ms in (2000, 3000):
        fn = busy_blackhole(tcp_retries2=15, tcp_user_timeout_ms=ms)
        cases.append(Case(
            f"user_timeout={ms}", f"busy, drop, TCP_USER_TIMEOUT {ms} ms, tcp_retries2=15",
            _p(fn), {"mode": "busy", "user_timeout_ms": ms}, {"net.ipv4.tcp_retries2": 15},
            mechanism=_m(fn), want_mechanism="user_timeout",
        ))
    fn = busy_blackhole(tcp_retries2=4, so_keepalive=True, tcp_keepidle=1, tcp_keepintvl=1,
                        tcp_keepcnt=1)
    cases += [
        Case(
            "keepalive-idle", "idle, drop, SO_KEEPALIVE idle 2 intvl 1 cnt 3",
            lambda rto: model.keepalive_detect_time(2, 1, 3),
            {"mode": "idle", "keepalive": [2, 1, 3]}, since="last_ok",
        ),
        Case(
            "keepalive+uto", "idle, drop, keepalive 2/1/9 + TCP_USER_TIMEOUT 3500 ms (cnt ignored)",
            lambda rto: model.keepalive_detect_time(2, 1, 9, user_timeout_s=3.5),
            {"mode": "idle", "keepalive": [2, 1, 9], "user_timeout_ms": 3500}, since="last_ok",
        ),
        Case(
            "keepalive-busy", "busy, drop, tcp_retries2=4 + keepalive 1/1/1 (suspended in RTO)",
            _p(fn), {"mode": "busy", "keepalive": [1, 1, 1]}, {"net.ipv4.tcp_retries2": 4},
            mechanism=_m(fn), want_mechanism="retries2",
        ),
        Case(
            "hang", "busy, SIGSTOP server, read timeout 2 s (+ user timeout 1 s, retries2=3)",
            _p(lambda rto: model.predict(HANG, rto_s=rto)),
            {"mode": "busy", "read_timeout_s": 2.0, "user_timeout_ms": 1000},
            {"net.ipv4.tcp_retries2": 3}, fault="stop",
            mechanism=_m(lambda rto: model.predict(HANG, rto_s=rto)),
            want_mechanism="read_timeout",
        ),
        Case(
            "idle+uto", "idle, drop, TCP_USER_TIMEOUT 1000 ms, no keepalive: nothing fires (5 s)",
            lambda rto: None, {"mode": "idle", "user_timeout_ms": 1000, "max_s": 5.0},
            since="last_ok",
        ),
        Case(
            "syn_retries=1", "connect() into a drop, tcp_syn_retries=1 (linear timeouts 4)",
            lambda rto: model.syn_abort_time(1),
            {"mode": "busy", "connect_timeout_s": None}, {"net.ipv4.tcp_syn_retries": 1},
            fault="drop_first",
        ),
    ]
    return cases


def _topology(sysctls: dict[str, int]) -> Topology:
    topo = Topology()
    topo.add_host("client", sysctls=dict(sysctls), gateway="router")
    topo.add_host("router", forwarding=True)
    topo.add_host("server", gateway="router")
    topo.add_link("client", "router")
    topo.add_link("router", "server")
    return topo


_SEG = re.compile(r"^(\d+\.\d+) IP \S+ > \S+: Flags \[[^\]]*\], seq (\d+):(\d+),")


def parse_sends(pcap_text: str) -> list[float]:
    """Transmissions of the last data segment the client sent (the dropped one), relative."""
    by_seq: dict[str, list[float]] = {}
    last = ""
    for line in pcap_text.splitlines():
        m = _SEG.match(line)
        if m:
            last = f"{m[2]}:{m[3]}"
            by_seq.setdefault(last, []).append(float(m[1]))
    times = by_seq.get(last, [])
    return [t - times[0] for t in times]


def run_case(case: Case) -> Outcome:
    run = new_run()
    try:
        with _NETNS_LOCK:
            net = Network(_topology(case.sysctls), run)
        try:
            return _measure(case, net, run.workdir)
        finally:
            with _NETNS_LOCK:
                net.close()
    finally:
        run.release()


def _measure(case: Case, net: Network, workdir: Any) -> Outcome:
    """Server up, the drop rule ready, the capture on, the client run with the fault at its
    moment; then the outcome from the client's own records."""
    client, router, server = net["client"], net["router"], net["server"]
    caddr, saddr = client.address_towards("router"), server.address_towards("router")
    srv = server.popen(
        [sys.executable, str(PROBE / "tcp_server.py"), str(saddr), str(PORT)],
        stdout=subprocess.PIPE, text=True,
    )
    assert srv.stdout is not None and srv.stdout.readline().strip() == "listening"
    drop = _drop_rule(router, caddr, saddr)
    pcap = workdir / "client.pcap"
    cap = _start_capture(client, caddr, pcap) if case.capture else None
    if case.fault == "drop_first":
        router.run(drop)
    records = _run_client(case, client, saddr,
                          fault=lambda: router.run(drop) if case.fault == "drop" else
                          os.kill(srv.pid, signal.SIGSTOP))  # netns exec execs: the server's pid
    if case.fault == "stop":
        os.kill(srv.pid, signal.SIGCONT)
    sends = _stop_capture(cap, pcap) if cap is not None else []
    return _outcome(case, records, sends)


def _drop_rule(router: Any, caddr: Any, saddr: Any) -> list[str]:
    """An empty forward chain in the router now, and the command that drops client->server."""
    router.run(["nft", "-f", "-"], input=(
        "table ip probe {\n chain forward_probe {\n"
        "  type filter hook forward priority 0; policy accept;\n }\n}\n"
    ))
    return ["nft", "add", "rule", "ip", "probe", "forward_probe", "ip", "saddr", str(caddr),
            "ip", "daddr", str(saddr), "tcp", "dport", str(PORT), "drop"]


def _start_capture(client: Any, caddr: Any, pcap: Any) -> subprocess.Popen[str]:
    cap = client.popen(["tcpdump", "-i", "to-router", "-n", "-U", "-w", str(pcap),
                        f"tcp and src host {caddr} and dst port {PORT}"],
                       stderr=subprocess.PIPE, text=True)
    assert cap.stderr is not None
    cap.stderr.readline()  # "listening on to-router ..."
    return cap


def _stop_capture(cap: subprocess.Popen[str], pcap: Any) -> list[float]:
    """The client's transmissions of the request, from the pcap."""
    time.sleep(0.2)
    cap.send_signal(signal.SIGINT)
    cap.wait(10)
    text = subprocess.run(["tcpdump", "-r", str(pcap), "-n", "-tt"],
                          capture_output=True, text=True).stdout
    return parse_sends(text)


def _run_client(case: Case, client: Any, saddr: Any, fault: Callable[[], object]
                ) -> list[dict[str, Any]]:
    """The probe client until it exits; `fault` 0.5 s after it is ready (unless drop_first)."""
    predicted = case.predict(model.DEFAULT_RTO_S)
    cfg = {"host": str(saddr), "port": PORT, "max_s": (predicted or 5.0) + 15.0, **case.probe}
    cli = client.popen([sys.executable, str(PROBE / "tcp_client.py"), json.dumps(cfg)],
                       stdout=subprocess.PIPE, text=True)
    records: list[dict[str, Any]] = []
    ready = threading.Event()

    def read() -> None:
        assert cli.stdout is not None
        for line in cli.stdout:
            rec = json.loads(line)
            records.append(rec)
            if rec["ev"] == "idle" or (rec["ev"] == "ok" and rec["seq"] >= 5):
                ready.set()
        ready.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    if case.fault != "drop_first":
        assert ready.wait(10), f"{case.name}: client never became ready: {records}"
        time.sleep(0.5)
        fault()
    try:
        cli.wait(timeout=cfg["max_s"] + 10)
    except subprocess.TimeoutExpired:
        cli.kill()
    reader.join(5)
    return records


def _outcome(case: Case, records: list[dict[str, Any]], sends: list[float]) -> Outcome:
    """The first error, timed from the request's send or from the last answer (case.since)."""
    rto = next((r["rto_us"] for r in records if r["ev"] == "ok"), None)
    errors = [r for r in records if r["ev"] == "error"]
    measured, error = None, "none"
    if errors:
        err = errors[0]
        oks = [r for r in records if r["ev"] == "ok"]
        start = err["sent_t"] if case.since == "send" or not oks else oks[-1]["t"]
        measured, error = err["t"] - start, err["error"]
    return Outcome(case, records, rto, measured, error, sends)


@pytest.fixture(scope="module")
def outcomes() -> Iterator[dict[str, Outcome]]:
    cases = _cases()
    with ThreadPoolExecutor(max_workers=len(cases)) as pool:
        results = {o.case.name: o for o in pool.map(run_case, cases)}
    print("\n\ncase              measured   predicted  error      rto    what")
    for o in results.values():
        meas = "-" if o.measured is None else f"{o.measured:8.3f}s"
        pred = "no error" if o.predicted is None else f"{o.predicted:8.3f}s"
        print(f"{o.case.name:16}  {meas:>9}  {pred:>9}  {o.error:9}  "
              f"{(o.rto_us or 0) / 1000:4.0f}ms {o.case.what}")
    r5 = results["retries2=5"]
    model_sends = [0.0, *model.retransmission_times(r5.rto_s, len(r5.sends) - 1)]
    print("retries2=5 transmissions (tcpdump):", " ".join(f"{t:.3f}" for t in r5.sends))
    print("retries2=5 transmissions (model):  ", " ".join(f"{t:.3f}" for t in model_sends))
    yield results


@pytest.mark.parametrize("name", [c.name for c in _cases()])
def test_kernel_matches_model(outcomes: dict[str, Outcome], name: str) -> None:
    o = outcomes[name]
    if o.predicted is None:
        assert o.measured is None, f"{name}: expected no error, got {o.error} after {o.measured}"
        assert any(r["ev"] == "end" for r in o.records), f"{name}: client died: {o.records}"
        return
    assert o.measured is not None, f"{name}: no error measured; records {o.records[-3:]}"
    assert abs(o.measured - o.predicted) <= tolerance(o.predicted), (
        f"{name}: measured {o.measured:.3f}s, predicted {o.predicted:.3f}s ({o.case.what})"
    )
    expected_errno = "timeout" if o.case.fault == "stop" else "ETIMEDOUT"
    assert o.error == expected_errno, f"{name}: {o.error}"
    if o.case.mechanism is not None:
        assert o.case.mechanism(o.rto_s) == o.case.want_mechanism


def test_default_rto_is_the_measured_one(outcomes: dict[str, Outcome]) -> None:
    rtos = {o.rto_us for o in outcomes.values() if o.rto_us is not None}
    assert rtos, "no tcpi_rto measured"
    for rto in rtos:
        assert abs(rto / 1e6 - model.DEFAULT_RTO_S) <= 1 / model.HZ, (
            f"tcpi_rto {rto} us vs model.DEFAULT_RTO_S {model.DEFAULT_RTO_S}"
        )


def test_retransmission_schedule_matches_tcpdump(outcomes: dict[str, Outcome]) -> None:
    """TLP first, then RTOs doubling, wheel-late; and exactly as many as the model says."""
    o = outcomes["retries2=5"]
    plan = model.retransmit_plan(o.rto_s, retries2=5)
    assert len(o.sends) == len(plan.sends), (
        f"tcpdump saw {len(o.sends)} transmissions {o.sends}, model {len(plan.sends)} "
        f"{plan.sends}"
    )
    for seen, want in zip(o.sends, plan.sends, strict=True):
        assert abs(seen - want) <= max(0.05 * want, 0.03), (
            f"transmission at {seen:.3f}s vs model {want:.3f}s (all: {o.sends} vs {plan.sends})"
        )


def test_rto_from_backoffs_gives_back_tcpi_rto(outcomes: dict[str, Outcome]) -> None:
    """The RTO the capture's backoffs show is the one the socket reported (tcpi_rto)."""
    o = outcomes["retries2=5"]
    gaps = [b - a for a, b in itertools.pairwise(o.sends[1:])]
    rto = model.rto_from_backoffs(gaps)
    print(f"backoffs {[round(g, 3) for g in gaps]} -> rto {rto:.3f} s, tcpi_rto {o.rto_s:.3f} s")
    assert round(abs(rto - o.rto_s) * model.HZ) <= 1  # within a jiffy (in jiffies: no float)
