"""Topology: namespaces, links, routes and sysctls exist while up, and vanish on close."""

from __future__ import annotations

import subprocess
import sys

import pytest

from lab.errors import LabError
from lab.net.runtime import Run
from lab.net.topology import Network, Topology, lvs_topology


def host_sysctls() -> dict[str, str]:
    keys = ["net.ipv4.tcp_retries2", "net.ipv4.ip_forward", "net.ipv4.tcp_keepalive_time"]
    return {k: open(f"/proc/sys/{k.replace('.', '/')}").read().strip() for k in keys}


def test_topology_rejects_bad_descriptions() -> None:
    topo = Topology()
    topo.add_host("a")
    with pytest.raises(ValueError, match="defined twice"):
        topo.add_host("a")
    with pytest.raises(ValueError, match="unknown host"):
        topo.add_link("a", "b")
    with pytest.raises(ValueError, match="too long"):
        topo.add_host("a-very-long-host-name")


@pytest.mark.root
def test_lvs_topology_up_and_down(lab_run: Run) -> None:
    before = host_sysctls()
    with Network(lvs_topology({"net.ipv4.tcp_retries2": 5}), lab_run) as net:
        names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        for host in ("client", "lb", "backend1", "backend2"):
            assert f"{lab_run.prefix}{host}" in names
        assert net["client"].sysctl_get("net.ipv4.tcp_retries2") == "5"
        assert net["lb"].sysctl_get("net.ipv4.ip_forward") == "1"
        assert net["backend1"].sysctl_get("net.ipv4.ip_forward") == "0"
        # addresses come from the run's slot inside the benchmarking range
        assert net["client"].address_towards("lb") in lab_run.subnet
        # backend1 reaches backend2 through the lb (a closed port answers with RST: routed)
        b2 = net["backend2"].address_towards("lb")
        probe = (f"import socket\ntry:\n socket.create_connection(('{b2}', 9), 2)\n"
                 "except ConnectionRefusedError:\n print('refused')")
        assert net["backend1"].run([sys.executable, "-c", probe]).stdout.strip() == "refused"
        assert host_sysctls() == before  # nothing changed in the host namespace
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert lab_run.prefix not in names
    assert host_sysctls() == before


@pytest.mark.root
def test_unknown_sysctl_is_a_clear_error(lab_run: Run) -> None:
    topo = Topology()
    topo.add_host("a", sysctls={"net.ipv4.tcp_retries3": 5})
    with pytest.raises(LabError, match=r"unknown sysctl 'net\.ipv4\.tcp_retries3'"):
        Network(topo, lab_run)
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert lab_run.prefix not in names  # nothing half-built is left behind
