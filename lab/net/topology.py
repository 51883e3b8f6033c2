"""Topology: hosts (network namespaces), point-to-point veth links, addresses, routes, sysctls.

A `Topology` is a pure description (like Mininet's Topo); `Network(topo, run)` realises it and
`Network.close()` removes all of it. Names follow one scheme so a leftover is recognisable:
namespace `bhl-<run_id>-<host>`, and inside each namespace the interface towards host X is
`to-<X>`. Both veth ends are created directly inside lab namespaces (never in the host
namespace), so two runs never clash on interface names and the host's links are never touched.
Addresses come from the run's slot (see lab.net.runtime): link i gets 198.18.x.i/24, the first
host named on the link gets .1, the second .2.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pyroute2 import IPRoute, netns

from lab.errors import LabError
from lab.net.netfilter import NftContext
from lab.net.process import ChildProcess
from lab.net.runtime import Run

T = TypeVar("T")

IFNAME_MAX = 15
CUT_LINK_TABLE = "bhl_cut_link"  # the nft tables of Host.cut_link and Host.cut_forwarding
CUT_FORWARD_TABLE = "bhl_cut_forward"


@dataclass
class HostSpec:
    name: str
    sysctls: dict[str, str] = field(default_factory=dict)
    forwarding: bool = False
    gateway: str | None = None  # host whose address on the shared link is our default route


@dataclass(frozen=True)
class LinkSpec:
    a: str
    b: str


class Topology:
    """Declarative description: add hosts and links, then realise with `Network`."""

    def __init__(self) -> None:
        self.hosts: dict[str, HostSpec] = {}
        self.links: list[LinkSpec] = []

    def add_host(
        self,
        name: str,
        *,
        sysctls: dict[str, Any] | None = None,
        forwarding: bool = False,
        gateway: str | None = None,
    ) -> HostSpec:
        if name in self.hosts:
            raise ValueError(f"host {name!r} defined twice")
        if len(f"to-{name}") > IFNAME_MAX:
            raise ValueError(f"host name {name!r} too long for an interface name")
        spec = HostSpec(
            name,
            {k: str(v) for k, v in (sysctls or {}).items()},
            forwarding,
            gateway,
        )
        self.hosts[name] = spec
        return spec

    def add_link(self, a: str, b: str) -> LinkSpec:
        for h in (a, b):
            if h not in self.hosts:
                raise ValueError(f"link {a}<->{b}: unknown host {h!r}")
        link = LinkSpec(a, b)
        self.links.append(link)
        return link


def in_netns(ns: str, fn: Callable[[], T]) -> T:
    """Run fn in a short-lived thread that has entered netns `ns`.

    setns(2) changes only the calling thread, and /proc/sys/net resolves against the calling
    thread's namespace, so this is how a sysctl of one namespace is read or written without
    touching the host's.
    """
    result: list[T] = []
    error: list[BaseException] = []

    def target() -> None:
        try:
            netns.setns(ns, flags=0)
            result.append(fn())
        except BaseException as exc:  # re-raised in the caller
            error.append(exc)

    t = threading.Thread(target=target, name=f"netns-{ns}")
    t.start()
    t.join()
    if error:
        raise error[0]
    return result[0]


def _sysctl_path(name: str) -> Path:
    return Path("/proc/sys") / name.replace(".", "/")


class Host:
    """A realised namespace: run commands in it, read and write its sysctls."""

    def __init__(self, name: str, ns: str, workdir: Path, run_id: str = "") -> None:
        self.name = name
        self.ns = ns
        self.workdir = workdir
        self.run_id = run_id  # the run that owns it (labels of what is made for it)
        self.addresses: dict[str, ipaddress.IPv4Interface] = {}  # peer host -> our address
        self._nft: NftContext | None = None
        self._nft_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Host({self.name!r}, ns={self.ns!r})"

    def address_towards(self, peer: str) -> ipaddress.IPv4Address:
        return self.addresses[peer].ip

    # Processes are started with `ip netns exec`: it also gives the process the namespace's
    # /etc/netns and /sys view, exactly what a user reproducing by hand would type.
    def command(self, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.ns, *argv]

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start a process in this namespace, in its own session (Ctrl-C reaches only us)."""
        kwargs.setdefault("start_new_session", True)
        return subprocess.Popen(self.command(argv), **kwargs)

    def start(self, argv: Sequence[str], log_path: Path, **kwargs: Any) -> ChildProcess:
        """A long-running program in this namespace, with the lab's log and stop sequence."""
        return ChildProcess(self.command(argv), log_path, **kwargs)

    def run(
        self, argv: Sequence[str], *, input: str | None = None, check: bool = True,
        timeout: float = 30,
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            self.command(argv), input=input, capture_output=True, text=True, timeout=timeout
        )
        if check and proc.returncode != 0:
            raise RuntimeError(
                f"[{self.name}] {' '.join(argv)} failed ({proc.returncode}): "
                f"{proc.stderr.strip() or proc.stdout.strip()}"
            )
        return proc

    def nft(self, script: str) -> str:
        """Apply an nft script in this namespace as one transaction, in-process (no `nft`
        process: lab.net.netfilter says why); the context is opened on first use."""
        return self.nft_context().apply(script, self.name)

    def nft_context(self) -> NftContext:
        """The namespace's libnftables context, opened now if it is not yet: a fault opens
        it ahead (experiment.faults.prepare), so that opening is not part of the fault."""
        with self._nft_lock:
            if self._nft is None:
                self._nft = NftContext(self.ns, in_netns)
            return self._nft

    def close(self) -> None:
        """Drop what this object holds open in the namespace (before it is removed)."""
        with self._nft_lock:
            if self._nft is not None:
                self._nft.close()
                self._nft = None

    def sysctl_get(self, name: str) -> str:
        return in_netns(self.ns, lambda: _sysctl_path(name).read_text().strip())

    def sysctl_set(self, name: str, value: object) -> None:
        path = _sysctl_path(name)

        def write() -> None:
            if not path.exists():
                raise LabError(
                    f"unknown sysctl {name!r} (no {path} in the lab namespace)",
                    "check the name, e.g. net.ipv4.tcp_retries2",
                )
            path.write_text(f"{value}\n")

        try:
            in_netns(self.ns, write)
        except OSError as exc:
            raise LabError(
                f"sysctl {name}={value} rejected by the kernel ({exc.strerror})",
                "use a value in the kernel's range for this sysctl",
            ) from exc

    def pids(self) -> list[int]:
        return _ns_pids(self.ns)

    # --- link faults: the nft text lives here once ----------------------------------------
    def cut_link(self, peer: str) -> str:
        """This host vanishes from its link to `peer` without a word: every packet in or out
        of the device is dropped at netdev ingress/egress, so its kernel never sends a RST."""
        ifname = f"to-{peer}"
        self.nft(
            f"table netdev {CUT_LINK_TABLE} {{\n"
            f'  chain i {{ type filter hook ingress device "{ifname}" priority -500; '
            "policy drop; }\n"
            f'  chain e {{ type filter hook egress device "{ifname}" priority -500; '
            "policy drop; }\n}\n")
        return f"all packets on {self.name}:{ifname} dropped (no RST)"

    def mend_link(self) -> None:
        """Undo cut_link (a site that comes back)."""
        self.nft(f"delete table netdev {CUT_LINK_TABLE}")

    def cut_forwarding(self, address: ipaddress.IPv4Address | str, mode: str = "drop") -> str:
        """This host stops passing traffic to and from `address`, forwarded (LVS-NAT) or its
        own (a proxy's server-side connections): `drop` is a silent partition, `reject`
        answers the sender's packets with a TCP reset."""
        verdict = "drop" if mode == "drop" else "meta l4proto tcp reject with tcp reset"
        chains = "".join(
            f"  chain {hook} {{\n    type filter hook {hook} priority -10; policy accept;\n"
            f"{rules}  }}\n"
            for hook, rules in (
                ("forward", f"    ip daddr {address} {verdict}\n    ip saddr {address} drop\n"),
                ("output", f"    ip daddr {address} {verdict}\n"),
                # (iif lo: the reset an output reject sends the host's own socket)
                ("input", f'    iif "lo" accept\n    ip saddr {address} drop\n')))
        self.nft(f"table ip {CUT_FORWARD_TABLE} {{\n{chains}}}\n")
        return f"{self.name} passes nothing to or from {address}: {mode}"


