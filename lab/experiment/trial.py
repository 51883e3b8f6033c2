"""One trial: build -> warm up -> inject the fault -> observe until recovered or the deadline
-> collect -> tear down.

Every part the trial creates is registered on an ExitStack the moment it exists, so an
exception, Ctrl-C or SIGTERM at any point tears down exactly what was built, in reverse order.
The LVS-NAT topology (the article's):

    client --- lb (VIP, forwarding, the LB engine) --- backend1 (active)
                                                   \\-- backend2 (standby)
"""

from __future__ import annotations

import contextlib
import ipaddress
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab import backends as backends_
from lab import lb, model
from lab.backends.base import Backend
from lab.capture import to_wall
from lab.capture.evidence import Evidence
from lab.config.settings import TrialSettings
from lab.experiment import faults
from lab.experiment.options import backend_options, driver_config, lb_options
from lab.lb.base import LoadBalancer, RealServer
from lab.load.base import DriverProcess, sysbench_line
from lab.net import netfilter
from lab.net.runtime import new_run
from lab.net.topology import Network, lvs_topology, lvs_vip

READY_TIMEOUT_S = 30.0
TICK_S = 0.05
# idle load: the fault hits this long into the sleep (> TCP_DELACK_MAX = 200 ms)
IDLE_QUIET_S = 0.5


class Interrupted(Exception):
    """The trial was asked to stop (Ctrl-C / SIGTERM in the runner)."""


@dataclass
class TrialStatus:
    """What a progress view shows while the trial runs (written by the trial thread)."""

    name: str
    phase: str = "pending"
    started: float = 0.0
    fault_t: float | None = None
    recovered_t: float | None = None
    qps: float = 0.0
    last_line: str = ""
    deadline_s: float = 0.0  # after the fault
    predicted_s: float | None = None  # the model's outage
    mechanism: str = ""  # what ends it, in the model


@dataclass
class TrialResult:
    settings: TrialSettings
    engine: str
    engine_why: str
    prediction: model.Prediction
    t0: float
    fault_t: float | None = None
    fault_apply_ms: float | None = None  # from the fault's start until it is fully in place
    fault_detail: str = ""
    detect_s: float | None = None
    recover_s: float | None = None
    errors: int = 0
    reconnects: int = 0
    verdict: str = ""
    samples: list[dict[str, Any]] = field(default_factory=list)
    events: list[tuple[float, str, str]] = field(default_factory=list)  # (monotonic t, ev, det)
    facts: dict[str, Any] = field(default_factory=dict)
    evidence: dict[str, Any] = field(default_factory=dict)  # capture facts (lab.capture)

    @property
    def measured_outage_s(self) -> float | None:
        return self.recover_s

    def event(self, event: str, detail: str = "", t: float | None = None) -> None:
        self.events.append((time.monotonic() if t is None else t, event, detail))


def predict(settings: TrialSettings, engine: str, idle_elapsed_s: float = 0.0
             ) -> model.Prediction:
    """The model for this trial on the engine `auto` picked, with the RTO its added latency
    gives."""
    return model.predict(settings, engine="ipvs" if engine == "ipvs" else "nft",
                         idle_elapsed_s=idle_elapsed_s,
                         rto_s=model.rto_with_latency(settings.latency_ms))


@dataclass
class _Trial:
    """What one run of run_trial is given and fills in."""

    settings: TrialSettings
    result: TrialResult
    status: TrialStatus
    out_dir: Path
    stop: threading.Event
    on_line: Callable[[str], None] | None


@dataclass
class _Parts:
    """What the trial built, each part already on the teardown stack."""

    backends: list[Backend]
    balancer: LoadBalancer
    servers: list[RealServer]
    driver: DriverProcess
    evidence: Evidence | None

    def fault_target(self) -> faults.FaultTarget:
        return faults.FaultTarget(self.balancer, self.backends[0], self.servers[0],
                                  self.servers[1])


def run_trial(
    settings: TrialSettings,
    out_dir: Path,
    *,
    stop: threading.Event | None = None,
    status: TrialStatus | None = None,
    on_line: Callable[[str], None] | None = None,
) -> TrialResult:
    """Run one trial and return its result; out_dir receives the driver log."""
    started_at = time.monotonic()
    out_dir.mkdir(parents=True, exist_ok=True)
    engine, why = lb.choose_engine(settings.lb.engine)
    result = TrialResult(settings=settings, engine=engine, engine_why=why,
                         prediction=predict(settings, engine), t0=time.monotonic())
    trial = _Trial(settings, result, status or TrialStatus(settings.name), out_dir,
                   stop or threading.Event(), on_line)
    trial.status.deadline_s = settings.deadline_s
    trial.status.predicted_s = result.prediction.outage_s
    trial.status.mechanism = result.prediction.mechanism
    with contextlib.ExitStack() as teardown:
        parts = _build(trial, teardown)
        _observe(trial, parts)
        _collect(trial, parts)
    trial.status.phase = "done"
    # build to torn down: what the trial costs a matrix (benchmarks/bench_matrix.py)
    result.facts["wall_s"] = round(time.monotonic() - started_at, 3)
    return result


