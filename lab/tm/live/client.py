"""Load generator: paced keep-alive HTTP requests per (home site, plan), in the client namespace.

Run as `python -m lab.tm.live.client CONFIG_JSON`. Each stream (home, plan) sends `rate`
requests/s to its virtual service VIP:port through `workers` connections; each worker sends
one request at a time at its share of the rate (like a pool of long-lived connections, so a
blackholed connection stalls its worker the way it stalls a real client), closes the
connection after `requests_per_connection` requests (the recycling that browsers and pools do,
and the only way a new lb weight reaches an existing client: LVS schedules new connections
only), and on an error reconnects at once. No application read timeout: a dead connection is
ended by the kernel (tcp_retries2) or by a reset, which is what the failover experiment
compares.

Output (JSON lines, in the `out` file):
    {"kind": "sample", "t": T, "ok": {"A/free/B": n}, "err": {"A/free": n}, "conn": {..}}
        per second; "A/free/B" = home A, plan free, served by B
    {"kind": "gap", "home", "plan", "worker", "from_t", "to_t", "site_before", "site_after",
     "errors"}   a worker went more than `gap_s` without a success (to_t null: never again)
stdout: "ready" once every stream has had a success. T is time.monotonic(), one clock for
all processes of the machine. SIGTERM: write the last sample and open gaps, exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import Any, TextIO


@dataclass
class Counters:
    ok: dict[str, int] = field(default_factory=dict)
    err: dict[str, int] = field(default_factory=dict)
    conn: dict[str, int] = field(default_factory=dict)

    def add(self, table: dict[str, int], key: str) -> None:
        table[key] = table.get(key, 0) + 1


@dataclass
class Worker:
    """One worker's connection and its record since its last success."""

    home: str
    plan: str
    port: int
    index: int
    period: float  # seconds between its requests
    first_used: int  # requests the first connection counts as already sent
    last_ok_t: float
    last_ok_site: str = ""
    errors: int = 0
    last_error: str = ""
    used: int = 0
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None

    @property
    def key(self) -> str:
        return f"{self.home}/{self.plan}"

    def gap(self, to_t: float | None, site_after: str) -> dict[str, Any]:
        """The gap record since the last success, up to to_t (None: still open)."""
        return {
            "kind": "gap", "home": self.home, "plan": self.plan, "worker": self.index,
            "from_t": self.last_ok_t, "to_t": to_t, "site_before": self.last_ok_site,
            "site_after": site_after, "errors": self.errors, "last_error": self.last_error,
        }


