"""`lab merge RUN_DIR... [-o OUT]`: the run dirs of a sharded matrix (`lab run --shard I/N`, on
N machines) as one run dir, as if one machine had run every trial.

The merged dir has what a run dir has: summary.csv (every shard's rows, in the scenario's
order), each trial's directory (copied whole: CSVs, trial.json, captures, error.txt), and
run.json (the scenario, its sha256 and --set list, trials, failures, resumed; started and
ended spanning the shards; `host` with the facts the shards share, a fact that differs as
"per shard: ..."), plus `shards`: each shard's index, run dir, hostname, kernel, lab version,
times and trials. `lab report`, `lab compare` and `lab run --resume` take it like any run.

Refused, each in one line (LabError), before anything is written: a dir that is no run, a run
that did not finish (interrupted or still running, or a trial with no result), shards of
different scenario files or --set lists (run.json's sha256), of different splits, the same
shard twice, a missing shard, and two shards that share a trial. The merged dir is written
beside its destination and renamed into place, so a merge that fails leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lab.errors import LabError
from lab.experiment import results, rundir

MERGE_FIX = "give the run directories that 'lab run --shard I/N' made, one per shard"


@dataclass(frozen=True)
class Part:
    """One run dir given to merge: a shard, or a run of every trial (shard 1/1)."""

    path: Path
    record: dict[str, Any]  # its run.json
    index: int
    count: int
    method: str | None  # how the split was made (lab.experiment.shard.METHOD)
    of: list[str]  # the scenario's trials, in order
    trials: list[str]  # the trials this run ran
    rows: dict[str, dict[str, str]]  # summary.csv, by trial
    failures: dict[str, str]

    @property
    def label(self) -> str:
        return f"{self.index}/{self.count}"

    @property
    def sharded(self) -> bool:
        return isinstance(self.record.get("shard"), dict)

    def resume_fix(self) -> str:
        shard = f" --shard {self.label}" if self.sharded else ""
        return f"finish it (lab run SCENARIO{shard} --resume {self.path}), then merge"


@dataclass(frozen=True)
class Merged:
    out: Path
    rows: list[dict[str, str]]  # summary.csv's, in the scenario's order
    failures: dict[str, str]
    parts: list[Part]  # by shard index


def _names(value: Any, what: str, path: Path) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise LabError(f"{path / rundir.RUN_JSON}: its {what} is not a list of trial names",
                       MERGE_FIX)
    return value


def _split(record: dict[str, Any], path: Path) -> tuple[int, int, str | None, list[str]]:
    """(index, count, method, the scenario's trials) of a run.json; a run of every trial is
    shard 1/1."""
    shard = record.get("shard")
    if shard is None:
        return 1, 1, None, _names(record.get("trials"), "trials", path)
    if not isinstance(shard, dict):
        shard = {}
    index, count = shard.get("index"), shard.get("count")
    if not (isinstance(index, int) and isinstance(count, int) and 1 <= index <= count):
        raise LabError(f"{path / rundir.RUN_JSON}: its shard record is not I/N", MERGE_FIX)
    return index, count, shard.get("method"), _names(shard.get("scenario_trials"),
                                                     "shard's scenario_trials", path)


def read_part(path: Path) -> Part:
    """A run dir's run.json and summary.csv; refused unless it is a finished run."""
    record = rundir.recorded(path) if path.is_dir() else None
    if record is None:
        raise LabError(f"{path}: no run.json, so it is not a run directory", MERGE_FIX)
    if "scenario_sha256" not in record:
        raise LabError(f"{path} records no scenario hash (made by an older lab)",
                       "merge runs made by this lab version")
    index, count, method, of = _split(record, path)
    trials = _names(record.get("trials"), "trials", path)
    summary = path / "summary.csv"
    rows = {r["trial"]: r for r in results.read_summary(path)} if summary.exists() else {}
    failures = record.get("failures")
    failures = dict(failures) if isinstance(failures, dict) else {}
    part = Part(path, record, index, count, method, of, trials, rows, failures)
    _check_complete(part)
    return part


def _check_complete(part: Part) -> None:
    if not part.record.get("ended"):
        raise LabError(f"{part.path} is an incomplete run (run.json has no end: it was "
                       "interrupted, or it still runs)", part.resume_fix())
    missing = [t for t in part.trials if t not in part.rows and t not in part.failures]
    if missing:
        raise LabError(f"{part.path} is an incomplete run: trial {missing[0]} has no result"
                       + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""),
                       part.resume_fix())
    extra = [t for t in part.rows if t not in part.trials]
    if extra:
        raise LabError(f"{part.path}: summary.csv has trial {extra[0]}, which its run.json "
                       "does not list", "merge run directories as lab run left them")
    lost = [t for t in part.rows if not (part.path / t).is_dir()]
    if lost:
        raise LabError(f"{part.path}: trial {lost[0]} is in summary.csv but its directory is "
                       "missing", "copy each shard's whole run directory")


