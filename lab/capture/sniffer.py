"""Packet capture of one interface of one lab namespace, with scapy or tcpdump.

Both backends run as a process inside the namespace (Host.start) and write a classic pcap
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
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lab.errors import LabError
from lab.net.process import ChildProcess, find_binary, wait_until
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
    have_tcpdump = find_binary("tcpdump") is not None
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
    or the scapy child's started_callback printed READY), so no packet sent after start() is
    missed; stop() ends it cleanly (pcap flushed) and returns CaptureStats. The tool's output
    (its ready line, its exit report, any error) goes to `<out stem>-<tool>.log` beside the
    pcap. Use as a context manager or call stop() in a teardown: a capture never outlives its
    Network anyway (Network.close kills every process of the namespace).
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
        self.log_path = self.out.with_name(f"{self.out.stem}-{self.tool}.log")
        self.child: ChildProcess | None = None
        self.started_at: float | None = None
        self.stats: CaptureStats | None = None

    def __enter__(self) -> PacketCapture:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def argv(self) -> list[str]:
        if self.tool == "tcpdump":
            # -U: write each packet at once; --immediate-mode: libpcap hands packets over
            # without waiting for a full ring block, so the last ones before SIGINT are kept.
            cmd = [find_binary("tcpdump") or "tcpdump", "-i", self.iface, "-w", str(self.out),
                   "-U", "--immediate-mode", "-s", str(self.snaplen), "-B", "4096"]
            return [*cmd, *([self.bpf] if self.bpf else [])]
        return [sys.executable, "-m", "lab.capture.scapy_sniff", "--iface", self.iface,
                "--filter", self.bpf, "--out", str(self.out), "--snaplen", str(self.snaplen)]

    def _output(self) -> str:
        """What the tool printed so far (stdout and stderr, in its log)."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def _ready(self) -> bool:
        if self.tool == "tcpdump":
            return "listening on" in self._output()
        return "READY" in self._output().splitlines()

    def start(self, timeout: float = START_TIMEOUT_S) -> None:
        if self.child is not None:
            raise RuntimeError("capture already started")
        self.out.parent.mkdir(parents=True, exist_ok=True)
        # stdin is the scapy child's stop channel (a "stop" line, or EOF if we die)
        self.child = self.host.start(self.argv(), self.log_path, mode="w",
                                     stdin=subprocess.PIPE, text=True, bufsize=1)
        if wait_until(self._ready, timeout, alive=self.child.alive) is None:
            why = "exited" if not self.child.alive() else f"not ready in {timeout}s"
            self.child.stop(timeout=0, signals=())  # SIGKILL: it never got going
            output = " ".join(self._output().splitlines()[-3:]).strip()
            raise LabError(
                f"{self.tool} capture on {self.host.name}/{self.iface} {why}: "
                f"{output or 'no output'}",
                "check the interface name and the BPF filter",
            )
        self.started_at = time.time()

    def running(self) -> bool:
        return self.child is not None and self.child.alive()

    def _stop_signals(self) -> tuple[int, ...]:
        """Ask the tool to finish; the signals ChildProcess.stop then sends."""
        assert self.child is not None
        if self.tool == "tcpdump":
            return (signal.SIGINT,)  # tcpdump flushes and prints its stats
        try:
            assert self.child.proc.stdin is not None
            self.child.proc.stdin.write("stop\n")
            self.child.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            return (signal.SIGTERM,)
        return ()

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> CaptureStats:
        """End the capture (SIGINT for tcpdump, "stop" on stdin for scapy) and report.

        A tool still busy after `timeout` is killed; its exit code then marks the capture
        unclean, as does a non-zero exit or a backlog the scapy child could not drain.
        """
        if self.stats is not None:
            return self.stats
        if self.child is None:
            raise RuntimeError("capture was never started")
        signals = self._stop_signals() if self.child.alive() else ()
        rc = self.child.stop(timeout, signals=signals)
        with contextlib.suppress(OSError, ValueError):
            if self.child.proc.stdin:
                self.child.proc.stdin.close()
        packets, received, dropped, backlog_left = self._parse_counts()
        self.stats = CaptureStats(
            tool=self.tool, why=self.why, path=self.out, packets=packets,
            received=received, dropped=dropped, started_at=self.started_at or time.time(),
            stopped_at=time.time(), clean=rc == 0 and not backlog_left,
        )
        return self.stats

    def _parse_counts(self) -> tuple[int, int | None, int | None, bool]:
        """(packets, received, dropped, backlog left) from the tool's exit report."""
        output = self._output()
        if self.tool == "tcpdump":
            return (*parse_tcpdump_stats(output), False)
        for line in reversed(output.splitlines()):
            if line.startswith("{"):
                data = json.loads(line)
                return (int(data["packets"]), data.get("received"), data.get("dropped"),
                        bool(data.get("backlog_left")))
        return 0, None, None, False


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