class Client:
    def __init__(self, config: dict[str, Any], out: TextIO) -> None:
        self.vip: str = config["vip"]
        self.streams: list[dict[str, Any]] = config["streams"]
        self.workers: int = config["workers"]
        self.per_connection: int = config["requests_per_connection"]
        self.connect_timeout: float = config["connect_timeout_s"]
        self.gap_s: float = config.get("gap_s", 1.0)
        self.keepalive: list[int] | None = config.get("keepalive")  # idle, interval, probes
        self.out = out
        self.counters = Counters()
        self.stopping = asyncio.Event()
        self.open_gaps: dict[tuple[str, str, int], dict[str, Any]] = {}
        self.ready: set[str] = set()

    def write(self, record: dict[str, Any]) -> None:
        self.out.write(json.dumps(record) + "\n")

    async def _request(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, home: str, plan: str
    ) -> str:
        writer.write(
            f"GET /work?home={home}&plan={plan} HTTP/1.1\r\nHost: {self.vip}\r\n\r\n".encode()
        )
        await writer.drain()
        status = await reader.readline()
        if not status:
            raise ConnectionError("connection closed by the server")
        length, site = 0, ""
        while True:
            line = await reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            if name.lower() == "content-length":
                length = int(value)
            elif name.lower() == "x-site":
                site = value.strip()
        await reader.readexactly(length)
        if not status.split()[1:2] == [b"200"]:
            raise ConnectionError(f"HTTP {status.decode('latin-1').strip()}")
        return site

    def _keepalive(self, writer: asyncio.StreamWriter) -> None:
        """SO_KEEPALIVE with short timers: a connection that waits for an answer that never
        comes sends probes, which meet the lb's reset (or, without one, time out)."""
        if self.keepalive is None:
            return
        sock = writer.get_extra_info("socket")
        idle, interval, count = self.keepalive
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, interval)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, count)

    async def worker(self, stream: dict[str, Any], index: int, start: float) -> None:
        """One keep-alive connection of a stream, paced at its share of the stream's rate."""
        period = self.workers / stream["rate"]
        next_t = start + period * random.random()
        # the first connection carries a random share of its requests, so workers do not
        # recycle in lockstep (rates like 20/s and 5 requests per connection divide evenly)
        w = Worker(stream["home"], stream["plan"], stream["port"], index, period,
                   first_used=random.randrange(self.per_connection),
                   last_ok_t=time.monotonic())
        while not self.stopping.is_set():
            if not await self._sleep_until(next_t):
                break
            next_t = max(next_t + period, time.monotonic())  # late: skip, do not burst
            await self._send(w)
            self.open_gaps[(w.home, w.plan, w.index)] = w.gap(None, "")
        if w.writer is not None:
            w.writer.transport.abort()

    async def _sleep_until(self, t: float) -> bool:
        """Wait until monotonic time t; False if the client is stopping first."""
        now = time.monotonic()
        if t > now:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), t - now)
        return not self.stopping.is_set()

    async def _send(self, w: Worker) -> None:
        """One request; an error on a used connection is retried once on a new one."""
        for attempt in (1, 2):
            fresh = w.writer is None
            try:
                site = await self._request_on(w)
            except (OSError, EOFError, TimeoutError, ConnectionError, ValueError) as exc:
                self._failed(w, exc, fresh)
                if fresh or attempt == 2:
                    await asyncio.sleep(0.05)
                    return
                continue
            self._answered(w, site)
            return

    async def _request_on(self, w: Worker) -> str:
        """The request on the worker's connection, opened first if it has none."""
        if w.reader is None or w.writer is None:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(self.vip, w.port), self.connect_timeout
            )
            w.reader, w.writer = reader, writer
            w.used = w.first_used
            w.first_used = 0
            self._keepalive(writer)
            self.counters.add(self.counters.conn, w.key)
        return await self._request(w.reader, w.writer, w.home, w.plan)

    def _failed(self, w: Worker, exc: BaseException, fresh: bool) -> None:
        self.counters.add(self.counters.err, w.key)
        w.errors += 1
        w.last_error = describe_error(exc, fresh)
        print(f"{time.monotonic():.3f} {w.key} worker {w.index}: {w.last_error} ({exc})",
              file=sys.stderr, flush=True)
        if w.writer is not None:
            w.writer.transport.abort()
        w.reader = w.writer = None

    def _answered(self, w: Worker, site: str) -> None:
        """Count the success, write the gap it ends (if any), recycle a used-up connection."""
        now = time.monotonic()
        self.counters.add(self.counters.ok, f"{w.key}/{site}")
        self.ready.add(w.key)
        if now - w.last_ok_t > self.gap_s + w.period:
            self.write(w.gap(now, site))
        w.last_ok_t, w.last_ok_site, w.errors, w.last_error = now, site, 0, ""
        w.used += 1
        if w.used >= self.per_connection:
            assert w.writer is not None
            w.writer.close()
            w.reader = w.writer = None

    async def sampler(self) -> None:
        announced = False
        next_t = time.monotonic() + 1
        while not self.stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), max(0.0, next_t - time.monotonic()))
            self.flush(time.monotonic())
            next_t += 1
            if not announced and len(self.ready) == len(self.streams):
                print("ready", flush=True)
                announced = True

    def flush(self, t: float) -> None:
        c, self.counters = self.counters, Counters()
        self.write({"kind": "sample", "t": t, "ok": c.ok, "err": c.err, "conn": c.conn})
        self.out.flush()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.stopping.set)
        start = time.monotonic()
        tasks = [
            asyncio.create_task(self.worker(s, i, start))
            for s in self.streams
            for i in range(self.workers)
        ]
        sampler = asyncio.create_task(self.sampler())
        await self.stopping.wait()
        await asyncio.sleep(0)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await sampler
        now = time.monotonic()
        for gap in self.open_gaps.values():
            if now - gap["from_t"] > self.gap_s:
                self.write(gap)
        self.out.flush()


def describe_error(exc: BaseException, connecting: bool) -> str:
    """'connect: TimeoutError', 'request: ConnectionResetError [Errno 104]'."""
    where = "connect" if connecting else "request"
    errno = getattr(exc, "errno", None)
    return f"{where}: {type(exc).__name__}" + (f" [Errno {errno}]" if errno else "")


def main() -> None:
    config = json.loads(sys.argv[1])
    with open(config["out"], "w") as out:
        asyncio.run(Client(config, out).run())


if __name__ == "__main__":
    main()
