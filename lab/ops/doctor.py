"""`lab doctor`: what this host can run, and what the `auto` engine will pick.

One Check per thing a feature needs: the tools and servers (each row says which feature uses
it), IPVS and netem, the VM (qemu, and KVM or TCG as the VM runner would choose, with the same
logic), the image builders (debootstrap), gcc for the sysbench reconnect fix, each client
stack of the zoo (load.driver "zoo"), and docker. A
row's fix says what to do and is shown only when the row fails. `required` rows are what every
trial needs; the others decide which features work.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass

from lab import lb
from lab.images import vm as vm_image
from lab.net.capabilities import netem_available
from lab.net.process import find_binary

DOCKER_EXTRA = "pip install 'blackhole-lab[docker]'"


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    required: bool = True
    fix: str = ""  # what to do when it is not ok (shown only on failing rows)


def _tool(name: str, package: str, used_for: str = "", required: bool = True,
          fix: str = "") -> Check:
    """Found where the lab looks for it (PATH, then the sbin directories)."""
    path = find_binary(name)
    detail = path or "not found"
    return Check(name, path is not None, detail + (f" (for {used_for})" if used_for else ""),
                 required, "" if path else fix or f"run 'make setup' (installs {package})")


def _netem() -> Check:
    """netem needs sch_netem: probed in a throwaway namespace of a claimed run (so a
    concurrent `lab clean` spares it), never on a host link; see lab.net.capabilities."""
    ok, detail = netem_available()
    return Check("netem", ok, detail, required=False,
                 fix="" if ok else "drop latency_ms, or run the lab in the VM ('make vm-test')")


def _kvm() -> Check:
    """What `lab vm` boots with: KVM, or TCG (software emulation, several times slower, and
    its timers fire late: the VM tests bound that), decided as the VM runner decides."""
    argv, why = vm_image.accelerator()
    kvm = argv[1] == "kvm"
    return Check("KVM", kvm, f"lab vm boots with {why}", required=False,
                 fix="" if kvm else "lab vm works under TCG, only slower; for KVM use a host "
                 "with VT-x/AMD-V and kvm_intel/kvm_amd loaded")


def _vm_image() -> Check:
    """The VM image of these inputs, built (`lab vm build`) or not yet."""
    try:
        image = vm_image.current()
    except OSError as exc:  # no pyproject.toml: not a checkout
        return Check("vm image", False, f"cannot tell: {exc}", required=False,
                     fix="run the lab from its checkout")
    done = image.complete()
    return Check("vm image", done, f"{image.dir}" + ("" if done else " not built yet"),
                 required=False, fix="" if done else "'lab vm build' (a few minutes, once)")


def _gcc() -> Check:
    """load.sysbench_reconnect_fix is compiled on first use: gcc and libc's headers."""
    fix = "run 'make setup' (installs gcc and libc6-dev), or leave the fix off"
    found = _tool("gcc", "gcc", "load.sysbench_reconnect_fix", required=False, fix=fix)
    if not found.ok:
        return found
    gcc = find_binary("gcc") or "gcc"
    # as lab.load.sysbench builds the fix: a shared library using dlsym
    proc = subprocess.run([gcc, "-x", "c", "-shared", "-fPIC", "-o", "/dev/null", "-", "-ldl"],
                          input="#include <dlfcn.h>\nint f(void) { return 0; }\n",
                          capture_output=True, text=True)
    if proc.returncode != 0:
        said = (proc.stderr.strip().splitlines() or ["?"])[0]
        return Check("gcc", False, f"{gcc} cannot build a shared library: {said}",
                     required=False, fix=fix)
    return Check("gcc", True, f"{gcc}, builds shared libraries (for "
                 "load.sysbench_reconnect_fix)", required=False)


