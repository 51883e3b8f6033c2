"""`lab run --shard I/N` (issue 15, item 6): the split is deterministic from the scenario's
expanded trial list alone, every trial is in exactly one shard, long trials are spread out,
and bad --shard input is one LabError line. Nothing here builds a trial."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lab import lb
from lab.config import scenario
from lab.errors import LabError
from lab.experiment import rundir, shard
from lab.experiment.matrix import MatrixRun
from lab.experiment.shard import Shard

ROOT = Path(__file__).resolve().parents[2]
SEED = ROOT / "scenarios" / "seed-lvs-mysql.toml"
# 12 trials of one length: the split is round-robin by index in the expanded order
EQUAL = """
[defaults]
deadline_s = 30
[[trial]]
name = "t"
[matrix]
"client.tcp_syn_retries" = [3, 4, 5, 6]
"load.threads" = [1, 2, 3]
"""


def load(tmp_path: Path, text: str) -> scenario.Scenario:
    path = tmp_path / "s.toml"
    path.write_text(text)
    return scenario.load(path)


@pytest.mark.parametrize(("text", "index", "count"), [
    ("1/2", 1, 2), ("2/2", 2, 2), (" 3 / 7 ", 3, 7), ("1/1", 1, 1)])
def test_parse_accepts_i_of_n_one_based(text: str, index: int, count: int) -> None:
    assert shard.parse(text) == Shard(index, count)
    assert str(Shard(index, count)) == f"{index}/{count}"


@pytest.mark.parametrize(("text", "problem"), [
    ("0/2", "--shard 0/2: shards are numbered from 1 (1..2); from a 0-based index such as "
            "JOB_COMPLETION_INDEX, add 1"),
    ("3/2", "--shard 3/2: there is no shard 3 of 2 (I is 1..2)"),
    ("a/b", "--shard 'a/b' is not I/N"),
    ("1/0", "--shard 1/0: the number of shards must be 1..10000"),
    ("2", "--shard '2' is not I/N"),
    ("1/2/3", "--shard '1/2/3' is not I/N"),
    ("-1/2", "--shard '-1/2' is not I/N"),
    ("", "--shard '' is not I/N"),
])
def test_bad_shard_is_one_line_with_the_fix(text: str, problem: str) -> None:
    with pytest.raises(LabError) as caught:
        shard.parse(text)
    assert caught.value.problem == problem
    assert caught.value.fix == shard.SHARD_FIX
    assert "\n" not in str(caught.value)


def test_equal_trials_go_round_robin_in_the_expanded_order(tmp_path: Path) -> None:
    scen = load(tmp_path, EQUAL)
    assert len(scen.trials) == 12
    assert len({shard.cost_ds(t) for t in scen.trials}) == 1
    assert shard.assign(scen.trials, 3) == [[0, 3, 6, 9], [1, 4, 7, 10], [2, 5, 8, 11]]
    names = [t.name for t in scen.trials]
    assert [t.name for t in Shard(2, 3).select(scen.trials)] == names[1::3]


def test_the_longest_trial_gets_a_shard_of_its_own() -> None:
    """seed-lvs-mysql: retries2-15 runs ~950 s, the six others ~10-30 s each."""
    trials = scenario.load(SEED).trials
    one, two = (Shard(i, 2).select(trials) for i in (1, 2))
    assert [t.name for t in one] == ["retries2-15"]
    assert [t.name for t in two] == [t.name for t in trials if t.name != "retries2-15"]
    loads = [sum(shard.cost_ds(trials[i]) for i in s) for s in shard.assign(trials, 3)]
    assert max(loads) == shard.cost_ds(trials[0])  # the long one alone sets the wall time
    assert abs(loads[1] - loads[2]) <= max(shard.cost_ds(t) for t in trials[1:])


def test_the_split_does_not_look_at_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    """lb.engine = "auto" is costed as written: a host with IPVS, or one without any engine,
    splits as every other does."""
    trials = scenario.load(SEED).trials
    before = shard.assign(trials, 3)

    def no_engine(requested: str) -> tuple[str, str]:
        raise LabError("no engine here")
    monkeypatch.setattr(lb, "choose_engine", no_engine)
    assert shard.assign(trials, 3) == before
    assert all(isinstance(shard.cost_ds(t), int) for t in trials)  # exact sums


@settings(max_examples=30, deadline=None)
@given(count=st.integers(1, 20))
def test_every_trial_is_in_exactly_one_shard(count: int) -> None:
    trials = scenario.load(ROOT / "scenarios" / "mitigations-short.toml").trials
    shards = shard.assign(trials, count)
    assert len(shards) == count
    flat = [i for s in shards for i in s]
    assert sorted(flat) == list(range(len(trials)))
    assert all(s == sorted(s) for s in shards)  # each shard in the scenario's order
    assert shard.assign(trials, count) == shards  # deterministic
    if count >= len(trials):
        assert sum(1 for s in shards if s) == len(trials)  # the rest are empty


def test_a_shard_record_says_what_merge_checks(tmp_path: Path) -> None:
    scen = load(tmp_path, EQUAL)
    assert Shard(2, 3).record(scen.trials) == {
        "index": 2, "count": 3, "method": shard.METHOD,
        "scenario_trials": [t.name for t in scen.trials]}


def test_matrix_run_of_an_empty_shard_records_a_finished_run(tmp_path: Path) -> None:
    """More shards than trials: the shard has none, and still leaves a run.json that lab
    merge takes (nothing is built, so this needs no root)."""
    scen = load(tmp_path, '[[trial]]\nname = "only"\n')
    run_dir = tmp_path / "run"
    matrix = MatrixRun(scen, run_dir, shard=Shard(2, 2))
    assert matrix.trials == [] and matrix.statuses == {}
    assert matrix.run() == []
    record = json.loads((run_dir / "run.json").read_text())
    assert record["trials"] == [] and record["ended"]
    assert record["shard"]["index"] == 2 and record["shard"]["scenario_trials"] == ["only"]
    assert record["shard"]["hostname"]
    assert not (run_dir / "summary.csv").exists()


def test_resume_of_a_shard_needs_the_same_shard(tmp_path: Path) -> None:
    scen = load(tmp_path, EQUAL)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "run.json").write_text(json.dumps(
        {**rundir.identity(scen), "shard": Shard(1, 3).record(scen.trials)}))
    rundir.check_resume(run_dir, scen, Shard(1, 3))
    with pytest.raises(LabError, match=r"it ran shard 1/3, this run has --shard 2/3"):
        rundir.check_resume(run_dir, scen, Shard(2, 3))
    with pytest.raises(LabError, match=r"it ran shard 1/3, this run has no --shard"):
        rundir.check_resume(run_dir, scen)
    (run_dir / "run.json").write_text(json.dumps(rundir.identity(scen)))
    with pytest.raises(LabError, match=r"it ran every trial, this run has --shard 1/3"):
        rundir.check_resume(run_dir, scen, Shard(1, 3))
