"""`lab merge` (issue 15, item 6) on run dirs written by the lab's own result writers, as
MatrixRun leaves them: the shards of one split merge into the run one machine makes, and
every other set of run dirs is refused in one line, before anything is written. Nothing here
builds a trial (tests/cli/test_shard.py merges real shards)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from lab.errors import LabError
from lab.experiment import html, merge, results, rundir
from lab.experiment.shard import Shard
from tests.experiment.shards import ENDED, HOST, SCENARIO, STARTED, load, shard_run


def files(run_dir: Path) -> dict[str, bytes]:
    """Every file of every trial directory, by its path in the run dir."""
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*"))
            if p.is_file() and p.parent != run_dir}


def test_two_shards_merge_into_the_run_one_machine_makes(tmp_path: Path) -> None:
    scen = load(tmp_path)
    one, two = (shard_run(tmp_path, scen, Shard(i, 2)) for i in (1, 2))
    assert json.loads((one / "run.json").read_text())["trials"] == ["a", "c", "e"]
    single = shard_run(tmp_path, scen, None)
    merged = merge.merge([two, one], tmp_path / "merged")  # in any order
    out = tmp_path / "merged"
    assert merged.out == out and [p.label for p in merged.parts] == ["1/2", "2/2"]
    assert (out / "summary.csv").read_text() == (single / "summary.csv").read_text()
    assert files(out) == files(single)
    record = json.loads((out / "run.json").read_text())
    assert record["trials"] == list("abcde") and record["failures"] == {}
    assert record["scenario_sha256"] == scen.digest and record["host"] == HOST
    assert record["started"] == STARTED and record["ended"] == ENDED and "shard" not in record
    assert [(s["shard"], s["hostname"], s["kernel"], s["trials"]) for s in record["shards"]] \
        == [("1/2", "node-1", HOST["kernel"], ["a", "c", "e"]),
            ("2/2", "node-2", HOST["kernel"], ["b", "d"])]
    rundir.check_resume(out, scen)  # `lab run --resume` takes the merged run
    host_table = html._host(record)  # the report's Host section names where each shard ran
    assert "shard 1/2" in host_table and "node-1, kernel 6.1.0-18-amd64, 3 trial(s)" in host_table
    assert sorted(p.name for p in tmp_path.iterdir() if ".merging-" in p.name) == []


def test_a_failed_trial_is_merged_as_a_failure(tmp_path: Path) -> None:
    scen = load(tmp_path)
    parts = [shard_run(tmp_path, scen, Shard(1, 2), failed=("c",)),
             shard_run(tmp_path, scen, Shard(2, 2))]
    merged = merge.merge(parts, tmp_path / "merged")
    assert merged.failures == {"c": "RuntimeError: x"}
    assert [r["trial"] for r in merged.rows] == ["a", "b", "d", "e"]
    assert (merged.out / "c" / "error.txt").is_file()
    assert json.loads((merged.out / "run.json").read_text())["failures"] == merged.failures


def test_host_facts_that_differ_are_given_per_shard(tmp_path: Path) -> None:
    scen = load(tmp_path)
    other = {**HOST, "kernel": "6.1.0-20-amd64"}
    parts = [shard_run(tmp_path, scen, Shard(1, 2)),
             shard_run(tmp_path, scen, Shard(2, 2), host=other)]
    host = json.loads((merge.merge(parts, tmp_path / "m").out / "run.json").read_text())["host"]
    assert host["kernel"] == "per shard: 1/2=6.1.0-18-amd64, 2/2=6.1.0-20-amd64"
    assert host["lab"] == HOST["lab"] and host["python"] == HOST["python"]


def test_a_run_of_every_trial_is_shard_1_of_1(tmp_path: Path) -> None:
    scen = load(tmp_path)
    merged = merge.merge([shard_run(tmp_path, scen, None)], root=tmp_path / "results")
    assert merged.out.parent == tmp_path / "results"  # default: a new results/<stamp>-<name>
    assert merged.out.name.endswith("-s")
    assert [p.label for p in merged.parts] == ["1/1"] and len(merged.rows) == 5


def refused(tmp_path: Path, parts: list[Path], match: str) -> LabError:
    """merge refuses, in one line, and writes nothing."""
    before = sorted(tmp_path.iterdir())
    with pytest.raises(LabError, match=match) as caught:
        merge.merge(parts, tmp_path / "merged")
    assert "\n" not in str(caught.value)
    assert sorted(tmp_path.iterdir()) == before
    return caught.value


def test_shards_of_another_scenario_file_or_set_list_are_refused(tmp_path: Path) -> None:
    scen = load(tmp_path)
    one = shard_run(tmp_path, scen, Shard(1, 2))
    edited = shard_run(tmp_path / "x", load(tmp_path, SCENARIO.replace("30", "31")),
                       Shard(2, 2))
    refused(tmp_path, [one, edited], f"^{one} and {edited} are runs of different scenario "
            rf"files \(sha256 {scen.digest[:12]} and [0-9a-f]{{12}}\) -- merge the shards of "
            "one scenario file$")
    other_set = shard_run(tmp_path / "y", load(tmp_path, overrides=["client.tcp_retries2=5"]),
                          Shard(2, 2))
    refused(tmp_path, [one, other_set], r"ran with different --set \(\[\] and "
            r"\['client.tcp_retries2=5'\]\)")


def test_shards_of_different_splits_are_refused(tmp_path: Path) -> None:
    scen = load(tmp_path)
    one = shard_run(tmp_path, scen, Shard(1, 2))
    three = shard_run(tmp_path, scen, Shard(2, 3))
    refused(tmp_path, [one, three], f"^{one} is shard 1/2 but {three} is shard 2/3: they are "
            "of different splits -- merge the 2 shards of one --shard I/2 split$")
    refused(tmp_path, [one, shard_run(tmp_path, scen, None)], "is shard 1/1")


def test_a_shard_given_twice_or_missing_is_named(tmp_path: Path) -> None:
    scen = load(tmp_path)
    one = shard_run(tmp_path, scen, Shard(1, 3))
    copy = tmp_path / "copy-of-1"
    shutil.copytree(one, copy)
    refused(tmp_path, [one, copy], f"^shard 1/3 is given twice: {one} and {copy} -- give each "
            "shard's run directory once$")
    three = shard_run(tmp_path, scen, Shard(3, 3))
    error = refused(tmp_path, [three, one], r"^shard 2/3 missing \(given: 1/3, 3/3\)")
    assert error.fix == "merge all 3 shards (run a missing one with lab run SCENARIO --shard 2/3)"
    refused(tmp_path, [three], r"^shards 1/3, 2/3 missing \(given: 3/3\)")


def test_shards_that_share_a_trial_are_refused(tmp_path: Path) -> None:
    """Two shards of one split never share a trial; a doctored (or other lab's) one does."""
    scen = load(tmp_path)
    one, two = (shard_run(tmp_path, scen, Shard(i, 2)) for i in (1, 2))
    record = json.loads((two / "run.json").read_text())
    record["trials"].append("a")
    (two / "run.json").write_text(json.dumps(record))
    shutil.copytree(one / "a", two / "a")
    rows = results.read_summary(two) + [r for r in results.read_summary(one) if r["trial"] == "a"]
    results.write_summary(two, rows)
    refused(tmp_path, [one, two], rf"^trial a is in shard 1/2 \({one}\) and in shard 2/2 "
            rf"\({two}\)")


def test_an_incomplete_run_is_refused_with_how_to_finish_it(tmp_path: Path) -> None:
    scen = load(tmp_path)
    one = shard_run(tmp_path, scen, Shard(1, 2), ended=False)
    two = shard_run(tmp_path, scen, Shard(2, 2))
    error = refused(tmp_path, [one, two], f"^{one} is an incomplete run \\(run.json has no "
                    "end: it was interrupted, or it still runs\\)")
    assert error.fix == f"finish it (lab run SCENARIO --shard 1/2 --resume {one}), then merge"
    one = shard_run(tmp_path, scen, Shard(1, 2), "no-row")
    shutil.rmtree(one / "c")
    results.write_summary(one, [r for r in results.read_summary(one) if r["trial"] != "c"])
    refused(tmp_path, [one, two], f"^{one} is an incomplete run: trial c has no result")
    shutil.rmtree(two / "b")  # in summary.csv, but its directory is gone
    refused(tmp_path, [shard_run(tmp_path, scen, Shard(1, 2), "whole"), two],
            f"^{two}: trial b is in summary.csv but its directory is missing")


def test_what_is_no_run_of_this_lab_is_refused(tmp_path: Path) -> None:
    scen = load(tmp_path)
    one = shard_run(tmp_path, scen, Shard(1, 2))
    empty = tmp_path / "empty"
    empty.mkdir()
    refused(tmp_path, [one, empty], f"^{empty}: no run.json, so it is not a run directory")
    refused(tmp_path, [tmp_path / "nothere"], "no run.json")
    old = tmp_path / "old"
    old.mkdir()
    (old / "run.json").write_text(json.dumps({"trials": ["a"], "ended": ENDED}))
    refused(tmp_path, [old], "records no scenario hash")


def test_an_out_dir_that_is_not_empty_is_refused(tmp_path: Path) -> None:
    scen = load(tmp_path)
    parts = [shard_run(tmp_path, scen, Shard(i, 2)) for i in (1, 2)]
    out = tmp_path / "merged"
    out.mkdir()
    (out / "x").write_text("")
    with pytest.raises(LabError, match=f"^-o {out} exists and is not an empty directory"):
        merge.merge(parts, out)
    assert sorted(p.name for p in out.iterdir()) == ["x"]
    (out / "x").unlink()
    assert merge.merge(parts, out).out == out  # an empty one is taken