def _tools() -> list[Check]:
    return [
        _tool("ip", "iproute2"),
        _tool("nft", "nftables", "the nft engine and link faults"),
        _tool("conntrack", "conntrack", "reading the nft engine's table by hand and the "
              "tests' cross-check; the lab reads it through netlink", required=False),
        _tool("mariadbd", "mariadb-server", "backend = \"mariadb\""),
        _tool("mariadb-install-db", "mariadb-server", "backend = \"mariadb\""),
        _tool("tcpdump", "tcpdump", "capture"),
        _tool("nginx", "nginx-light", "backend = \"nginx\"", required=False),
        _tool("haproxy", "haproxy", "lb.engine = \"proxy\"", required=False),
        _tool("sysbench", "sysbench", "load.driver = \"sysbench\"", required=False),
        _gcc(),
        _tool("ipvsadm", "ipvsadm", "the ipvs engine's evidence, only with an IPVS kernel",
              required=False, fix="apt-get install ipvsadm (on a kernel with IP_VS; the VM "
              "has it)"),
    ]


def _vm_and_images() -> list[Check]:
    return [
        _tool("qemu-system-x86_64", "qemu-system-x86", "lab vm", required=False),
        _kvm(),
        _vm_image(),
        _tool("debootstrap", "debootstrap", "lab image build, lab vm build", required=False),
    ]


def run_checks() -> list[Check]:
    root = os.geteuid() == 0
    checks = [Check("root", root, f"euid {os.geteuid()} (namespaces and nftables need root)",
                    fix="" if root else "run it with sudo")]
    checks += _tools()
    has_ipvs = lb.kernel_has_ipvs()
    checks.append(Check("IPVS", has_ipvs, "kernel has IP_VS" if has_ipvs else
                        "no IP_VS in this kernel (the nft engine emulates LVS-NAT)",
                        required=False,
                        fix="" if has_ipvs else "for real IPVS run the lab in the VM "
                        "('make vm-test', 'lab vm run')"))
    engine, why = lb.choose_engine("auto")
    checks.append(Check("engine auto", True, f"{engine} ({why})"))
    if root:
        checks.append(_netem())
    checks += _vm_and_images()
    checks += _zoo()
    checks += _docker()
    return checks


def _zoo() -> list[Check]:
    """One row per client stack of load.driver "zoo": its library's version, or what to
    install (nothing is built here: a stack is built on its first trial)."""
    from lab.config.stacks import STACKS
    from lab.load.zoo import runners
    rows = []
    for name, runner in runners().items():
        facts = STACKS[name]
        missing = runner.missing()
        what = f"{facts.language}, {facts.library}"
        if missing:
            rows.append(Check(f"zoo {name}", False, f"{what}: {missing[0]}", required=False,
                              fix=missing[1]))
        else:
            rows.append(Check(f"zoo {name}", True, f"{what}: {runner.version() or '?'} "
                              "(for load.stack)", required=False))
    return rows


def _docker() -> list[Check]:
    """provider = "docker": is the SDK there (an optional extra), is an engine usable (a
    private dockerd is started and stopped again to prove it, like the netem probe), and
    which backend images it has."""
    try:
        import docker.errors

        from lab.backends.docker import engine as docker_engine
        from lab.backends.docker.container import OFFICIAL
    except ImportError:
        return [Check("docker", False, "the docker Python module is not installed (for "
                      "provider = \"docker\")", required=False, fix=DOCKER_EXTRA)]
    from lab.errors import LabError
    from lab.images import docker as docker_image
    usable, detail = docker_engine.status()
    if not usable:
        return [Check("docker", False, detail, required=False,
                      fix="install docker.io ('make setup'), or use provider = \"process\"")]
    refs = [docker_image.image_ref(), *OFFICIAL.values()]
    try:
        with docker_engine.engine() as eng:
            described = eng.describe()
            present = docker_engine.images_present(eng.client, refs)
    except (LabError, docker.errors.DockerException, OSError) as exc:
        return [Check("docker", False, f"{detail}, but it failed: {exc}", required=False,
                      fix="see the engine's log; 'lab clean' removes a stale private dockerd")]
    have = [f"{r} ({s / 1e6:.0f} MB)" for r, s in present.items() if s is not None]
    missing = [r for r, s in present.items() if s is None]
    lab_image = present[refs[0]] is not None
    return [
        Check("docker", True, described, required=False),
        Check("docker images", lab_image or bool(have),
              "present: " + (", ".join(have) or "none")
              + ("; missing: " + ", ".join(missing) if missing else ""), required=False,
              fix="" if lab_image else "'lab image build' (the offline lab image)"),
    ]
