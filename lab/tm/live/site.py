"""A site: a small HTTP service whose CPU cost per request depends on the plan, under a budget.

Run inside the site's namespace as `python -m lab.tm.live.site CONFIG_JSON`; prints
"listening" when it accepts connections.

    GET /work?home=A&plan=free   burns the plan's CPU cost (a hash loop), answers with the
                                 site's name (also in X-Site): the client learns who served it
    GET /health                  "ok", free of charge (the lb's health probe)

Capacity is a *worker budget*: the site may spend `budget_ms_per_s` CPU ms per second.
Requests reserve their cost on a FIFO virtual clock that advances at that rate, sleep until
their slot and then burn; what a request really used (time.thread_time() over the handler)
is settled afterwards, so over any interval the site spends at most its budget and queues
the rest (latency grows as the budget fills, like a CPU-bound server). Utilisation is CPU
used / CPU allowed. A cgroup CPU quota would be the production-like knob, but on a small
shared machine the CPU a cgroup gets depends on everything else running, so `usage/quota`
would measure the neighbours as much as the site; a budget the site enforces itself is
exact, cheap and changeable at run time (the capacity-drop scenario).

Every `report_every_s` the site writes its cumulative counters, atomically, to the stats
file (JSON):
    {"site": "A", "t": <time.monotonic()>, "seq": n, "budget_ms_per_s": 250,
     "allowed_ms": <CPU ms allowed so far>, "cpu_ms": {"A/free": ..}, "requests": {"A/free": ..}}
and reads the control file the runner writes: {"budget_ms_per_s": x, "report": "ok" |
"garbage" | "silent"} (a broken reporter: nonsense, or nothing at all).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit


class Budget:
    """A FIFO virtual clock advancing at `rate` CPU ms per second of real time."""

    def __init__(self, rate_ms_per_s: float) -> None:
        self._lock = threading.Lock()
        self.rate = rate_ms_per_s
        now = time.monotonic()
        self._free_at = now
        self._since = now
        self._allowed_ms = 0.0

    def _accrue(self, now: float) -> None:
        self._allowed_ms += self.rate * (now - self._since)
        self._since = now

    def set_rate(self, rate_ms_per_s: float) -> None:
        with self._lock:
            self._accrue(time.monotonic())
            self.rate = rate_ms_per_s

    def reserve(self, cost_ms: float) -> float:
        """The monotonic time at which a request of `cost_ms` may start (idle time is lost)."""
        with self._lock:
            start = max(time.monotonic(), self._free_at)
            self._free_at = start + cost_ms / self.rate
            return start

    def settle(self, reserved_ms: float, used_ms: float) -> None:
        with self._lock:
            self._free_at += (used_ms - reserved_ms) / self.rate

    def allowed_ms(self) -> float:
        with self._lock:
            self._accrue(time.monotonic())
            return self._allowed_ms


def burn(ms: float) -> None:
    """Spend `ms` of this thread's CPU time hashing."""
    end = time.thread_time() + ms / 1000
    x = b"blackhole-lab"
    while time.thread_time() < end:
        for _ in range(20):
            x = hashlib.sha256(x).digest()


class Site:
    def __init__(self, config: dict[str, Any]) -> None:
        self.name: str = config["name"]
        self.costs: dict[str, float] = config["costs"]
        self.budget = Budget(float(config["budget_ms_per_s"]))
        self.stats_path = Path(config["stats"])
        self.control_path = Path(config["control"])
        self.report_every_s: float = config.get("report_every_s", 0.2)
        self.report_mode = "ok"
        self._lock = threading.Lock()
        self.cpu_ms: dict[str, float] = {}
        self.requests: dict[str, int] = {}
        self._seq = 0

    def account(self, key: str, used_ms: float) -> None:
        with self._lock:
            self.cpu_ms[key] = self.cpu_ms.get(key, 0.0) + used_ms
            self.requests[key] = self.requests.get(key, 0) + 1

    def _control(self) -> None:
        try:
            control = json.loads(self.control_path.read_text())
        except (OSError, ValueError):
            return
        budget = control.get("budget_ms_per_s")
        if isinstance(budget, int | float) and budget > 0 and budget != self.budget.rate:
            self.budget.set_rate(float(budget))
        if control.get("report") in ("ok", "garbage", "silent"):
            self.report_mode = control["report"]

    def _report_text(self) -> str | None:
        self._seq += 1
        with self._lock:
            cpu, requests = dict(self.cpu_ms), dict(self.requests)
        record: dict[str, Any] = {
            "site": self.name,
            "t": time.monotonic(),
            "seq": self._seq,
            "budget_ms_per_s": self.budget.rate,
            "allowed_ms": self.budget.allowed_ms(),
            "cpu_ms": cpu,
            "requests": requests,
        }
        if self.report_mode == "silent":
            return None
        if self.report_mode == "garbage":  # the kinds of nonsense a broken reporter writes
            kind = self._seq % 4
            if kind == 0:
                return json.dumps(record)[:40]  # cut off mid-write
            if kind == 1:
                record["cpu_ms"] = {k: "lots" for k in cpu} or {"x": "lots"}
            elif kind == 2:
                record["allowed_ms"] = math.nan
            else:
                record["cpu_ms"] = {k: -v for k, v in cpu.items()} or {"x": -1.0}
        return json.dumps(record)

    def report_forever(self) -> None:
        tmp = self.stats_path.with_suffix(".tmp")
        while True:
            self._control()
            text = self._report_text()
            if text is not None:
                tmp.write_text(text)
                tmp.replace(self.stats_path)
            time.sleep(self.report_every_s)


def make_handler(site: Site) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: the client decides when to close

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _reply(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("X-Site", site.name)
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            t0 = time.thread_time()
            url = urlsplit(self.path)
            if url.path == "/health":
                self._reply(200, b"ok")
                return
            query = parse_qs(url.query)
            plan = query.get("plan", [""])[0]
            home = query.get("home", [""])[0]
            if url.path != "/work" or plan not in site.costs or not home:
                self._reply(400, b"want /work?home=SITE&plan=PLAN")
                return
            cost = site.costs[plan]
            start = site.budget.reserve(cost)
            delay = start - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            burn(cost)
            self._reply(200, site.name.encode())
            used = (time.thread_time() - t0) * 1000
            site.budget.settle(cost, used)
            site.account(f"{home}/{plan}", used)

    return Handler


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that resets mid-request is normal here (failover, recycling)


def main() -> None:
    config = json.loads(sys.argv[1])
    site = Site(config)
    server = Server((config["address"], int(config["port"])), make_handler(site))
    threading.Thread(target=site.report_forever, name="report", daemon=True).start()
    print("listening", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()
    os._exit(0)


if __name__ == "__main__":
    main()
