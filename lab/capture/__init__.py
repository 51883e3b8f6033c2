"""Evidence collection for a trial: packets, socket timers, LB connection table, kernel counters.

The article proves its diagnosis with `ipvsadm -Lcn` and `netstat -o` snapshots; this package
collects the same evidence (plus the packets themselves) for every trial:

- `sniffer.PacketCapture`: a pcap of one interface of one namespace (scapy or tcpdump);
- `retransmits.analyse_pcap`: every data segment of the client->VIP flows, its
  retransmissions (TLP / RTO / fast), keepalives, probes and how the flow ended;
- `sockets.SocketSnapshots` and `conntrack.ConntrackSnapshots` driven by
  `snapshots.SnapshotLoop`: the client's sockets (netlink sock_diag, what `ss -tnoi`
  shows) and the lb's conntrack table (ctnetlink) every 0.5 s;
- `kernel_counters`: nstat counters of a namespace, to prove the capture missed nothing.

Submodules are imported explicitly (not re-exported here) so that the scapy child process
(`python -m lab.capture.scapy_sniff`) starts without importing pyroute2 and friends.

Clock: every `t_s` column in this package is wall-clock seconds (`time.time()`, the pcap's
clock) minus a `t0` given by the caller; `to_wall()` converts a `time.monotonic()` instant.
"""

from __future__ import annotations

import time


def to_wall(monotonic_t: float) -> float:
    """The wall-clock time (pcap clock) of a `time.monotonic()` instant taken in this process."""
    return time.time() - (time.monotonic() - monotonic_t)