def _check_same_scenario(parts: Sequence[Part]) -> None:
    first = parts[0]
    for p in parts[1:]:
        a, b = first.record["scenario_sha256"], p.record["scenario_sha256"]
        if a != b:
            raise LabError(f"{first.path} and {p.path} are runs of different scenario files "
                           f"(sha256 {str(a)[:12]} and {str(b)[:12]})",
                           "merge the shards of one scenario file")
        a, b = first.record.get("overrides", []), p.record.get("overrides", [])
        if list(a) != list(b):
            raise LabError(f"{first.path} and {p.path} ran with different --set ({a} and {b})",
                           "merge shards run with the same --set values")


def _check_split(parts: Sequence[Part]) -> None:
    first = parts[0]
    for p in parts[1:]:
        if p.count != first.count:
            raise LabError(f"{first.path} is shard {first.label} but {p.path} is shard "
                           f"{p.label}: they are of different splits",
                           f"merge the {first.count} shards of one --shard I/{first.count} split")
        if (p.method, p.of) != (first.method, first.of):
            raise LabError(f"{first.path} and {p.path} split the scenario differently "
                           "(made by different lab versions?)",
                           "run every shard with the same lab version")


def _check_indices(parts: Sequence[Part]) -> None:
    seen: dict[int, Part] = {}
    for p in parts:
        if p.index in seen:
            raise LabError(f"shard {p.label} is given twice: {seen[p.index].path} and {p.path}",
                           "give each shard's run directory once")
        seen[p.index] = p
    count = parts[0].count
    missing = [f"{i}/{count}" for i in range(1, count + 1) if i not in seen]
    if missing:
        given = ", ".join(p.label for p in sorted(parts, key=lambda p: p.index))
        raise LabError(f"shard{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
                       f"missing (given: {given})",
                       f"merge all {count} shards (run a missing one with lab run SCENARIO "
                       f"--shard {missing[0]})")


def _check_trials(parts: Sequence[Part]) -> None:
    owner: dict[str, Part] = {}
    for p in parts:
        for t in p.trials:
            if t in owner:
                raise LabError(f"trial {t} is in shard {owner[t].label} ({owner[t].path}) and "
                               f"in shard {p.label} ({p.path})",
                               "merge shards of one split; each trial runs in one shard")
            owner[t] = p
    alien = [t for t in owner if t not in parts[0].of]
    lost = [t for t in parts[0].of if t not in owner]
    if alien or lost:
        what = f"trial {alien[0]} is not in the scenario" if alien else \
            f"trial {lost[0]} is in no shard"
        raise LabError(f"{what} ({len(alien) + len(lost)} such)",
                       "merge the shards of one split, run by one lab version")


def check_parts(parts: Sequence[Part]) -> list[str]:
    """Refuse a set of runs that is not one whole split of one scenario; the scenario's trials,
    in order."""
    _check_same_scenario(parts)
    _check_split(parts)
    _check_indices(parts)
    _check_trials(parts)
    return list(parts[0].of)


