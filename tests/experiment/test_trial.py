"""End-to-end trials on real namespaces, nftables and MariaDB (issue 2's bars).

One matrix run of scenarios/ci-short.toml (trials side by side) feeds the assertions below;
the interruption tests run `lab run` as a user would and interrupt it.
"""

from __future__ import annotations

import csv
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lab.config import scenario
from lab.config.settings import TrialSettings
from lab.experiment import faults
from lab.experiment.matrix import MatrixRun
from lab.experiment.trial import run_trial
from tests.leftovers import (
    as_from_a_background_script,
    as_from_a_terminal,
    leftovers,
    snapshot,
)

ROOT = Path(__file__).resolve().parents[2]
def host_sysctls() -> dict[str, str]:
    keys = ("net.ipv4.tcp_retries2", "net.ipv4.ip_forward", "net.ipv4.tcp_keepalive_time",
            "net.ipv4.tcp_syn_retries")
    return {k: Path("/proc/sys", *k.split(".")).read_text().strip() for k in keys}


def timeline(trial_dir: Path) -> list[dict[str, float]]:
    with open(trial_dir / "timeline.csv") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def events(trial_dir: Path) -> list[dict[str, str]]:
    with open(trial_dir / "events.csv") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def ci_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, dict]]]:
    before = host_sysctls()
    existing = snapshot()
    run_dir = tmp_path_factory.mktemp("ci-run")
    scen = scenario.load(ROOT / "scenarios" / "ci-short.toml")
    rows = MatrixRun(scen, run_dir).run()
    left = leftovers(existing)
    yield run_dir, {r["trial"]: r for r in rows}, left
    assert host_sysctls() == before


@pytest.mark.root
def test_matrix_wrote_every_result_file(ci_run: tuple[Path, dict[str, dict], tuple]) -> None:
    run_dir, rows, left = ci_run
    assert set(rows) == {"switchover-retries2-5", "switchover-expire-nodest-conn"}
    assert (run_dir / "run.json").exists() and (run_dir / "summary.csv").exists()
    for name in rows:
        for f in ("timeline.csv", "events.csv", "trial.json", "driver.log"):
            assert (run_dir / name / f).exists(), f"{name}/{f}"
    assert left == ("", ""), "a finished run left namespaces or servers behind"


@pytest.mark.root
def test_each_trial_recovers_once_and_retransmits_csv_holds_retransmissions(
    ci_run: tuple[Path, dict[str, dict], tuple]
) -> None:
    """One `recovered` event per trial, with the outage and the thread's detail; the capture's
    first sends are in segments.csv, retransmits.csv has the retransmissions alone."""
    run_dir, rows, _ = ci_run
    for name, row in rows.items():
        recovered = [e for e in events(run_dir / name) if e["event"] == "recovered"]
        assert len(recovered) == 1, (name, recovered)
        outage, _, thread = recovered[0]["detail"].partition("; ")
        assert outage.startswith("outage ") and thread.startswith("thread 0: txn started")
        assert float(outage.split()[1]) == pytest.approx(float(row["measured_outage_s"]),
                                                         abs=0.006)
        retx = [r["kind"] for r in capture_rows(run_dir / name, "retransmits.csv")]
        kinds = [r["kind"] for r in capture_rows(run_dir / name, "segments.csv")]
        assert set(retx) <= {"tlp", "rto", "fast"}, name
        assert retx == [k for k in kinds if k in ("tlp", "rto", "fast")], name
        assert kinds.count("original") > 1000, name  # a busy OLTP load's first sends
    blackholed = rows["switchover-retries2-5"]
    assert len(capture_rows(run_dir / blackholed["trial"], "retransmits.csv")) >= int(
        blackholed["retrans_count"]) >= 5  # the blackholed episode's TLP and RTOs at least


def capture_rows(trial_dir: Path, name: str) -> list[dict[str, str]]:
    with open(trial_dir / name) as f:
        return list(csv.DictReader(f))


@pytest.mark.root
def test_retries2_5_blackhole(ci_run: tuple[Path, dict[str, dict], tuple]) -> None:
    run_dir, rows, _ = ci_run
    row = rows["switchover-retries2-5"]
    outage = float(row["measured_outage_s"])
    print(f"tcp_retries2=5 switchover: measured outage {outage:.2f} s, "
          f"model {row['predicted_outage_s']} s ({row['predicted_mechanism']})")
    assert 12.0 <= outage <= 16.0
    assert row["verdict"].startswith("ok"), row["verdict"]
    assert int(row["reconnects"]) >= 1
    assert "110" in next(e["detail"] for e in events(run_dir / row["trial"])
                         if e["event"] == "first_error")  # ETIMEDOUT: the kernel gave up
    # the timeline shows the blackhole: qps > 0 before, 0 during, > 0 after
    tl = timeline(run_dir / row["trial"])
    fault_t = next(float(e["t_s"]) for e in events(run_dir / row["trial"])
                   if e["event"] == "fault")
    before = [s["qps"] for s in tl if s["t_s"] <= fault_t]
    during = [s["qps"] for s in tl if fault_t + 1.0 < s["t_s"] <= fault_t + outage - 0.5]
    after = [s["qps"] for s in tl if s["t_s"] > fault_t + outage + 1.0]
    assert before and min(before[1:] or before) > 0
    assert during and max(during) == 0
    assert after and min(after) > 0


@pytest.mark.root
def test_expire_nodest_conn_recovers_fast(
    ci_run: tuple[Path, dict[str, dict], tuple]
) -> None:
    run_dir, rows, _ = ci_run
    row = rows["switchover-expire-nodest-conn"]
    outage = float(row["measured_outage_s"])
    print(f"expire_nodest_conn=1 switchover: measured outage {outage:.3f} s")
    assert outage < 2.0
    assert "104" in next(e["detail"] for e in events(run_dir / row["trial"])
                         if e["event"] == "first_error")  # ECONNRESET from the lb


@pytest.mark.root
@pytest.mark.parametrize(("signum", "started"), [
    (signal.SIGINT, as_from_a_terminal), (signal.SIGTERM, as_from_a_terminal),
    (signal.SIGINT, as_from_a_background_script),
], ids=["SIGINT", "SIGTERM", "SIGINT-background"])
def test_interrupt_mid_trial_tears_everything_down(
    tmp_path: Path, signum: int, started: Callable[[], None]
) -> None:
    before = host_sysctls()
    existing = snapshot()
    proc = subprocess.Popen(
        [sys.executable, "-m", "lab.cli", "run", str(ROOT / "scenarios" / "ci-short.toml"),
         "--set", "client.tcp_retries2=15", "--out", str(tmp_path), "--plain"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=started)
    time.sleep(12)  # well into the outage (fault at 5 s after load start)
    assert proc.poll() is None, proc.communicate()
    assert leftovers(existing, proc.pid)[0], "expected the running trial's namespaces"
    proc.send_signal(signum)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err, err
    assert leftovers(existing) == ("", ""), f"{signum!r} left namespaces or servers behind"
    assert host_sysctls() == before


@pytest.mark.root
def test_failed_trial_tears_everything_down(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object) -> None:
        raise RuntimeError("fault injection failed (test)")

    existing = snapshot()
    monkeypatch.setattr(faults, "inject", broken)
    settings = TrialSettings.model_validate({"fault": {"at_s": 2}, "client": {"tcp_retries2": 5}})
    with pytest.raises(RuntimeError, match="fault injection failed"):
        run_trial(settings, tmp_path / "t")
    assert leftovers(existing) == ("", "")
