"""The host side of the VM tests (issue 5): in `make test`, so CI boots the VM too.

Builds the image if its inputs changed, boots it (TCG here: this host's /dev/kvm is kvm_pvm),
runs tests/vm/test_ipvs.py inside on real IPVS, and compares the IPVS outage with the same
trial on the nft engine, both in the VM (the engines under the same emulated CPU: 5 %) and on
this host (where the emulation's late timers and slow reconnect show: 10 %). Prints the image
build time, the VM's boot and job times, every outage.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from lab.cli import vm as cli
from lab.config import scenario
from lab.experiment.matrix import MatrixRun
from lab.images import vm as image
from lab.vm import runner

from .evidence import kernel_part

pytestmark = pytest.mark.root
ROOT = Path(__file__).resolve().parents[2]
TRIAL = "switchover-retries2-5"


def summary(run_dir: Path) -> dict[str, dict[str, str]]:
    with open(run_dir / "summary.csv") as f:
        return {r["trial"]: r for r in csv.DictReader(f)}


def test_ipvs_in_the_vm_matches_nft_on_the_host(tmp_path: Path) -> None:
    report = cli.build_image()
    assert report.image.complete()
    vm = runner.run_job(report.image, cli.pytest_job(["tests/vm/test_ipvs.py"]),
                        tmp_path / "vm-out", timeout_s=900)
    print(vm.log)
    print(f"VM ({vm.accel}): init after {vm.boot_s} s, boot to end of tests {vm.wall_s:.1f} s")
    assert vm.rc == 0, f"the VM tests failed (exit {vm.rc}); console: {tmp_path}/vm-out"
    in_vm = summary(tmp_path / "vm-out" / "run")
    ipvs, nft_vm = in_vm[TRIAL], in_vm[f"{TRIAL}-nft"]
    assert ipvs["lb"] == "ipvs" and nft_vm["lb"] == "nft"

    # the same trial on this host's nft engine, after the VM (TCG takes both cores)
    trial = next(t for t in scenario.load(ROOT / "scenarios" / "vm-ipvs.toml",
                                          ["lb.engine=nft"]).trials if t.name == TRIAL)
    host_run = tmp_path / "nft"
    (nft,) = MatrixRun(scenario.Scenario("nft", "", [trial], {}), host_run).run()
    a, b = float(ipvs["measured_outage_s"]), float(nft["measured_outage_s"])
    da, db = float(ipvs["detect_s"]), float(nft["detect_s"])
    print(f"tcp_retries2=5 switchover: outage ipvs (VM) {a:.3f} s, nft (host) {b:.3f} s, "
          f"difference {100 * abs(a - b) / b:.1f} %; fault -> ETIMEDOUT {da:.3f} s vs "
          f"{db:.3f} s ({100 * abs(da - db) / db:.1f} %)")
    c = float(nft_vm["measured_outage_s"])
    print(f"in the VM: ipvs {a:.3f} s, nft {c:.3f} s ({100 * abs(a - c) / c:.1f} %)")
    assert nft["lb"] == "nft"
    # the engines' timers, under the same (emulated) CPU. Each connection's RTO comes from its
    # own srtt, which TCG makes differ from trial to trial (run of 2026-12-03: 228 ms on ipvs,
    # 208 ms on nft, so 14.88 s against 13.82 s first lost send -> ETIMEDOUT, 7.7 % apart,
    # while each was within 0.2 s of the model at its own RTO): the engines are compared by
    # what is left after the model at each one's RTO, against 5 % of the kernel's part
    (ta, pa, ra), (tc, pc, rc) = (kernel_part(tmp_path / "vm-out" / "run" / TRIAL),
                                  kernel_part(tmp_path / "vm-out" / "run" / f"{TRIAL}-nft"))
    gap = abs((ta - pa) - (tc - pc))
    print(f"in the VM, first lost send -> ETIMEDOUT: ipvs {ta:.3f} s (model {pa:.3f} s at RTO "
          f"{1000 * ra:.0f} ms), nft {tc:.3f} s (model {pc:.3f} s at {1000 * rc:.0f} ms); "
          f"difference beyond the RTOs' {gap:.3f} s, margin {0.05 * tc - gap:.3f} s")
    assert gap <= 0.05 * tc
    # against the host, TCG itself shows: the guest's timers fire late (fault -> ETIMEDOUT
    # measured 1.4-4.1 % apart) and its reconnect + first transaction take ~0.6 s against
    # ~0.05 s here (outages 2.3-8.8 % apart in six runs): a bound for the emulation, not for
    # the engine, which the comparison inside the VM above checks
    # the whole outage is printed, not bounded: the guest's reconnect + first transaction
    # measured 0.5 to 3.3 s (2026-12-02), the host's 0.05 s
    print(f"margin fault -> ETIMEDOUT host vs VM: {0.10 * db - abs(da - db):.3f} s")
    assert abs(da - db) <= 0.10 * db


def test_image_is_cached_by_its_inputs() -> None:
    """A second build with unchanged inputs is a no-op (the first test built it)."""
    report = image.build()
    assert not report.built and report.seconds < 5
