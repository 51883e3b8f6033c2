"""What this kernel can do for a trial, probed once per process.

netem (sch_netem, what `latency_ms` needs) is probed by adding a netem qdisc to `lo` of a
throwaway namespace, never on a host link. The namespace is a real run's (new_run + Network):
claimed before it exists and recorded before it is created, so a concurrent `lab clean` sees
a live run and leaves it alone, and a kill -9 mid-probe leaves a record clean removes. The
probe always removes it again.
"""

from __future__ import annotations

import functools
import subprocess

from pyroute2.netlink.exceptions import NetlinkError

from lab.errors import LabError
from lab.net import runtime
from lab.net.process import find_binary
from lab.net.topology import Network, Topology

PROBE_HOST = "netem"  # the probe's namespace: bhl-<run_id>-netem


@functools.cache
def netem_available() -> tuple[bool, str]:
    """(usable, detail): can latency_ms be emulated here? Cached: a kernel does not gain or
    lose sch_netem while a process runs, and each probe costs a run slot and a namespace."""
    return probe_netem()


def probe_netem() -> tuple[bool, str]:
    """The uncached probe (needs root; without it, the reason it could not probe)."""
    tc = find_binary("tc")
    if tc is None:
        return False, "could not probe: tc not found (apt-get install iproute2)"
    try:
        run = runtime.new_run()
    except LabError as exc:
        return False, f"could not probe: {exc}"
    try:
        topo = Topology()
        topo.add_host(PROBE_HOST)
        with Network(topo, run) as net:
            proc = net[PROBE_HOST].run(
                [tc, "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"], check=False)
    except (OSError, RuntimeError, NetlinkError, subprocess.SubprocessError) as exc:
        return False, f"could not probe: {exc}"
    finally:
        run.release()
    if proc.returncode == 0:
        return True, "available (latency_ms can be used)"
    return False, (f"not in this kernel ({proc.stderr.strip() or proc.returncode}): "
                   "no client<->lb latency emulation here (use the VM)")