def _ns_pids(ns: str) -> list[int]:
    """Processes whose network namespace is `ns` (by inode, like `ip netns pids`)."""
    try:
        target = os.stat(f"/run/netns/{ns}").st_ino
    except FileNotFoundError:
        return []
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry}/ns/net").st_ino == target:
                pids.append(int(entry))
        except (FileNotFoundError, PermissionError, ProcessLookupError):
            continue
    return pids


def kill_namespace_processes(ns: str, grace_s: float = 2.0) -> None:
    """SIGTERM every process in ns, then SIGKILL what is left after grace_s."""
    pids = _ns_pids(ns)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            pids = _ns_pids(ns)
            if not pids:
                return
            time.sleep(0.05)
    pids = _ns_pids(ns)
    if pids:
        raise RuntimeError(f"processes {pids} in {ns} survived SIGKILL")


def remove_namespace(ns: str) -> None:
    kill_namespace_processes(ns)
    with contextlib.suppress(FileNotFoundError):
        netns.remove(ns)


def adopt_namespace(host: Host, pid: int) -> None:
    """Make `host` the network namespace of process `pid` (a container's server), in place.

    A container started without networking has only `lo`. Its namespace takes over the
    host's role: every link of the host's namespace moves into it (by pid), gets its
    addresses and routes back, and the name `host.ns` is re-pointed at it (a bind mount of
    /proc/PID/ns/net, as `ip netns attach` does). So everything that works by name (`ip
    netns exec`, nft rules of faults, captures, `Network.close`) works unchanged, and the
    bind mount keeps the namespace, its links and its kernel (RSTs after a kill -9) alive
    after the container's processes are gone, exactly like a process backend's namespace.
    The namespace's own sysctls are not carried over (backend hosts set none).
    """
    host.close()  # its nft context belongs to the namespace being replaced
    if host.pids():
        raise RuntimeError(f"{host.ns}: processes {host.pids()} still run in the namespace "
                           "a container is to replace")
    with IPRoute(netns=host.ns) as ipr:
        names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
        links = [n for n in names.values() if n != "lo"]
        addrs = [(names[a["index"]], a.get_attr("IFA_ADDRESS"), a["prefixlen"])
                 for a in ipr.get_addr(family=socket.AF_INET) if names[a["index"]] != "lo"]
        routes = [(r.get_attr("RTA_DST") or "0.0.0.0", r["dst_len"], r.get_attr("RTA_GATEWAY"))
                  for r in ipr.get_routes(family=socket.AF_INET, table=254)
                  if r.get_attr("RTA_GATEWAY")]
        for ifname in links:
            ipr.link("set", index=ipr.link_lookup(ifname=ifname)[0], net_ns_pid=pid)
    netns.remove(host.ns)  # the old namespace is now empty and goes away
    netns.attach(host.ns, pid)
    with IPRoute(netns=host.ns) as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
        for ifname, address, prefixlen in addrs:
            ipr.addr("add", index=ipr.link_lookup(ifname=ifname)[0], address=address,
                     prefixlen=prefixlen)
        for ifname in links:
            ipr.link("set", index=ipr.link_lookup(ifname=ifname)[0], state="up")
        for dst, dst_len, gateway in routes:
            ipr.route("add", dst=f"{dst}/{dst_len}", gateway=gateway)