# --- build ------------------------------------------------------------------------------------


def _build(trial: _Trial, teardown: contextlib.ExitStack) -> _Parts:
    """The namespaces, both backends, the LB with backend1, the evidence and the warmed-up load;
    the trial clock (result.t0) starts once the service exists, before the load."""
    settings, result, status = trial.settings, trial.result, trial.status
    status.phase = "building"
    net, vip = _build_network(trial, teardown)
    backends = _build_backends(settings, net, teardown)
    balancer = lb.make(result.engine, net["lb"], vip, settings.lb.port, lb_options(settings))
    balancer.setup()
    teardown.callback(balancer.close)
    servers = [RealServer(b.name, b.address, b.port) for b in backends]
    balancer.add_real_server(servers[0])
    # the trial clock starts here; evidence starts before the load so the pcap has the SYNs
    result.t0 = status.started = time.monotonic()
    evidence = _start_evidence(trial, net, vip, teardown) if settings.capture else None
    status.phase = "warming up"
    driver = _start_driver(trial, net, vip, backends[0], teardown)
    parts = _Parts(backends, balancer, servers, driver, evidence)
    faults.prepare(settings.fault, parts.fault_target())
    return parts


def _build_network(trial: _Trial, teardown: contextlib.ExitStack
                   ) -> tuple[Network, ipaddress.IPv4Address]:
    """The LVS topology in a run slot of its own, the VIP on the lb, the client's latency."""
    settings = trial.settings
    run = new_run()
    teardown.callback(run.release)
    net = Network(lvs_topology(settings.client.sysctls()), run)
    teardown.callback(net.close)
    vip = lvs_vip(run)
    net.add_address("lb", str(vip), "to-client")
    if settings.latency_ms is not None:
        net.add_delay("client", "to-lb", settings.latency_ms)
    trial.result.facts = {"run_id": run.run_id, "subnet": str(run.subnet), "vip": str(vip)}
    return net, vip


def _build_backends(settings: TrialSettings, net: Network, teardown: contextlib.ExitStack
                    ) -> list[Backend]:
    """backend1 (active) and backend2 (standby), started side by side."""
    options = backend_options(settings)
    backends: list[Backend] = []
    for name in ("backend1", "backend2"):
        backend = backends_.make(options, net[name], net[name].address_towards("lb"))
        teardown.callback(backend.stop)
        backends.append(backend)
    with ThreadPoolExecutor(len(backends)) as pool:
        for started in [pool.submit(b.start) for b in backends]:
            started.result()
    return backends


def _start_evidence(trial: _Trial, net: Network, vip: ipaddress.IPv4Address,
                    teardown: contextlib.ExitStack) -> Evidence:
    settings = trial.settings
    evidence = Evidence(net["client"], net["lb"], str(vip), settings.lb.port, trial.out_dir,
                        load=settings.load.shape, t0=to_wall(trial.result.t0),
                        lb_table="ipvsadm" if trial.result.engine == "ipvs" else "auto")
    evidence.start()
    teardown.callback(evidence.close)
    return evidence


def _start_driver(trial: _Trial, net: Network, vip: ipaddress.IPv4Address, active: Backend,
                  teardown: contextlib.ExitStack) -> DriverProcess:
    """The load driver in the client namespace, once all its threads are connected."""
    settings, result = trial.settings, trial.result
    result.event("load_start", f"{settings.load.driver} x{settings.load.threads} -> "
                 f"{vip}:{settings.lb.port}")
    config = driver_config(settings, str(vip), active.client_params())
    driver = DriverProcess(net["client"], config.module, config.config,
                           trial.out_dir / "driver.log",
                           on_record=lambda r: _on_record(r, result, trial.status, trial.on_line))
    teardown.callback(driver.stop)
    driver.wait_ready(READY_TIMEOUT_S)
    result.event("ready", "all driver threads connected", driver.output.ready_t)
    return driver


