"""Inside the VM (marker vm; `make vm-test` boots it): the switchover on real IPVS.

Runs scenarios/vm-ipvs.toml with the trial runner, as `lab run` would, and leaves the run in
$BHL_VM_OUT/run for the host side (tests/vm/test_vm.py), which compares it with nft.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab import lb, model
from lab.config import scenario
from lab.experiment.matrix import MatrixRun
from lab.model import tolerance

from .evidence import kernel_part

pytestmark = pytest.mark.vm
ROOT = Path(__file__).resolve().parents[2]
OUT = Path(os.environ.get("BHL_VM_OUT", "/tmp/bhl-vm-out"))


@pytest.fixture(scope="module")
def run() -> Iterator[tuple[Path, dict[str, dict]]]:
    assert lb.kernel_has_ipvs(), "this test runs where the kernel has IP_VS (the lab's VM)"
    run_dir = OUT / "run"
    scen = scenario.load(ROOT / "scenarios" / "vm-ipvs.toml")
    # one trial at a time: under TCG the guest's two vCPUs are slow, and three trials side by
    # side (2 MariaDB, a driver and a capture each) stretch its RTTs and timers
    rows = MatrixRun(scen, run_dir, parallel=1).run()
    for r in rows:
        print(f"{r['trial']}: engine {r['lb']}, outage {r['measured_outage_s']} s "
              f"(model {r['predicted_outage_s']} s), {r['verdict']}")
    done = {r["trial"] for r in rows}
    failed = {t.name: (run_dir / t.name / "error.txt").read_text()[-600:]
              for t in scen.trials if t.name not in done}
    assert not failed, failed
    yield run_dir, {r["trial"]: r for r in rows}


def table(trial_dir: Path) -> list[dict[str, str]]:
    with open(trial_dir / "lb_connections.csv") as f:
        return list(csv.DictReader(f))


def fault_and_recovery(trial_dir: Path) -> tuple[float, float]:
    with open(trial_dir / "events.csv") as f:
        ev = {r["event"]: float(r["t_s"]) for r in csv.DictReader(f)
              if r["event"] in ("fault", "recovered")}
    return ev["fault"], ev["recovered"]


def test_retries2_5_blackholes_on_real_ipvs(run: tuple[Path, dict[str, dict]]) -> None:
    run_dir, rows = run
    row = rows["switchover-retries2-5"]
    assert row["lb"] == "ipvs"
    outage = float(row["measured_outage_s"])
    # the outage is printed, not bounded: after ETIMEDOUT the guest's reconnect + first
    # transaction took 0.5 to 3.3 s under TCG (2026-12-02: outage 15.55 s and 16.59 s, both
    # with fault -> ETIMEDOUT within the model's tolerance); the kernel's part is checked below
    print(f"tcp_retries2=5 on ipvs: outage {outage:.2f} s (model {row['predicted_outage_s']} s)")
    # the kernel's part against the model
    measured, predicted, rto = kernel_part(run_dir / row["trial"])
    bound = tolerance(predicted)
    print(f"first lost send -> ETIMEDOUT {measured:.2f} s, model {predicted:.2f} s with the "
          f"backoffs' RTO {1000 * rto:.0f} ms; margin {bound - abs(measured - predicted):.2f} s"
          f" of {bound:.2f} s; fault -> ETIMEDOUT {float(row['detect_s']):.2f} s")
    assert abs(measured - predicted) <= bound, (measured, predicted)
    # ipvsadm -Lcn during the outage: the entry still points at the removed real server
    trial = run_dir / "switchover-retries2-5"
    fault, recovered = fault_and_recovery(trial)
    old = {r["destination"] for r in table(trial) if float(r["t_s"]) < fault}
    during = [r for r in table(trial) if fault + 1 < float(r["t_s"]) < recovered - 1]
    assert old and during
    stuck = [r for r in during if r["destination"] in old and r["state"] == "ESTABLISHED"]
    assert stuck, during
    print(f"ipvsadm -Lcn during the outage: {stuck[-1]}")


def test_expire_nodest_conn_recovers_fast_on_real_ipvs(
    run: tuple[Path, dict[str, dict]]
) -> None:
    """The lb's reset reaches the client at once. The bound is on fault -> error, the lb's
    part: the reconnect and first transaction after it are the guest's MariaDB under TCG,
    measured from 0.6 s to 2.9 s (2026-12-02: detect 0.108 s, outage 2.245 s)."""
    _, rows = run
    row = rows["switchover-expire-nodest-conn"]
    assert row["lb"] == "ipvs"
    detect, outage = float(row["detect_s"]), float(row["measured_outage_s"])
    print(f"expire_nodest_conn=1 on ipvs: error {detect:.3f} s after the switchover, outage "
          f"{outage:.3f} s (margin {1.0 - detect:.3f} s to the 1 s bound)")
    assert detect < 1.0, row


def test_netem_latency_stretches_the_blackhole_as_the_model_says(
    run: tuple[Path, dict[str, dict]]
) -> None:
    """latency_ms=50 (netem, client -> lb): a larger RTO, so the retries2 budget is spent in
    fewer, longer backoffs. The a-priori model takes the RTO as rto_min + the added delay;
    under TCG the emulation adds some 15-30 ms of its own, so the check uses the RTO the
    capture's backoffs show, and the kernel's part (first lost send -> ETIMEDOUT). The flaky
    misses were, first, the whole outage (20.42 s vs 19.20 s, 20.86 s vs 19.20 s): the
    reconnect and first transaction after the error (3.3 s in the second: connect 1.74 s,
    first transaction 1.56 s, against the model's 0.05 s); then an RTO taken as gap/2^k,
    which holds the wheel's lateness that the model adds again (17.53 s vs 18.64 s; with
    model.rto_from_backoffs 17.61 s)."""
    run_dir, rows = run
    row = rows["switchover-retries2-5-latency-50ms"]
    short = float(rows["switchover-retries2-5"]["measured_outage_s"])
    outage = float(row["measured_outage_s"])
    measured, predicted, rto = kernel_part(run_dir / row["trial"])
    short_measured, short_predicted, _ = kernel_part(run_dir / "switchover-retries2-5")
    bound = tolerance(predicted)
    margin = bound - abs(measured - predicted)
    detect = float(row["detect_s"])
    print(f"tcp_retries2=5 with +50 ms: first lost send -> ETIMEDOUT {measured:.2f} s; model "
          f"{predicted:.2f} s with the backoffs' RTO {1000 * rto:.0f} ms (a-priori "
          f"{1000 * model.rto_with_latency(50):.0f} ms); margin {margin:.2f} s of {bound:.2f} s;"
          f" fault -> ETIMEDOUT {detect:.2f} s, outage {outage:.2f} s (reconnect + first "
          f"transaction {outage - detect:.2f} s); without latency: outage {short:.2f} s, "
          f"kernel's part {short_measured:.2f} s (longer by {measured - short_measured:.2f} s,"
          f" model {predicted - short_predicted:.2f} s)")
    # the stretch, on the kernel's part: the outages differ by the TCG reconnect too
    assert measured > short_measured + 2
    assert abs(measured - predicted) <= bound


def test_drain_keeps_the_old_connection_then_resets_it(
    run: tuple[Path, dict[str, dict]]
) -> None:
    """lb.drain_timeout_s=3 on IPVS: the removed server keeps its connection (weight 0) for
    3 s, then the lb resets it (expire_nodest_conn=1 + delete) and the client reconnects."""
    run_dir, rows = run
    row = rows["switchover-drain-3s"]
    assert row["lb"] == "ipvs" and float(row["measured_outage_s"]) < 1.0, row
    with open(run_dir / row["trial"] / "events.csv") as f:
        ev = list(csv.DictReader(f))
    fault = next(float(e["t_s"]) for e in ev if e["event"] == "fault")
    errors = [e for e in ev if e["event"] == "error"]
    assert errors, "the drain's reset never reached the client"
    reset_after = float(errors[0]["t_s"]) - fault
    print(f"drain 3 s on ipvs: first error {reset_after:.2f} s after the switchover: "
          f"{errors[0]['detail']}")
    assert 3.0 <= reset_after <= 4.5 and "104" in errors[0]["detail"]
    assert any(e["event"] == "reconnect" for e in ev)
