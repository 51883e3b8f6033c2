"""`lab doctor`: what this host can run, and what the `auto` engine will pick."""

from __future__ import annotations

import os
from dataclasses import dataclass

from lab import lb
from lab.net.capabilities import netem_available
from lab.net.process import find_binary


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    required: bool = True
    fix: str = ""  # what to do when it is not ok (shown only on failing rows)


def _tool(name: str, hint: str, required: bool = True) -> Check:
    """Found where the lab looks for it (PATH, then the sbin directories)."""
    path = find_binary(name)
    return Check(name, path is not None, path or f"not found: {hint}", required)


def _netem() -> Check:
    """netem needs sch_netem: probed in a throwaway namespace of a claimed run (so a
    concurrent `lab clean` spares it), never on a host link; see lab.net.capabilities."""
    ok, detail = netem_available()
    return Check("netem", ok, detail, required=False)


def run_checks() -> list[Check]:
    checks = [Check("root", os.geteuid() == 0, "needed for namespaces and nftables: use sudo")]
    checks += [
        _tool("ip", "apt-get install iproute2"),
        _tool("nft", "run 'make setup' (installs nftables)"),
        _tool("conntrack", "run 'make setup' (installs conntrack)"),
        _tool("mariadbd", "run 'make setup' (installs mariadb-server)"),
        _tool("mariadb-install-db", "run 'make setup' (installs mariadb-server)"),
        _tool("tcpdump", "run 'make setup' (installs tcpdump)"),
        _tool("sysbench", "run 'make setup' (installs sysbench)", required=False),
        _tool("ipvsadm", "apt-get install ipvsadm (only with an IPVS kernel)", required=False),
    ]
    has_ipvs = lb.kernel_has_ipvs()
    checks.append(Check("IPVS", has_ipvs, "kernel has IP_VS" if has_ipvs else
                        "no IP_VS in this kernel (the nft engine emulates LVS-NAT)",
                        required=False))
    engine, why = lb.choose_engine("auto")
    checks.append(Check("engine auto", True, f"{engine} ({why})"))
    if os.geteuid() == 0:
        checks.append(_netem())
    checks += _docker()
    return checks


def _docker() -> list[Check]:
    """provider = "docker": is an engine usable (a private dockerd is started and stopped
    again to prove it, like the netem probe), and which backend images it has."""
    import docker.errors

    from lab.backends.docker import engine as docker_engine
    from lab.backends.docker.container import OFFICIAL
    from lab.errors import LabError
    from lab.images import docker as docker_image
    usable, detail = docker_engine.status()
    if not usable:
        return [Check("docker", False, detail, required=False)]
    refs = [docker_image.image_ref(), *OFFICIAL.values()]
    try:
        with docker_engine.engine() as eng:
            described = eng.describe()
            present = docker_engine.images_present(eng.client, refs)
    except (LabError, docker.errors.DockerException, OSError) as exc:
        return [Check("docker", False, f"{detail}, but it failed: {exc}", required=False)]
    have = [f"{r} ({s / 1e6:.0f} MB)" for r, s in present.items() if s is not None]
    missing = [r for r, s in present.items() if s is None]
    lab_image = present[refs[0]] is not None
    return [
        Check("docker", True, described, required=False),
        Check("docker images", lab_image or bool(have),
              "present: " + (", ".join(have) or "none")
              + ("; missing: " + ", ".join(missing) if missing else "")
              + ("" if lab_image else "; run 'lab image build' for the offline lab image"),
              required=False),
    ]
