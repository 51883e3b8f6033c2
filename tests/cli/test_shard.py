"""`lab run --shard I/N` and `lab merge` as a user runs them (issue 15, item 6): bad --shard
input and every refusal is one line and exit 2; a merged run gets lab run's exit code; two
real shards merged are the run one machine makes of the same trials."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from lab.experiment.shard import Shard
from tests.cli.test_main import ROOT, lab, lab_error
from tests.experiment.shards import load, shard_run

# three short real trials (~6 s each): two lb resets and a TCP_USER_TIMEOUT of 2 s
REAL = """
[defaults]
deadline_s = 10
after_s = 1
capture = false
fault.at_s = 2
lb.expire_nodest_conn = 1
[[trial]]
name = "reset"
[[trial]]
name = "reset-2-threads"
load.threads = 2
[[trial]]
name = "user-timeout"
lb.expire_nodest_conn = 0
client.tcp_user_timeout_ms = 2000
"""
# what a trial measured: differs from run to run; every other column must not
MEASURED = {"measured_outage_s", "detect_s", "recover_s", "errors", "reconnects",
            "fault_apply_ms", "retrans_count", "tlp", "first_rto_s", "last_gap_s",
            "retrans_missing"}


@pytest.mark.parametrize(("shard", "line"), [
    ("0/2", "lab: --shard 0/2: shards are numbered from 1 (1..2); from a 0-based index such "
            "as JOB_COMPLETION_INDEX, add 1"),
    ("3/2", "lab: --shard 3/2: there is no shard 3 of 2 (I is 1..2)"),
    ("a/b", "lab: --shard 'a/b' is not I/N"),
])
def test_bad_shard_is_one_line_and_nothing_is_made(tmp_path: Path, shard: str,
                                                   line: str) -> None:
    out = tmp_path / "out"
    proc = lab("run", ROOT / "scenarios" / "ci-short.toml", "--shard", shard, "--out", out)
    assert lab_error(proc) == (f"{line} -- write --shard I/N with 1 <= I <= N, e.g. "
                               "--shard 1/2 (I is 1-based)")
    assert not out.exists()


def test_dry_run_of_each_shard_together_is_every_trial_once() -> None:
    every = json.loads(lab("run", "mitigations-short", "--dry-run", "--json").stdout)
    names = [t["trial"] for t in every["trials"]]
    seen = []
    for i in (1, 2, 3):
        proc = lab("run", "mitigations-short", "--dry-run", "--json", "--shard", f"{i}/3")
        assert proc.returncode == 0, proc
        data = json.loads(proc.stdout)
        assert data["shard"] == f"{i}/3" and data["trials"]
        seen += [t["trial"] for t in data["trials"]]
    assert sorted(seen) == sorted(names) and len(seen) == len(names)
    proc = lab("run", "mitigations-short", "--dry-run", "--shard", "2/3")
    assert "trial(s) of shard 2/3; with --parallel 8" in " ".join(proc.stdout.split())


@pytest.mark.parametrize(("kwargs", "code"), [
    ({}, 0), ({"mismatch": ("b",)}, 3), ({"failed": ("c",)}, 1),
    ({"failed": ("c",), "mismatch": ("b",)}, 1),  # a trial that could not run comes first
])
def test_merge_exit_code_is_lab_runs(tmp_path: Path, kwargs: dict[str, tuple[str, ...]],
                                     code: int) -> None:
    scen = load(tmp_path)
    one = shard_run(tmp_path, scen, Shard(1, 2), **kwargs)
    two = shard_run(tmp_path, scen, Shard(2, 2), **kwargs)
    out = tmp_path / "merged"
    proc = lab("merge", one, two, "-o", out)
    assert proc.returncode == code, proc
    assert f"merged 2 shard(s) from 2 host(s) (node-1, node-2): {out}/summary.csv" in \
        " ".join(proc.stdout.split())
    assert ("trial c failed: RuntimeError: x" in proc.stderr) == ("failed" in kwargs)
    data = json.loads(lab("merge", one, two, "-o", tmp_path / "again", "--json").stdout)
    assert data["exit_code"] == code and data["shards"] == ["1/2", "2/2"]
    assert [r["trial"] for r in data["trials"]] == [t for t in "abcde" if
                                                     t not in kwargs.get("failed", ())]


def test_merge_refusals_are_one_line(tmp_path: Path) -> None:
    scen = load(tmp_path)
    one = shard_run(tmp_path, scen, Shard(1, 3))
    three = shard_run(tmp_path, scen, Shard(3, 3))
    out = tmp_path / "merged"
    assert lab_error(lab("merge", one, three, "-o", out)) == (
        "lab: shard 2/3 missing (given: 1/3, 3/3) -- merge all 3 shards (run a missing one "
        "with lab run SCENARIO --shard 2/3)")
    other = shard_run(tmp_path / "x", load(tmp_path, overrides=["deadline_s=20"]), Shard(2, 3))
    assert "ran with different --set" in lab_error(lab("merge", one, other, three, "-o", out))
    assert not out.exists()
    proc = lab("merge")
    assert proc.returncode == 2 and "required: RUN_DIR" in proc.stderr


@pytest.mark.root
def test_two_real_shards_merge_into_what_one_run_gives(tmp_path: Path) -> None:
    scen = tmp_path / "three.toml"
    scen.write_text(REAL)
    outs = {name: tmp_path / name for name in ("shard1", "shard2", "single")}
    procs = {name: subprocess.Popen(
        [sys.executable, "-m", "lab.cli", "run", str(scen), "--plain", "--out", str(out),
         *(["--shard", f"{name[-1]}/2"] if name != "single" else [])],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name, out in outs.items()}  # side by side: each lab claims its own slots
    for name, proc in procs.items():
        _, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, (name, err)
    runs = {name: next(out.iterdir()) for name, out in outs.items()}
    merged = tmp_path / "merged"
    proc = lab("merge", runs["shard2"], runs["shard1"], "-o", merged, "--json")
    assert proc.returncode == json.loads(proc.stdout)["exit_code"] == 0, proc

    def summary(run_dir: Path) -> tuple[list[str], list[dict[str, str]]]:
        with open(run_dir / "summary.csv", newline="") as f:
            reader = csv.DictReader(f)
            return list(reader.fieldnames or []), list(reader)
    (columns, rows), (one_columns, one_rows) = summary(merged), summary(runs["single"])
    assert columns == one_columns
    assert [r["trial"] for r in rows] == [r["trial"] for r in one_rows] == \
        ["reset", "reset-2-threads", "user-timeout"]
    for row, one in zip(rows, one_rows, strict=True):
        assert row["verdict"].startswith("ok") and one["verdict"].startswith("ok"), (row, one)
        assert {k: v for k, v in row.items() if k not in MEASURED} == \
            {k: v for k, v in one.items() if k not in MEASURED}
    for trial in ("reset", "reset-2-threads", "user-timeout"):
        assert sorted(p.name for p in (merged / trial).iterdir()) == \
            sorted(p.name for p in (runs["single"] / trial).iterdir())
    compared = lab("compare", runs["single"], merged)
    assert compared.returncode in (0, 1), compared  # the two runs' outages may differ
    assert "what differs: no setting, same scenario" in compared.stdout
    assert lab("report", merged, "--json").returncode == 0