def _per_shard(values: list[Any], labels: list[str]) -> Any:
    """A fact of every shard: itself where they agree, "per shard: 1/2=a, 2/2=b" where not."""
    if all(isinstance(v, dict) for v in values):
        keys = dict.fromkeys(k for v in values for k in v)
        return {k: _per_shard([v.get(k) for v in values], labels) for k in keys}
    if all(v == values[0] for v in values):
        return values[0]
    return "per shard: " + ", ".join(f"{label}={v}" for label, v in zip(labels, values,
                                                                          strict=True))


def _shard_entry(p: Part) -> dict[str, Any]:
    host = p.record.get("host") or {}
    shard = p.record.get("shard") or {}
    return {"shard": p.label, "run_dir": str(p.path), "hostname": shard.get("hostname"),
            "kernel": host.get("kernel"), "lab": host.get("lab"),
            "started": p.record.get("started"), "ended": p.record.get("ended"),
            "trials": p.trials}


def _run_record(parts: list[Part], order: list[str], failures: dict[str, str]
                ) -> dict[str, Any]:
    first = parts[0].record
    resumed = {t for p in parts for t in p.record.get("resumed") or []}
    labels = [p.label for p in parts]
    return {
        "scenario_name": first.get("scenario_name"),
        "scenario_sha256": first["scenario_sha256"], "overrides": first.get("overrides", []),
        "started": min(str(p.record.get("started", "")) for p in parts),
        "ended": max(str(p.record["ended"]) for p in parts),
        "host": _per_shard([p.record.get("host") or {} for p in parts], labels),
        "trials": order, "resumed": [t for t in order if t in resumed], "failures": failures,
        "shards": [_shard_entry(p) for p in parts],
        "merged": datetime.now(UTC).isoformat(),
    }


def _target(out: Path | None, root: Path, name: str) -> tuple[Path, bool]:
    """The merged run's dir, empty: -o OUT, or a new results/<stamp>-<name>; and whether it
    was made here (a failed merge removes it again)."""
    if out is None:
        return rundir.new_run_dir(root, name), True
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise LabError(f"-o {out} exists and is not an empty directory",
                       "give a new directory for the merged run")
    rundir.check_out_root(out.parent)
    made = not out.exists()
    out.mkdir(exist_ok=True)
    return out, made


def _write(tmp: Path, parts: list[Part], rows: list[dict[str, str]], meta: dict[str, Any]
           ) -> None:
    for p in parts:
        for t in p.trials:
            if (p.path / t).is_dir():
                shutil.copytree(p.path / t, tmp / t, symlinks=True)
    results.write_summary(tmp, rows)
    results.write_run(tmp, parts[0].record.get("scenario") or {}, meta)


def merge(paths: Sequence[Path], out: Path | None = None, root: Path = Path("results")
          ) -> Merged:
    """Check the run dirs, then write the merged run into `out` (default: a new run dir under
    `root`)."""
    parts = sorted((read_part(Path(p)) for p in paths), key=lambda p: p.index)
    order = check_parts(parts)
    by_trial = {t: p for p in parts for t in p.trials}
    rows = [by_trial[t].rows[t] for t in order if t in by_trial[t].rows]
    failures = {t: by_trial[t].failures[t] for t in order if t in by_trial[t].failures}
    target, made = _target(out, root, str(parts[0].record.get("scenario_name") or "merged"))
    tmp = target.parent / f".{target.name}.merging-{secrets.token_hex(4)}"
    tmp.mkdir()  # (not mkdtemp: the merged dir gets the umask's mode, as a run dir does)
    try:
        _write(tmp, parts, rows, _run_record(parts, order, failures))
        os.rename(tmp, target)  # onto the empty target: the merged run appears whole
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if made:
            with contextlib.suppress(OSError):
                target.rmdir()
        raise
    return Merged(target, rows, failures, parts)
