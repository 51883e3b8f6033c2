"""TCP counters of one namespace (nstat), to check the capture against the kernel.

A pcap can silently miss packets; the kernel's own MIB counters cannot. Between two readings
in the client namespace, TcpRetransSegs counts every retransmitted segment -- RTO, fast and
tail-loss-probe ones alike (all go through __tcp_retransmit_skb) -- and TcpExtTCPLossProbes
the TLPs, so "retransmissions in the pcap == TcpRetransSegs delta" proves nothing was missed
(measured here: TLP + 5 RTOs -> TcpRetransSegs +6, TCPLossProbes +1, TCPTimeouts +6,
TCPAbortOnTimeout +1). Caveat: TSO/GSO super-segments count once in the pcap but per MSS in
the kernel.

`nstat -asz --json` is used: -a absolute values (ignore nstat's history file), -s do not
update that history file (it lives in /tmp and is shared by every namespace), -z include
zeros. If nstat is missing, /proc/thread-self/net/{snmp,netstat} are read from a thread that
entered the namespace (/proc/self/net would show the *process's* namespace, not the thread's).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path

from lab.net.topology import Host, in_netns

TCP_COUNTERS = (
    "TcpRetransSegs",
    "TcpExtTCPLossProbes",
    "TcpExtTCPTimeouts",
    "TcpExtTCPAbortOnTimeout",
)


def parse_nstat_json(text: str) -> dict[str, int]:
    """`nstat --json` output -> {name: value}."""
    data = json.loads(text)
    return {k: int(v) for k, v in data.get("kernel", data).items()}


def parse_proc_net(text: str) -> dict[str, int]:
    """/proc/net/snmp or /proc/net/netstat (header line + value line per group), nstat names.

    nstat names are the group prefix without ':' plus the field: "Tcp: RetransSegs" ->
    TcpRetransSegs, "TcpExt: TCPLossProbes" -> TcpExtTCPLossProbes.
    """
    out: dict[str, int] = {}
    lines = text.splitlines()
    for header, values in zip(lines[::2], lines[1::2], strict=False):
        names, vals = header.split(), values.split()
        if not names or names[0] != vals[0]:
            continue
        prefix = names[0].rstrip(":")
        for name, val in zip(names[1:], vals[1:], strict=False):
            out[prefix + name] = int(val)
    return out


def _read_proc() -> dict[str, int]:
    base = Path("/proc/thread-self/net")
    return {
        **parse_proc_net((base / "snmp").read_text()),
        **parse_proc_net((base / "netstat").read_text()),
    }


def read_counters(
    host: Host, names: Iterable[str] | None = TCP_COUNTERS, *, source: str = "auto"
) -> dict[str, int]:
    """Absolute counters of host's namespace (all of them if names is None).

    source: "nstat", "proc", or "auto" (nstat if installed, else proc).
    """
    if source not in ("auto", "nstat", "proc"):
        raise ValueError(f"unknown counter source {source!r}")
    if source == "nstat" or (source == "auto" and shutil.which("nstat")):
        allc = parse_nstat_json(host.run(["nstat", "-asz", "--json"], timeout=10).stdout)
    else:
        allc = in_netns(host.ns, _read_proc)
    if names is None:
        return allc
    return {n: allc.get(n, 0) for n in names}


def delta(before: Mapping[str, int], after: Mapping[str, int]) -> dict[str, int]:
    """after - before for every counter in `after` (missing in before = 0)."""
    return {k: v - before.get(k, 0) for k, v in after.items()}
