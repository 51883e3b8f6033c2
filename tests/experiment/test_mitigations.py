"""Every fault kind and every mitigation, measured against the model (issue 3, bar 1).

One matrix run of scenarios/mitigations-short.toml (real namespaces, nftables, MariaDB, the
oltp driver; trials side by side) feeds one parametrized check per trial: the trial's
measured outage is within 5 % or 0.5 s (whichever is larger) of model.predict(), and the
mechanism that ended it is the one the model named. "Never recovers" predictions are checked by
the trial's deadline. `pytest -s` prints the measured-vs-predicted table.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.config import scenario
from lab.experiment.matrix import MatrixRun
from lab.model import tolerance

ROOT = Path(__file__).resolve().parents[2]
SCENARIO = scenario.load(ROOT / "scenarios" / "mitigations-short.toml")
# side by side, but not all at once: 2 vCPUs run every busy driver and MariaDB server, and
# CPU starvation stretches what the model assumes (measured: 8 at once costs ~0.3 s on the
# RTO; at 6, crash-user-timeout-syn-retries took 9.30 s against the model's 8.59 s, each
# failed connect 3.21 s and the first good one 0.5 s, where alone it takes 8.74-8.79 s in
# three runs, 3.11 s a connect: 2026-12-03)
PARALLEL = 4

# the first error the driver sees, by the mechanism that ends the outage. The errno shows as
# "[Errno 110]" on a read (2013 lost) or as "TimeoutError(110, ...)" on a write (2006 gone).
FIRST_ERROR = {
    "retries2": "110",  # ETIMEDOUT: tcp_retries2 ran out
    "user_timeout": "110",  # ETIMEDOUT: TCP_USER_TIMEOUT
    "keepalive": "110",  # ETIMEDOUT: keepalive probes unanswered (seen at the next write)
    "read_timeout": "timed out",  # PyMySQL's socket timeout
    "lb_reset": "104",  # ECONNRESET from the lb (expire_nodest_conn=1)
    "drain_reset": "104",
    "reset": "",  # kill / reject: a reset, or EOF from the dying server
}


@pytest.fixture(scope="module")
def matrix(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, dict]]]:
    run_dir = tmp_path_factory.mktemp("mitigations")
    rows = MatrixRun(SCENARIO, run_dir, parallel=PARALLEL).run()
    print(f"\n{'trial':38s} {'predicted':>10s} {'measured':>10s}  mechanism     verdict")
    for r in rows:
        print(f"{r['trial']:38s} {r['predicted_outage_s']!s:>10s} "
              f"{r['measured_outage_s']!s:>10s}  {r['predicted_mechanism']:13s} {r['verdict']}")
    yield run_dir, {r["trial"]: r for r in rows}


def first_error(trial_dir: Path) -> str | None:
    with open(trial_dir / "events.csv") as f:
        return next((r["detail"] for r in csv.DictReader(f) if r["event"] == "first_error"),
                    None)


def test_matrix_covers_every_fault_kind_and_mitigation() -> None:
    trials = SCENARIO.trials
    assert {t.fault.kind for t in trials} == {"switchover", "crash", "kill", "hang", "partition"}
    assert {t.fault.partition_mode for t in trials if t.fault.kind == "partition"} == {
        "drop", "reject"}
    flat = [t.flat() for t in trials]
    for key in ("client.tcp_retries2", "client.tcp_user_timeout_ms", "client.read_timeout_s",
                "client.so_keepalive", "client.tcp_keepidle", "client.tcp_keepalive_time",
                "client.tcp_syn_retries", "lb.drain_timeout_s"):
        assert any(f[key] is not None for f in flat), key
    assert any(f["lb.expire_nodest_conn"] == 1 for f in flat)
    assert any(f["client.connect_timeout_s"] != 10.0 for f in flat)
    assert {f["load.shape"] for f in flat} == {"busy", "idle"}


@pytest.mark.root
@pytest.mark.parametrize("name", [t.name for t in SCENARIO.trials])
def test_measured_outage_matches_the_model(
    matrix: tuple[Path, dict[str, dict]], name: str
) -> None:
    run_dir, rows = matrix
    assert name in rows, f"trial {name} failed: {(run_dir / name / 'error.txt').read_text()}"
    row = rows[name]
    settings = next(t for t in SCENARIO.trials if t.name == name)
    predicted = row["predicted_outage_s"]
    measured = row["measured_outage_s"]
    if predicted == "" or float(predicted) > settings.deadline_s:
        assert measured == "", f"{name}: recovered after {measured}s, model said never"
        assert row["verdict"].startswith("ok: not recovered"), row["verdict"]
        return
    assert measured != "", f"{name}: not recovered by the deadline; model said {predicted}s"
    p, m = float(predicted), float(measured)
    print(f"{name}: measured {m:.2f} s, model {p:.2f} s, margin "
          f"{tolerance(p) - abs(m - p):.2f} s of {tolerance(p):.2f} s")
    assert abs(m - p) <= tolerance(p), f"{name}: measured {m:.2f}s vs model {p:.2f}s"
    assert row["verdict"].startswith("ok"), row["verdict"]
    want = FIRST_ERROR.get(row["predicted_mechanism"])
    err = first_error(run_dir / name)
    if row["predicted_mechanism"] == "drain_reset":
        return  # the drain keeps the old connection working: no outage, maybe no error yet
    assert err is not None, f"{name}: no error recorded"
    if want:
        assert want in err, f"{name}: first error {err!r}, expected {want!r}"
