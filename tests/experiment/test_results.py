"""lab.experiment.results: the result files of a trial and of a run, written from real
TrialResult objects and read back as a later run (resume) and `lab report` read them."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from lab import model
from lab.config.settings import TrialSettings
from lab.experiment import results
from lab.experiment.trial import TrialResult, verdict

T0 = 1000.0  # the trial's monotonic start


def sample(t: float, qps: float, errors: int = 0) -> dict[str, float]:
    return {"t": t, "tps": qps / 10, "qps": qps, "reads": qps * 0.7, "writes": qps * 0.2,
            "other": qps * 0.1, "lat_p95_ms": 1.5, "errors": errors, "reconnects": 0}


def blackholed_result() -> TrialResult:
    """A retries2=5 crash, as run_trial fills it in: fault at 5 s, recovered 6.2 s later."""
    settings = TrialSettings.model_validate({
        "name": "crash-r5", "client": {"tcp_retries2": 5},
        "fault": {"kind": "crash", "failover_after_s": 1.0}})
    prediction = model.predict(settings, engine="nft")
    result = TrialResult(settings=settings, engine="nft", engine_why="requested: nft",
                         prediction=prediction, t0=T0, fault_t=T0 + 5.0)
    result.samples = [sample(T0 + 1.0, 900.0), sample(T0 + 6.0, 0.0, errors=1),
                      sample(T0 + 12.0, 880.0)]
    result.event("recovered", "outage 6.20 s", T0 + 11.2)  # out of order on purpose
    result.event("load_start", "oltp x1 -> 198.18.0.100:3001", T0)
    result.event("fault", "crash: all packets on backend1:to-lb dropped (no RST)", T0 + 5.0)
    result.detect_s, result.recover_s, result.errors, result.reconnects = 6.0, 6.2, 1, 1
    result.evidence = {"bh.count": 6, "bh.first_rto_s": 0.2041, "retrans.missing": ""}
    result.facts = {"run_id": "r1", "vip": "198.18.0.100"}
    result.verdict = verdict(prediction, result.recover_s, settings.deadline_s)
    return result


def read(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_trial_files_are_relative_to_the_trial_start(tmp_path: Path) -> None:
    result = blackholed_result()
    row = results.write_trial(result, tmp_path / "crash-r5")
    trial_dir = tmp_path / "crash-r5"
    with open(trial_dir / "timeline.csv", newline="") as f:
        assert next(csv.reader(f)) == results.TIMELINE_COLUMNS
    timeline = read(trial_dir / "timeline.csv")
    assert [(r["t_s"], r["qps"], r["err_per_s"]) for r in timeline] == [
        ("1.0", "900.0", "0"), ("6.0", "0.0", "1"), ("12.0", "880.0", "0")]
    events = read(trial_dir / "events.csv")
    assert [(e["t_s"], e["event"]) for e in events] == [
        ("0.0", "load_start"), ("5.0", "fault"), ("11.2", "recovered")]  # sorted by time
    record = json.loads((trial_dir / "trial.json").read_text())
    assert record["trial"] == "crash-r5" and record["engine"] == "nft"
    assert record["fault_t_s"] == 5.0
    assert record["fault_detail"] == "crash: all packets on backend1:to-lb dropped (no RST)"
    assert record["prediction"]["mechanism"] == result.prediction.mechanism
    # the model's reasoning, as the report shows it, and the verdict's tolerance
    assert record["prediction"]["reasoning"] == model.describe(result.prediction)
    assert result.prediction.detail in record["prediction"]["reasoning"]
    predicted = result.prediction.outage_s
    assert predicted is not None
    assert record["prediction"]["tolerance_s"] == round(model.tolerance(predicted), 3)
    assert record["measured"] == {"outage_s": 6.2, "detect_s": 6.0, "recover_s": 6.2,
                                  "errors": 1, "reconnects": 1}
    assert record["settings"]["client"]["tcp_retries2"] == 5
    assert record["facts"] == result.facts and record["evidence"] == result.evidence
    assert record["summary"] == row == results.summary_row(result)


def test_summary_row_columns(tmp_path: Path) -> None:
    result = blackholed_result()
    row = results.summary_row(result)
    columns = list(row)
    assert columns[:5] == ["trial", "backend", "driver", "lb", "fault"]
    # every setting but the name, which is `trial`, and `backend`, which already leads
    settings_keys = [k for k in result.settings.flat() if k not in ("name", "backend")]
    assert columns[5:5 + len(settings_keys)] == settings_keys
    assert columns[5 + len(settings_keys):] == [
        "predicted_outage_s", "predicted_mechanism", "measured_outage_s", "detect_s",
        "recover_s", "errors", "reconnects", "fault_apply_ms", *results.EVIDENCE_COLUMNS,
        "verdict"]
    assert (row["trial"], row["backend"], row["driver"], row["lb"], row["fault"]) == (
        "crash-r5", "mariadb", "oltp", "nft", "crash")
    assert row["client.tcp_retries2"] == 5 and row["client.tcp_user_timeout_ms"] == ""  # None
    assert row["measured_outage_s"] == 6.2 and row["detect_s"] == 6.0
    predicted = result.prediction.outage_s
    assert predicted is not None and row["predicted_outage_s"] == round(predicted, 3)
    # evidence facts: numbers rounded, an absent fact empty
    assert (row["retrans_count"], row["first_rto_s"], row["tlp"]) == (6, 0.204, "")
    assert row["verdict"] == result.verdict
    assert row["fault_apply_ms"] == ""  # not measured in this result
    result.fault_apply_ms = 0.412
    assert results.summary_row(result)["fault_apply_ms"] == 0.412


def test_a_trial_without_a_fault_leaves_the_measurements_empty() -> None:
    result = blackholed_result()
    result.fault_t = result.detect_s = result.recover_s = None
    result.evidence = {}
    row = results.summary_row(result)
    assert row["measured_outage_s"] == row["detect_s"] == row["recover_s"] == ""
    assert all(row[c] == "" for c in results.EVIDENCE_COLUMNS)
    assert results.trial_record(result)["fault_t_s"] == ""


def test_summary_csv_round_trip(tmp_path: Path) -> None:
    first = blackholed_result()
    second = blackholed_result()
    second.settings = second.settings.model_copy(update={"name": "crash-r5-b"})
    rows = [results.summary_row(first), results.summary_row(second)]
    results.write_summary(tmp_path, rows)
    back = results.read_summary(tmp_path)
    assert [r["trial"] for r in back] == ["crash-r5", "crash-r5-b"]
    assert list(back[0]) == list(rows[0])
    assert back[0] == {k: str(v) for k, v in rows[0].items()}  # csv: every value a string


def test_no_rows_write_no_summary(tmp_path: Path) -> None:
    results.write_summary(tmp_path, [])
    assert not (tmp_path / "summary.csv").exists()


def test_a_resumed_run_reads_back_the_finished_trials_row(tmp_path: Path) -> None:
    row = results.write_trial(blackholed_result(), tmp_path / "crash-r5")
    assert results.finished_row(tmp_path / "crash-r5") == json.loads(json.dumps(row))
    # not finished: no directory, a trial.json cut short, one written before the summary
    assert results.finished_row(tmp_path / "never-ran") is None
    (tmp_path / "cut").mkdir()
    (tmp_path / "cut" / "trial.json").write_text('{"trial": "cut", "summ')
    assert results.finished_row(tmp_path / "cut") is None
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "trial.json").write_text('{"trial": "old"}')
    assert results.finished_row(tmp_path / "old") is None


def test_run_json_holds_the_scenario_and_the_facts(tmp_path: Path) -> None:
    results.write_run(tmp_path, {"description": "d", "defaults": {"deadline_s": 30}},
                      {"scenario_name": "s", "trials": ["a", "b"], "host": results.host_facts()})
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["scenario"] == {"description": "d", "defaults": {"deadline_s": 30}}
    assert run["scenario_name"] == "s" and run["trials"] == ["a", "b"]
    assert run["host"]["python"].count(".") == 2 and "pydantic" in run["host"]["packages"]
    assert run["written"].endswith("+00:00")  # UTC
