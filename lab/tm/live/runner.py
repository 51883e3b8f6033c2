"""Run a live scenario: build the lab, run the load, the timeline and the control loop.

    client --- lb (VIP, one virtual service per (home site, plan)) --- site A, B, C ...

Every process runs inside a lab namespace (Host.start: the lab's log and stop sequence): the
sites in theirs, the load generator in the client's, the health prober in the lb's. The
controller runs here, in the lab's own process: it reads the sites' reports from files in
the run's scratch dir, gets the probes' verdicts over a pipe, and changes the lb's nft rules
with `ip netns exec` (the NftLoadBalancer way). It never opens a connection itself.

The loop, every `interval_s`: read the reports, measure each site over `window_s`, and (mode
"tm") decide with lab.tm.live.manager and apply the table as weights; after a change it waits
`settle_s` before deciding again, so the next decision sees traffic that has moved (weights
reach new connections only, and clients recycle theirs every few requests). A health verdict
acts at once: a site down is withdrawn and (mode "tm") its connections are reset so clients
reconnect within seconds; mode "off" is the keepalived-style baseline: the same withdrawal,
no reset (expire_nodest_conn=0, the article's blackhole), and no traffic management.
"""

from __future__ import annotations

import contextlib
import csv
import ipaddress
import json
import queue
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import IO, Any, TextIO

from lab.errors import LabError
from lab.lb.base import LbOptions, RealServer
from lab.net.process import ChildProcess, wait_until
from lab.net.runtime import Run, new_run
from lab.net.topology import Host, Network, Topology, lvs_vip
from lab.tm.live import report
from lab.tm.live.lb import WeightedNftLoadBalancer, integer_weights
from lab.tm.live.manager import Manager, Outcome, describe
from lab.tm.live.scenario import Event, Scenario
from lab.tm.live.stats import MIN_SPAN_S, Measured, Report, SiteStats, between, parse_report
from lab.tm.model import Plan, fmt_u

SITE_PORT = 8080
SERVICE_PORT_BASE = 8000  # service of (home i, plan p): 8000 + 10 * i + p
READY_TIMEOUT_S = 20.0
SLACK_S = 0.05  # a tick that comes a hair early still counts as settle_s later


def service_port(home_index: int, p: Plan) -> int:
    return SERVICE_PORT_BASE + 10 * home_index + int(p)


class EventLog:
    """events.csv: t_s, event, detail; every line also goes to `on_line`.

    Its own log, not the trial's (lab.experiment.trial.TrialResult.event, a list written with
    the trial's result at its end): a live run is watched as it decides, so each line is
    printed and flushed to the file the moment it happens, and a run that is interrupted or
    fails keeps its timeline up to that moment.
    """

    def __init__(self, path: Path, t0: Callable[[], float], on_line: Callable[[str], None]):
        self._file: TextIO = open(path, "w", newline="")  # noqa: SIM115 (closed in close())
        self._csv = csv.writer(self._file)
        self._csv.writerow(["t_s", "event", "detail"])
        self._t0 = t0
        self._on_line = on_line
        self._lock = threading.Lock()

    def add(self, event: str, detail: str, t: float | None = None) -> None:
        t_s = (time.monotonic() if t is None else t) - self._t0()
        with self._lock:
            self._csv.writerow([f"{t_s:.3f}", event, detail])
            self._file.flush()
        self._on_line(f"{t_s:7.2f}s {event:8} {detail}")

    def close(self) -> None:
        self._file.close()


