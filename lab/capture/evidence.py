"""Evidence: everything the capture layer records for one trial, behind start()/stop().

The trial runner creates one Evidence after the network is built and before the load starts,
and stops it in teardown (before Network.close, which would kill the capture processes):

    ev = Evidence(net["client"], net["lb"], vip, port, out_dir, load=settings.load.shape)
    ev.start()
    teardown.callback(ev.close)  # never raises; no-op once stop() ran
    ...
    result = ev.stop()           # files written; result.facts() for the trial summary

Files in out_dir: client.pcap (and client-<tool>.log, what the capture tool printed),
retransmits.csv (the retransmissions only), segments.csv (every segment event: originals,
retransmissions, keepalives, probes, RSTs), flows.csv (one row per client->VIP flow,
`blackholed` column), sockets.csv, lb_connections.csv, evidence.json (capture stats, nstat
deltas, the cross-check and the snapshot loop's errors).
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab.capture import kernel_counters, retransmits
from lab.capture.conntrack import ConntrackSnapshots
from lab.capture.snapshots import SnapshotLoop
from lab.capture.sniffer import CaptureStats, PacketCapture
from lab.capture.sockets import SocketSnapshots
from lab.net.topology import Host


@dataclass
class EvidenceResult:
    capture: CaptureStats
    analysis: retransmits.Analysis
    counters: dict[str, int]  # nstat deltas in the client namespace over the capture
    files: dict[str, Path]
    snapshot_errors: list[tuple[float, str]] = field(default_factory=list)
    lb_source: str = ""

    def facts(self) -> dict[str, Any]:
        """Flat key -> value pairs for a trial summary."""
        captured = len(self.analysis.retransmissions())
        kernel = self.counters.get("TcpRetransSegs", 0)
        out: dict[str, Any] = {
            "capture.tool": self.capture.tool,
            "capture.why": self.capture.why,
            "capture.packets": self.capture.packets,
            "capture.dropped": self.capture.dropped,
            "retrans.captured": captured,
            "retrans.kernel": kernel,
            # > 0: the capture missed retransmissions (or saw GSO super-segments)
            "retrans.missing": kernel - captured,
            "tlp.captured": self.analysis.count("tlp"),
            "tlp.kernel": self.counters.get("TcpExtTCPLossProbes", 0),
            "rto_timeouts.kernel": self.counters.get("TcpExtTCPTimeouts", 0),
            "aborts_on_timeout.kernel": self.counters.get("TcpExtTCPAbortOnTimeout", 0),
            "flows": len(self.analysis.flows),
            "blackholed_flows": len(self.analysis.blackholed()),
        }
        bh = self.analysis.blackholed()
        if bh:
            first = min(bh, key=lambda f: f.first_lost_t_s or 0.0)
            out.update({
                "bh.flow": first.flow, "bh.count": first.count, "bh.tlp": first.tlp,
                "bh.first_rto_s": first.first_rto_s, "bh.last_gap_s": first.last_gap_s,
                "bh.ended_by": first.ended_by, "bh.first_lost_t_s": first.first_lost_t_s,
                "bh.end_t_s": first.end_t_s,
            })
        return out


class Evidence:
    """Packet capture on the client's interface towards the LB + ss/conntrack snapshots
    every interval_s + nstat before/after, for connections to vip:port.

    t0 (wall clock, default: start()) is the origin of every t_s column; pass
    `lab.capture.to_wall(result.t0)` to line the CSVs up with a monotonic trial clock.
    """

    def __init__(
        self,
        client: Host,
        lb: Host,
        vip: str,
        port: int,
        out_dir: Path,
        *,
        iface: str | None = None,
        bpf: str | None = None,
        tool: str = "auto",
        load: str | None = None,
        interval_s: float = 0.5,
        t0: float | None = None,
        lb_table: str = "auto",
    ) -> None:
        self.client, self.lb = client, lb
        self.vip, self.port = str(vip), port
        self.out_dir = Path(out_dir)
        self.t0 = t0
        self.capture = PacketCapture(
            client, iface or f"to-{lb.name}", bpf or f"tcp and host {self.vip}",
            self.out_dir / "client.pcap", tool=tool, load=load,
        )
        self.interval_s = interval_s
        self.lb_table = lb_table  # ConntrackSnapshots source: "ipvsadm" for real IPVS
        self._loop: SnapshotLoop | None = None
        self._conntrack: ConntrackSnapshots | None = None
        self._before: dict[str, int] = {}
        self.result: EvidenceResult | None = None

    def start(self) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if self.t0 is None:
            self.t0 = time.time()
        self.capture.start()
        self._before = kernel_counters.read_counters(self.client)
        self._conntrack = ConntrackSnapshots(
            self.lb, self.out_dir / "lb_connections.csv", virtual=self.vip,
            source=self.lb_table,
        )
        try:
            sockets = SocketSnapshots(self.client, self.vip, self.port,
                                      self.out_dir / "sockets.csv")
        except BaseException:
            # its netlink sockets would keep the lb namespace (and its veths) alive
            self._conntrack.close()
            raise
        self._loop = SnapshotLoop([sockets, self._conntrack], self.interval_s, t0=self.t0)
        self._loop.start()

    def close(self) -> None:
        """Teardown: stop whatever was started, never raise (results: call stop() first)."""
        if self.result is not None:
            return
        if self._loop is not None:
            self._loop.stop(final_tick=False)
        if self.capture.child is not None:
            with contextlib.suppress(Exception):
                self.capture.stop()

    def stop(self) -> EvidenceResult:
        """Stop everything, analyse the pcap, write the files (idempotent)."""
        if self.result is not None:
            return self.result
        if self._loop is None or self.t0 is None:
            raise RuntimeError("evidence was never started")
        self._loop.stop()
        after = kernel_counters.read_counters(self.client)
        stats = self.capture.stop()
        analysis = retransmits.analyse_pcap(
            stats.path, self.vip, self.port, t0=self.t0, capture_end=stats.stopped_at
        )
        files = {
            "pcap": stats.path,
            "retransmits": retransmits.write_retransmits_csv(
                self.out_dir / "retransmits.csv", analysis),
            "segments": retransmits.write_segments_csv(self.out_dir / "segments.csv", analysis),
            "flows": retransmits.write_summary_csv(
                self.out_dir / "flows.csv", analysis.flows.values()),
            "sockets": self.out_dir / "sockets.csv",
            "lb_connections": self.out_dir / "lb_connections.csv",
            "evidence": self.out_dir / "evidence.json",
        }
        self.result = EvidenceResult(
            capture=stats, analysis=analysis, counters=kernel_counters.delta(self._before, after),
            files=files, snapshot_errors=list(self._loop.errors),
            lb_source=self._conntrack.source_used if self._conntrack else "",
        )
        files["evidence"].write_text(json.dumps({
            "t0": self.t0, "capture": stats.as_dict(), "counters_delta": self.result.counters,
            "facts": self.result.facts(), "lb_source": self.result.lb_source,
            "snapshot_errors": self.result.snapshot_errors,
        }, indent=2, default=str))
        return self.result