def _on_record(
    record: dict[str, Any], result: TrialResult, status: TrialStatus,
    on_line: Callable[[str], None] | None,
) -> None:
    if record.get("kind") == "sample":
        status.qps = float(record["qps"])
        status.last_line = sysbench_line(record["t"] - result.t0, record)
        if on_line:
            on_line(f"{result.settings.name}: {status.last_line}")
    elif (
        record.get("kind") == "event"
        and record.get("event") == "recovered"
        and status.recovered_t is None
    ):
        status.recovered_t = record["t"]


# --- observe ----------------------------------------------------------------------------------

Pending = list[tuple[float, faults.FollowUp]]  # (monotonic time due, follow-up)


def _observe(trial: _Trial, parts: _Parts) -> None:
    """Tick until the service recovered (and ran on after_s) or the deadline passed: inject the
    fault when due, run its follow-ups on time."""
    settings, result, driver = trial.settings, trial.result, parts.driver
    ready_t = driver.output.ready_t or result.t0
    fault_at = max(result.t0 + settings.fault.at_s, ready_t + 1.0)
    pending: Pending = []
    while True:
        now = _check_running(trial, driver)
        if result.fault_t is None and _fault_due(settings, driver, fault_at, now):
            pending = _inject(trial, parts)
        _run_due(result, pending, now)
        if result.fault_t is not None and _finished(trial, driver, pending, now):
            return
        time.sleep(TICK_S)


def _check_running(trial: _Trial, driver: DriverProcess) -> float:
    """Now, unless the trial was asked to stop or its driver died."""
    if trial.stop.is_set():
        raise Interrupted(trial.settings.name)
    now = time.monotonic()
    if not driver.alive():
        raise RuntimeError(f"load driver exited early (code {driver.proc.returncode})")
    return now


def _fault_due(settings: TrialSettings, driver: DriverProcess, fault_at: float, now: float
               ) -> bool:
    return now >= fault_at and _idle_phase_begun(settings, driver, fault_at, now)


def _inject(trial: _Trial, parts: _Parts) -> Pending:
    """Inject the fault now; its follow-ups, due on the clock of its having been applied.

    The fault instant is when the action starts (errors count from here); recovery counts only
    transactions started once it is fully in place (the driver's mark), so one that slipped
    through while nft was applying the rules is not "recovery"."""
    settings, result, status = trial.settings, trial.result, trial.status
    status.phase = "fault"
    with faults.urgent():
        netfilter.forget_applied()
        result.fault_t = time.monotonic()
        detail, followups = faults.inject(settings.fault, parts.fault_target())
        # an nft change: the instant it was in place; a signal: now
        applied = netfilter.last_applied() or time.monotonic()
    parts.driver.mark_fault(applied)
    result.fault_apply_ms = round(1000 * (applied - result.fault_t), 3)
    result.event("fault", f"{settings.fault.kind}: {detail}", result.fault_t)
    result.event("fault_applied", f"took {result.fault_apply_ms:.3f} ms", applied)
    status.fault_t = result.fault_t
    status.phase = "outage"
    if settings.load.shape == "idle":
        _predict_idle(settings, result, parts.driver)
        status.predicted_s = result.prediction.outage_s
    return [(applied + f.delay_s, f) for f in followups]


def _run_due(result: TrialResult, pending: Pending, now: float) -> None:
    """Run (and drop) the follow-ups due by now."""
    for item in [p for p in pending if p[0] <= now]:
        pending.remove(item)
        with faults.urgent():
            started = time.monotonic()
            item[1].action()
            took_ms = 1000 * (time.monotonic() - started)
        result.event(item[1].event, f"{item[1].detail} (took {took_ms:.3f} ms)", started)


def _recovered_t(driver: DriverProcess, fault_t: float) -> float | None:
    """When the driver first recovered after the fault, from the records it sent (the
    reader keeps them; the progress callback may lag behind a slow terminal)."""
    times = [e["t"] for e in list(driver.output.events)
             if e["event"] == "recovered" and e["t"] >= fault_t]
    return min(times) if times else None


def _finished(trial: _Trial, driver: DriverProcess, pending: Pending, now: float) -> bool:
    """Recovered and run on for after_s with no follow-up left, or past the deadline."""
    settings, result, status = trial.settings, trial.result, trial.status
    assert result.fault_t is not None
    recovered = _recovered_t(driver, result.fault_t)
    if recovered is not None:
        status.recovered_t = status.recovered_t or recovered
        status.phase = "recovered"
        if now >= recovered + settings.after_s and not pending:
            return True
    if now >= result.fault_t + settings.deadline_s:
        if recovered is None:
            result.event("deadline", f"not recovered {settings.deadline_s:g}s after fault")
        return True
    return False