class Health:
    """Reads the prober's lines; turns consecutive failures/successes into down/up verdicts."""

    def __init__(self, prober: ChildProcess, fail_after: int, recover_after: int):
        self.prober = prober
        self.fail_after = fail_after
        self.recover_after = recover_after
        self.verdicts: queue.Queue[tuple[str, str, str, float]] = queue.Queue()
        self._fails: dict[str, int] = {}
        self._oks: dict[str, int] = {}
        self._down: set[str] = set()
        self._thread = threading.Thread(target=self._read, name="health", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        stdout = self.prober.proc.stdout
        assert stdout is not None
        for line in stdout:
            try:
                rec = json.loads(line)
                site, up, t = str(rec["site"]), bool(rec["up"]), float(rec["t"])
            except (ValueError, KeyError, TypeError):
                continue
            if up:
                self._probe_ok(site, t)
            else:
                self._probe_failed(site, t, str(rec.get("detail", "")))

    def _probe_ok(self, site: str, t: float) -> None:
        self._fails[site] = 0
        self._oks[site] = self._oks.get(site, 0) + 1
        if site in self._down and self._oks[site] >= self.recover_after:
            self._down.discard(site)
            self.verdicts.put(("up", site, f"{self._oks[site]} probes ok", t))

    def _probe_failed(self, site: str, t: float, detail: str) -> None:
        self._oks[site] = 0
        self._fails[site] = self._fails.get(site, 0) + 1
        if site not in self._down and self._fails[site] >= self.fail_after:
            self._down.add(site)
            self.verdicts.put(("down", site, f"{self._fails[site]} failed health probes: {detail}",
                               t))


def announced(child: ChildProcess, word: str, timeout: float) -> bool:
    """Whether the child's first line on stdout is `word`, within `timeout` (a child that
    dies first ends the wait at once; one that hangs, at the timeout)."""
    stdout: IO[str] | None = child.proc.stdout
    assert stdout is not None
    first: list[str] = []
    threading.Thread(target=lambda: first.append(stdout.readline()), daemon=True).start()
    wait_until(lambda: first, timeout, alive=child.alive)
    return bool(first) and first[0].strip() == word


class LiveRun:
    """One run of a scenario in one mode; `run()` returns the summary (see report.summarise)."""

    def __init__(self, scen: Scenario, out: Path, on_line: Callable[[str], None] = print):
        self.scen = scen
        self.out = out
        self.on_line = on_line
        self.ctl = scen.controller
        self.names = sorted(scen.sites)
        self.t0 = time.monotonic()
        self.children: list[ChildProcess] = []
        self.lbs: dict[tuple[str, Plan], WeightedNftLoadBalancer] = {}
        self.servers: dict[str, RealServer] = {}
        self.applied: dict[tuple[str, Plan], dict[str, int]] = {}
        self.manager = Manager(
            {n: s.thresholds for n, s in scen.sites.items()},
            scen.latency,
            sorted(scen.plans),
            Fraction(repr(self.ctl.ramp)),
            Fraction(repr(self.ctl.canary)),
        )
        self.control: dict[str, dict[str, Any]] = {
            n: {"budget_ms_per_s": s.budget_ms_per_s, "report": "ok"}
            for n, s in scen.sites.items()
        }
        self.stats: dict[str, SiteStats] = {}
        self.prev: dict[str, Report] = {}
        self.report_state: dict[str, str | None] = {}  # the last bad report logged
        self.last_change = -1e9
        self.site_rows: list[list[Any]] = []
        self.shift_rows: list[list[Any]] = []
        self.events: EventLog | None = None

    # --- building -------------------------------------------------------------------------
    def topology(self) -> Topology:
        topo = Topology()
        topo.add_host(
            "client", sysctls={"net.ipv4.tcp_retries2": self.scen.clients.tcp_retries2},
            gateway="lb",
        )
        topo.add_host("lb", forwarding=True)
        for name in self.names:
            topo.add_host(name, gateway="lb")
        topo.add_link("client", "lb")
        for name in self.names:
            topo.add_link("lb", name)
        return topo

    def _start_child(self, host: Host, module: str, config: dict[str, Any],
                     log: str) -> ChildProcess:
        """`python -m module CONFIG_JSON` in host's namespace: stdout a pipe to us, stderr
        in logs/<log>; stopped in _stop()."""
        child = host.start([sys.executable, "-m", module, json.dumps(config)],
                           self.out / "logs" / log, mode="w", stdout=subprocess.PIPE,
                           text=True, bufsize=1)
        self.children.append(child)
        return child

    def _write_control(self, host: Host, name: str) -> None:
        path = host.workdir / "control.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.control[name]))
        tmp.replace(path)

    def _start(self, net: Network, run: Run) -> None:
        (self.out / "logs").mkdir(exist_ok=True)
        self._start_sites(net)
        vip = lvs_vip(run)
        net.add_address("lb", str(vip), "to-client")
        streams = self._start_services(net, vip)
        self._start_probe(net)
        self._start_client(net, vip, streams)

    def _start_sites(self, net: Network) -> None:
        """Every site's server, its control file and the reader of its reports."""
        sites = frozenset(self.names)
        costs = {p.label: spec.cost_ms for p, spec in self.scen.plans.items()}
        for name in self.names:
            host = net[name]
            address = host.address_towards("lb")
            self._write_control(host, name)
            child = self._start_child(host, "lab.tm.live.site", {
                "name": name, "address": str(address), "port": SITE_PORT, "costs": costs,
                "budget_ms_per_s": self.scen.sites[name].budget_ms_per_s,
                "stats": str(host.workdir / "stats.json"),
                "control": str(host.workdir / "control.json"),
            }, f"site-{name}.log")
            if not announced(child, "listening", READY_TIMEOUT_S):
                raise RuntimeError(f"site {name} did not start: see {self.out}/logs")
            self.servers[name] = RealServer(name, address, SITE_PORT)
            self.stats[name] = SiteStats(
                name, host.workdir / "stats.json", sites, self.ctl.stale_after_s,
                keep_s=self.ctl.window_s + 2 * self.ctl.interval_s,
            )

    def _start_services(self, net: Network, vip: ipaddress.IPv4Address) -> list[dict[str, Any]]:
        """One virtual service per (home, plan), all its traffic at home; the client's
        streams (those with a rate)."""
        scale = self.ctl.weight_scale
        streams = []
        for i, home in enumerate(self.names):
            for p, spec in sorted(self.scen.plans.items()):
                port = service_port(i, p)
                lb = WeightedNftLoadBalancer(net["lb"], vip, port, LbOptions())
                lb.setup()
                self.lbs[(home, p)] = lb
                for name in self.names:  # same order everywhere: same mark per site
                    lb.add_real_server(self.servers[name], scale if name == home else 0)
                self.applied[(home, p)] = lb.weights()
                rate = self.scen.sites[home].requests_per_s * spec.share
                if rate > 0:
                    streams.append({"home": home, "plan": p.label, "port": port, "rate": rate})
        return streams

    def _start_probe(self, net: Network) -> None:
        prober = self._start_child(net["lb"], "lab.tm.live.probe", {
            "targets": {n: [str(s.address), s.port] for n, s in self.servers.items()},
            "interval_s": self.ctl.probe_interval_s, "timeout_s": self.ctl.probe_timeout_s,
        }, "probe.log")
        self.health = Health(prober, self.ctl.fail_after, self.ctl.recover_after)

    def _start_client(self, net: Network, vip: ipaddress.IPv4Address,
                      streams: list[dict[str, Any]]) -> None:
        """The load generator; returns once every stream has had an answer."""
        c = self.scen.clients
        self.client_out = net["client"].workdir / "client.jsonl"
        client = self._start_child(net["client"], "lab.tm.live.client", {
            "vip": str(vip), "streams": streams, "workers": c.workers,
            "requests_per_connection": c.requests_per_connection,
            "connect_timeout_s": c.connect_timeout_s, "out": str(self.client_out),
            "keepalive": [c.keepalive_idle_s, c.keepalive_interval_s, c.keepalive_probes]
            if c.keepalive_idle_s else None,
        }, "client.log")
        if not announced(client, "ready", READY_TIMEOUT_S):
            raise RuntimeError(
                f"the clients got no answer from every service within {READY_TIMEOUT_S:g} s "
                f"(see {self.out}/logs/client.log)"
            )

    # --- the loop -----------------------------------------------------------------------------
    def _fault(self, net: Network, event: Event) -> None:
        assert self.events is not None
        host = net[event.site]
        if event.action == "budget":
            self.control[event.site]["budget_ms_per_s"] = event.budget_ms_per_s
            self._write_control(host, event.site)
        elif event.action == "report":
            self.control[event.site]["report"] = event.report
            self._write_control(host, event.site)
        elif event.action == "crash":
            host.cut_link("lb")  # the site's link to the lb: all its packets dropped, no RST
        elif event.action == "restore":
            host.mend_link()
        self.events.add("fault", event.describe())

    def _apply(self, outcome: Outcome, *, failed: str | None = None,
               recovered: str | None = None) -> None:
        """Weights of every service whose weights changed; then remove/reset or re-add."""
        assert self.events is not None
        if outcome.changed:
            self.events.add("shifts", describe(outcome.table))
        for line in self._apply_weights():
            self.events.add("weights", line)
        if failed is not None:
            self._withdraw(failed)
        if recovered is not None:
            self._add_back(recovered)
        if outcome.changed or failed or recovered:
            self.last_change = time.monotonic()

    def _apply_weights(self) -> list[str]:
        """Set the manager's weights (a down site's at 0) where they changed; one line each."""
        changed = []
        for (home, p), lb in self.lbs.items():
            fractions = self.manager.weights(home, p)
            for name in self.manager.down:
                fractions[name] = Fraction(0)
            w = integer_weights(fractions, self.ctl.weight_scale)
            if w != self.applied[(home, p)]:
                lb.set_weights(w)
                self.applied[(home, p)] = w
                changed.append(f"{home}/{p.label}: " + ", ".join(f"{n} {w[n]}" for n in w))
        return changed

    def _withdraw(self, failed: str) -> None:
        """Remove a failed site from every service; mode tm also resets its connections."""
        assert self.events is not None
        reset = self.ctl.mode == "tm"
        for lb in self.lbs.values():
            lb.remove_real_server(self.servers[failed])
            if reset:
                lb.reset_connections(self.servers[failed])
        self.events.add(
            "failover",
            f"{failed}: removed from {len(self.lbs)} services"
            + ("; its connections reset (drain with reset)" if reset else
               "; its connections left in the table (expire_nodest_conn=0: blackholed)"),
        )

    def _add_back(self, recovered: str) -> None:
        assert self.events is not None
        for key, lb in self.lbs.items():
            lb.add_real_server(self.servers[recovered], self.applied[key][recovered])
        self.events.add("failover", f"{recovered}: added back to {len(self.lbs)} services")

    def _log_reasons(self, outcome: Outcome, kind: str = "decision") -> None:
        assert self.events is not None
        for reason in outcome.reasons:
            self.events.add(kind, reason)

    def _verdict(self, kind: str, site: str, detail: str) -> None:
        assert self.events is not None
        self.events.add("health", f"{site}: {kind} ({detail})")
        if kind == "down" and site not in self.manager.down:
            outcome = self.manager.fail(site, detail)
            self._log_reasons(outcome, "failover")
            self._apply(outcome, failed=site)
        elif kind == "up" and site in self.manager.down:
            outcome = self.manager.recover(site, detail, canary=self.ctl.mode == "tm")
            self._log_reasons(outcome, "failover")
            self._apply(outcome, recovered=site)

    def _measure(self, now: float) -> dict[str, Measured | str]:
        assert self.events is not None
        measured: dict[str, Measured | str] = {}
        for name, st in self.stats.items():
            error = st.poll(now)
            m = None if error else st.measure(self.ctl.window_s)
            measured[name] = m if m is not None else (
                error or f"less than {MIN_SPAN_S:g} s of reports since its budget changed")
            bad = error not in (None, "not enough reports yet")
            if bad and error != self.report_state.get(name) and name not in self.manager.down:
                self.events.add("report", f"{name}: {error}: not measured, not acted on")
                self.report_state[name] = error
            elif error is None and self.report_state.get(name):
                self.events.add("report", f"{name}: measured again (valid reports)")
                self.report_state[name] = None
            self._timeline_row(now, name, st, measured[name])
        return measured

    def _timeline_row(self, now: float, name: str, st: SiteStats, m: Measured | str) -> None:
        """sites.csv: this tick's utilisation (since the last tick) and the window's."""
        th = self.scen.sites[name].thresholds
        tick_u = cpu = budget = ""
        latest = st.history[-1] if st.history and st.error is None else None
        if latest is None:  # a site with a broken report: read the file as it is, if sound
            with contextlib.suppress(Exception):
                latest = parse_report(st.path.read_text(), name, st.sites)
        if latest is not None:
            budget = f"{latest.budget_ms_per_s:g}"
            old = self.prev.get(name)
            d = between(old, latest) if old is not None else None
            if d is not None:
                tick_u, cpu = f"{float(d.utilisation):.4f}", f"{float(d.cpu_total):.1f}"
            if d is not None or old is None:
                self.prev[name] = latest
        self.site_rows.append([
            f"{now - self.t0:.3f}", name,
            "down" if name in self.manager.down else "up",
            "ok" if isinstance(m, Measured) else m,
            budget, tick_u, f"{float(m.utilisation):.4f}" if isinstance(m, Measured) else "",
            cpu, fmt_u(th.max), fmt_u(th.target), fmt_u(th.acceptable),
        ])

    def _tick(self) -> None:
        assert self.events is not None
        now = time.monotonic()
        measured = self._measure(now)
        if self.ctl.mode == "off":
            self.manager.observe(measured)
        elif now - self.last_change < self.ctl.settle_s - SLACK_S:
            self.events.add(
                "hold", f"settling: last change {now - self.last_change:.1f} s ago "
                f"(settle_s {self.ctl.settle_s:g}); utilisation "
                f"{self.manager.utilisation_note(measured)}",
            )
        else:
            outcome = self.manager.step(measured)
            self.events.add("measure", self.manager.utilisation_note(measured))
            self._log_reasons(outcome)
            if outcome.changed:
                self._apply(outcome)
        for (s, p, d), f in sorted(self.manager.table.items()):
            self.shift_rows.append([f"{now - self.t0:.3f}", s, p.label, d, f"{float(f):.4f}"])

    def _loop(self, net: Network) -> None:
        events = list(self.scen.events)
        end = self.t0 + self.scen.duration_s
        next_tick = self.t0 + self.ctl.interval_s
        while True:
            now = time.monotonic()
            if now >= end:
                break
            while events and self.t0 + events[0].at_s <= now:
                self._fault(net, events.pop(0))
            if now >= next_tick:
                try:
                    self._tick()
                except Exception as exc:  # a control loop must outlive one bad step
                    assert self.events is not None
                    self.events.add("error", f"control step failed, no change: {exc!r}")
                    traceback.print_exc()
                next_tick += self.ctl.interval_s
                if next_tick < time.monotonic():  # a slow tick: do not pile up
                    next_tick = time.monotonic() + self.ctl.interval_s
            wake = min([next_tick, end] + ([self.t0 + events[0].at_s] if events else []))
            try:
                kind, site, detail, _ = self.health.verdicts.get(
                    timeout=max(0.0, wake - time.monotonic())
                )
            except queue.Empty:
                continue
            self._verdict(kind, site, detail)

    # --- stopping and output ---------------------------------------------------------------
    def _stop(self) -> None:
        for child in reversed(self.children):  # the client first: it writes its last lines on TERM
            child.stop(timeout=5)
        for lb in self.lbs.values():
            lb.close()

    def _write(self) -> None:
        with open(self.out / "sites.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["t_s", "site", "health", "report", "budget_ms_per_s", "utilisation",
                        "utilisation_window", "cpu_ms_per_s", "max", "target", "acceptable"])
            w.writerows(self.site_rows)
        with open(self.out / "shifts.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["t_s", "source", "plan", "destination", "fraction"])
            w.writerows(self.shift_rows)
        report.write_client_timelines(self.client_out, self.t0, self.out)

    def run(self) -> dict[str, Any]:
        """Build, run, tear down; write the timelines, the PNG and summary.json."""
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "scenario.toml").write_text(self.scen.path.read_text())
        run = new_run()
        try:
            with Network(self.topology(), run) as net:
                try:
                    self.events = EventLog(self.out / "events.csv", lambda: self.t0, self.on_line)
                    self._start(net, run)
                    self.t0 = time.monotonic()
                    self.events.add("start", f"load running; controller mode {self.ctl.mode}")
                    self._loop(net)
                    self.events.add("end", f"after {self.scen.duration_s:g} s")
                finally:
                    self._stop()
                    if self.events is not None:
                        self.events.close()
                if not self.client_out.exists():
                    raise LabError("the load generator wrote no output", f"see {self.out}/logs")
                self._write()
        finally:
            run.release()
        (self.out / "run.json").write_text(json.dumps({
            "scenario": str(self.scen.path), "mode": self.ctl.mode,
            "duration_s": self.scen.duration_s, "sites": self.names,
        }, indent=2))
        summary = report.summarise(self.out, self.scen)
        (self.out / "summary.json").write_text(json.dumps(summary, indent=2))
        report.plot(self.out, self.scen)
        return summary


def run_scenario(
    scen: Scenario, out: Path, on_line: Callable[[str], None] = print
) -> dict[str, dict[str, Any]]:
    """The scenario in mode tm (and, if it asks for it, again with the controller off)."""
    results: dict[str, dict[str, Any]] = {
        scen.controller.mode: LiveRun(scen, out / scen.controller.mode, on_line).run()
    }
    if scen.compare_without_controller and scen.controller.mode == "tm":
        results["off"] = LiveRun(scen.with_mode("off"), out / "off", on_line).run()
    return results
