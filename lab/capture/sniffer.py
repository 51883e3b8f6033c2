"""Packet capture of one interface of one lab namespace, with scapy or tcpdump.

Both backends run as a process inside the namespace (Host.popen) and write a classic pcap
(Ethernet, snaplen 256 by default) that opens with scapy's rdpcap and with `tcpdump -r`.
scapy is the default because it needs nothing outside the venv, but it drops packets at high
rates (recipe-host-nftables.md §6: the LB's RST was missing from a busy sysbench capture), so
`tool="auto"` switches to tcpdump when the expected rate is high; the choice and the reason are
recorded in CaptureStats. Both report the kernel's drop counter, so a lossy capture is visible.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from lab.errors import LabError
from lab.net.topology import Host

TOOLS = ("auto", "scapy", "tcpdump")
# Above this many packets/s the scapy child (one Python thread) starts to fall behind on a
# 2-vCPU VM; a "busy" load (back-to-back transactions) is well above it.
SCAPY_MAX_PPS = 500.0
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 20.0  # the scapy child may drain a backlog for up to 10 s
SNAPLEN = 256


@dataclass(frozen=True)
class CaptureStats:
    """What a finished capture produced, and how trustworthy it is."""

    tool: str
    why: str
    path: Path
    packets: int  # packets written to the pcap, as counted by the capture tool
    received: int | None  # packets that passed the BPF filter in the kernel
    dropped: int | None  # packets the kernel dropped because the tool was too slow
    started_at: float  # wall clock (time.time()) when the capture was confirmed running
    stopped_at: float
    clean: bool  # stopped on request, everything flushed (False: killed, or backlog left)

    def as_dict(self) -> dict[str, Any]:
        return {
            "tool": self.tool, "why": self.why, "path": str(self.path),
            "packets": self.packets, "received": self.received, "dropped": self.dropped,
            "started_at": self.started_at, "stopped_at": self.stopped_at, "clean": self.clean,
        }


def choose_tool(
    tool: str = "auto", *, load: str | None = None, expected_pps: float | None = None
) -> tuple[str, str]:
    """Pick the capture tool and say why.

    load is the trial's load shape ("busy" = back-to-back transactions, "idle"), or None;
    expected_pps an optional packet-rate estimate. Busy or fast => tcpdump (scapy loses packets).
    """
    if tool not in TOOLS:
        raise LabError(f"unknown capture tool {tool!r}", f"use one of {', '.join(TOOLS)}")
    have_tcpdump = shutil.which("tcpdump") is not None
    if tool == "tcpdump":
        if not have_tcpdump:
            raise LabError("tcpdump is not installed", "apt-get install tcpdump (make setup)")
        return "tcpdump", "requested"
    if tool == "scapy":
        return "scapy", "requested"
    busy = load == "busy"
    fast = expected_pps is not None and expected_pps > SCAPY_MAX_PPS
    if busy or fast:
        reason = "busy load" if busy else f"expected {expected_pps:g} pkt/s > {SCAPY_MAX_PPS:g}"
        if have_tcpdump:
            return "tcpdump", f"{reason}: scapy drops packets at high rates"
        return "scapy", f"{reason}, but tcpdump is not installed: capture may miss packets"
    return "scapy", f"light load ({load or 'unspecified'}): scapy keeps up"


class PacketCapture:
    """Capture `iface` of `host` matching `bpf` into `out` (a pcap).

    start() returns only once the capture is really running (tcpdump printed "listening on",
    or the scapy child's started_callback fired), so no packet sent after start() is missed;
    stop() ends it cleanly (pcap flushed) and returns CaptureStats. Use as a context manager
    or call stop() in a teardown: a capture never outlives its Network anyway (Network.close
    kills every process of the namespace).
    """

    def __init__(
        self,
        host: Host,
        iface: str,
        bpf: str,
        out: Path,
        *,
        tool: str = "auto",
        load: str | None = None,
        expected_pps: float | None = None,
        snaplen: int = SNAPLEN,
    ) -> None:
        self.host = host
        self.iface = iface
        self.bpf = bpf
        self.out = Path(out)
        self.snaplen = snaplen
        self.tool, self.why = choose_tool(tool, load=load, expected_pps=expected_pps)
        self.proc: subprocess.Popen[str] | None = None
        self.started_at: float | None = None
        self.stats: CaptureStats | None = None
        self._stderr: list[str] = []
        self._stdout: list[str] = []
        self._ready = threading.Event()
        self._readers: list[threading.Thread] = []
        self._backlog_left = False

    def __enter__(self) -> PacketCapture:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def argv(self) -> list[str]:
        if self.tool == "tcpdump":
            # -U: write each packet at once; --immediate-mode: libpcap hands packets over
            # without waiting for a full ring block, so the last ones before SIGINT are kept.
            cmd = ["tcpdump", "-i", self.iface, "-w", str(self.out), "-U", "--immediate-mode",
                   "-s", str(self.snaplen), "-B", "4096"]
            return [*cmd, *([self.bpf] if self.bpf else [])]
        return [sys.executable, "-m", "lab.capture.scapy_sniff", "--iface", self.iface,
                "--filter", self.bpf, "--out", str(self.out), "--snaplen", str(self.snaplen)]

    def start(self, timeout: float = START_TIMEOUT_S) -> None:
        if self.proc is not None:
            raise RuntimeError("capture already started")
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.proc = self.host.popen(
            self.argv(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, bufsize=1,
        )
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self._reader(self.proc.stdout, self._stdout, "READY")
        self._reader(self.proc.stderr, self._stderr, "listening on")
        deadline = time.monotonic() + timeout
        while not self._ready.wait(0.05):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self._kill()
                for t in self._readers:
                    t.join(1)
                why = "exited" if self.proc.returncode is not None else f"not ready in {timeout}s"
                raise LabError(
                    f"{self.tool} capture on {self.host.name}/{self.iface} {why}: "
                    f"{' '.join(self._stderr[-3:]).strip() or 'no output'}",
                    "check the interface name and the BPF filter",
                )
        self.started_at = time.time()

    def _reader(self, stream: IO[str], sink: list[str], marker: str) -> None:
        def pump() -> None:
            for line in stream:
                sink.append(line.rstrip("\n"))
                if marker in line:
                    self._ready.set()

        t = threading.Thread(target=pump, daemon=True, name=f"capture-{self.tool}")
        t.start()
        self._readers.append(t)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> CaptureStats:
        """End the capture (SIGINT for tcpdump, "stop" on stdin for scapy) and report."""
        if self.stats is not None:
            return self.stats
        if self.proc is None:
            raise RuntimeError("capture was never started")
        clean = True
        if self.proc.poll() is None:
            if self.tool == "tcpdump":
                self.proc.send_signal(signal.SIGINT)  # tcpdump flushes and prints its stats
            else:
                try:
                    assert self.proc.stdin is not None
                    self.proc.stdin.write("stop\n")
                    self.proc.stdin.flush()
                except (BrokenPipeError, OSError):
                    self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                clean = False
                self._kill()
        else:
            clean = self.proc.returncode == 0
        with contextlib.suppress(OSError, ValueError):
            if self.proc.stdin:
                self.proc.stdin.close()
        for t in self._readers:
            t.join(2)
        packets, received, dropped = self._parse_counts()
        self.stats = CaptureStats(
            tool=self.tool, why=self.why, path=self.out, packets=packets,
            received=received, dropped=dropped, started_at=self.started_at or time.time(),
            stopped_at=time.time(),
            clean=clean and self.proc.returncode == 0 and not self._backlog_left,
        )
        return self.stats

    def _kill(self) -> None:
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)

    def _parse_counts(self) -> tuple[int, int | None, int | None]:
        if self.tool == "tcpdump":
            return parse_tcpdump_stats("\n".join(self._stderr))
        for line in reversed(self._stdout):
            if line.startswith("{"):
                data = json.loads(line)
                self._backlog_left = bool(data.get("backlog_left"))
                return int(data["packets"]), data.get("received"), data.get("dropped")
        return 0, None, None


_TCPDUMP_STAT = re.compile(
    r"^(\d+) packets? (captured|received by filter|dropped by kernel)", re.MULTILINE
)


def parse_tcpdump_stats(stderr: str) -> tuple[int, int | None, int | None]:
    """(captured, received by filter, dropped by kernel) from tcpdump's exit report."""
    found = {what: int(n) for n, what in _TCPDUMP_STAT.findall(stderr)}
    return (
        found.get("captured", 0),
        found.get("received by filter"),
        found.get("dropped by kernel"),
    )