def _last_idle_start(driver: DriverProcess, before: float) -> float | None:
    """When thread 0 last started its idle sleep before `before` (an `idle` event)."""
    starts = [e["t"] for e in list(driver.output.events)
              if e["event"] == "idle" and e.get("thread", 0) == 0 and e["t"] <= before]
    return max(starts) if starts else None


def _idle_phase_begun(
    settings: TrialSettings, driver: DriverProcess, fault_at: float, now: float
) -> bool:
    """Idle load: hold the fault until the connection has been idle IDLE_QUIET_S (an `idle`
    event at or after fault_at, that long ago), so it hits a quiet connection, as it hits an
    idle pooled one. Sooner, the client's delayed ACK of the last answer would be dropped,
    and the server's retransmissions of that answer would keep resetting the client's
    keepalive clock (measured: keepalive then never fires before the next query).
    A driver that never reports one gets the fault anyway, one idle period late."""
    if settings.load.shape != "idle":
        return True
    started = _last_idle_start(driver, now)
    return (started is not None and started >= fault_at and now >= started + IDLE_QUIET_S) or (
        now >= fault_at + settings.load.idle_s + 1.0)


def _predict_idle(settings: TrialSettings, result: TrialResult, driver: DriverProcess) -> None:
    """Re-predict with how long the connection had really been idle at the fault."""
    assert result.fault_t is not None
    started = _last_idle_start(driver, result.fault_t)
    if started is None:
        return
    elapsed = result.fault_t - started
    result.facts["idle_elapsed_s"] = round(elapsed, 4)
    result.prediction = predict(settings, result.engine, idle_elapsed_s=elapsed)


# --- collect ----------------------------------------------------------------------------------


def _collect(trial: _Trial, parts: _Parts) -> None:
    """Stop the load, then take its samples, its events (and the verdict) and the evidence."""
    trial.status.phase = "tearing down"
    parts.driver.stop()
    trial.result.samples = list(parts.driver.output.samples)
    _collect_driver_events(trial.result, parts.driver)
    if parts.evidence is not None:
        trial.result.evidence = parts.evidence.stop().facts()


def _collect_driver_events(result: TrialResult, driver: DriverProcess) -> None:
    """The driver's events on the trial's axis, and what they add up to: errors, reconnects,
    detection, recovery. `recovered` is written once: the first thread's recovery is the
    service's, with the outage; a multi-thread load's later ones are `thread_recovered`."""
    fault_t = result.fault_t
    events = list(driver.output.events)
    after = [] if fault_t is None else [e for e in events if e["t"] >= fault_t]
    recovered = sorted((e for e in after if e["event"] == "recovered"), key=lambda e: e["t"])
    first = recovered[0] if recovered else None  # written below, with the outage
    for ev in events:
        if ev["event"] != "recovered":
            result.event(ev["event"], _thread_detail(ev), ev["t"])
        elif ev is not first:
            result.event("thread_recovered", _thread_detail(ev), ev["t"])
    if fault_t is None:
        result.verdict = "no fault injected"
        return
    # a program that exits (a command, a zoo stack) has failed too: its exit is an error
    errors = [e for e in after if e["event"] in ("error", "exited")]
    result.errors = len(errors)
    result.reconnects = sum(1 for e in after if e["event"] == "reconnect")
    if errors:
        result.detect_s = min(e["t"] for e in errors) - fault_t
        result.event("first_error", errors[0].get("detail", ""), min(e["t"] for e in errors))
    if first is not None:
        result.recover_s = first["t"] - fault_t
        result.event("recovered", f"outage {result.recover_s:.2f} s; {_thread_detail(first)}",
                     first["t"])
    result.verdict = verdict(result.prediction, result.recover_s, result.settings.deadline_s)


def _thread_detail(ev: dict[str, Any]) -> str:
    return f"thread {ev.get('thread', 0)}: {ev.get('detail', '')}"


def verdict(prediction: model.Prediction, measured: float | None, deadline_s: float) -> str:
    predicted = prediction.outage_s
    if measured is None:
        if predicted is None or predicted > deadline_s:
            return "ok: not recovered by the deadline, as predicted"
        return f"MISMATCH: not recovered within {deadline_s:g}s, model said {predicted:.2f}s"
    if predicted is None:
        return f"MISMATCH: recovered after {measured:.2f}s, model said never"
    if abs(measured - predicted) <= model.tolerance(predicted):
        return f"ok: within {model.tolerance(predicted):.2f}s of the model"
    return f"MISMATCH: measured {measured:.2f}s vs model {predicted:.2f}s"