class Network:
    """A realised Topology. Use as a context manager; close() removes everything it made."""

    def __init__(self, topo: Topology, run: Run) -> None:
        self.topo = topo
        self.run = run
        self.hosts: dict[str, Host] = {}
        self._closed = False
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    def __getitem__(self, name: str) -> Host:
        return self.hosts[name]

    def __enter__(self) -> Network:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _build(self) -> None:
        for spec in self.topo.hosts.values():
            ns = f"{self.run.prefix}{spec.name}"
            # record before creating, so a kill -9 in between still leaves a trace for clean
            self.run.namespaces.append(ns)
            self.run.record()
            netns.create(ns)
            workdir = self.run.workdir / spec.name
            workdir.mkdir(exist_ok=True)
            self.hosts[spec.name] = Host(spec.name, ns, workdir, self.run.run_id)
            with IPRoute(netns=ns) as ipr:
                ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")

        for index, link in enumerate(self.topo.links):
            subnet = self.run.link_subnet(index)
            a, b = self.hosts[link.a], self.hosts[link.b]
            addr_a = ipaddress.IPv4Interface(f"{subnet[1]}/24")
            addr_b = ipaddress.IPv4Interface(f"{subnet[2]}/24")
            with IPRoute(netns=a.ns) as ipr:
                ipr.link(
                    "add", ifname=f"to-{b.name}", kind="veth",
                    peer={"ifname": f"to-{a.name}", "net_ns_fd": b.ns},
                )
            for host, peer, addr in ((a, b, addr_a), (b, a, addr_b)):
                with IPRoute(netns=host.ns) as ipr:
                    idx = ipr.link_lookup(ifname=f"to-{peer.name}")[0]
                    ipr.addr("add", index=idx, address=str(addr.ip), prefixlen=24)
                    ipr.link("set", index=idx, state="up")
                host.addresses[peer.name] = addr

        for spec in self.topo.hosts.values():
            host = self.hosts[spec.name]
            if spec.gateway:
                gw = self.hosts[spec.gateway].address_towards(spec.name)
                with IPRoute(netns=host.ns) as ipr:
                    ipr.route("add", dst="0.0.0.0/0", gateway=str(gw))
            if spec.forwarding:
                host.sysctl_set("net.ipv4.ip_forward", 1)
            for key, value in spec.sysctls.items():
                host.sysctl_set(key, value)

    def add_address(self, host: str, address: str, ifname: str) -> None:
        """Add an extra address (a VIP) to one of host's interfaces."""
        h = self.hosts[host]
        with IPRoute(netns=h.ns) as ipr:
            idx = ipr.link_lookup(ifname=ifname)[0]
            ipr.addr("add", index=idx, address=address, prefixlen=32)

    def add_delay(self, host: str, ifname: str, delay_ms: float) -> None:
        """Delay every packet host sends on ifname by delay_ms (netem): the RTT grows by that
        much. Needs sch_netem (the lab's VM has it; `lab doctor` says whether this host does).
        tc is iproute2's own tool for qdiscs; pyroute2's netem support would be no simpler."""
        proc = self.hosts[host].run(["tc", "qdisc", "add", "dev", ifname, "root", "netem",
                                     "delay", f"{delay_ms:g}ms"], check=False)
        if proc.returncode != 0:
            raise LabError(
                f"latency_ms needs netem, and this kernel has none ({proc.stderr.strip()})",
                "drop latency_ms, or run the trial in the lab's VM ('lab vm run ...')")

    def close(self) -> None:
        """Kill what runs in the namespaces and delete them (links go with them)."""
        if self._closed:
            return
        self._closed = True
        errors = []
        for host in self.hosts.values():
            host.close()
        for ns in reversed(self.run.namespaces):
            try:
                remove_namespace(ns)
            except Exception as exc:  # keep removing the others
                errors.append(f"{ns}: {exc}")
        self.run.namespaces.clear()
        self.run.record()
        if errors:
            raise RuntimeError("teardown incomplete: " + "; ".join(errors))


def lvs_topology(client_sysctls: dict[str, int] | None = None) -> Topology:
    """The article's LVS-NAT lab: client -- lb -- backend1 / backend2.

    Real servers route back through the lb (NAT mode needs the replies to pass the director);
    forwarding is on in the lb namespace only.
    """
    topo = Topology()
    topo.add_host("client", sysctls=dict(client_sysctls or {}), gateway="lb")
    topo.add_host("lb", forwarding=True)
    topo.add_host("backend1", gateway="lb")
    topo.add_host("backend2", gateway="lb")
    topo.add_link("client", "lb")
    topo.add_link("lb", "backend1")
    topo.add_link("lb", "backend2")
    return topo


def lvs_vip(run: Run) -> ipaddress.IPv4Address:
    """The virtual IP: .100 of the client-side link, added to the lb's interface."""
    return run.link_subnet(0)[100]
