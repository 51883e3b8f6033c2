"""Shard run dirs as `lab run --shard` leaves them (MatrixRun's files, written by the lab's
own result writers), for the merge tests here and in tests/cli; nothing is built."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lab.config import scenario
from lab.experiment import results, rundir
from lab.experiment.shard import Shard
from lab.experiment.trial import TrialResult, predict

# five trials of one length: shard 1/2 is a, c, e; 2/2 is b, d (round-robin)
SCENARIO = "[defaults]\ndeadline_s = 30\n" + "".join(
    f'[[trial]]\nname = "{n}"\n' for n in "abcde")
HOST = {"lab": {"version": "0.1.0", "commit": "c0ffee"}, "kernel": "6.1.0-18-amd64",
        "python": "3.11.2"}
STARTED, ENDED = "2026-12-01T10:00:00+00:00", "2026-12-01T10:05:00+00:00"


def load(tmp_path: Path, text: str = SCENARIO, overrides: list[str] | None = None
         ) -> scenario.Scenario:
    path = tmp_path / "s.toml"
    path.write_text(text)
    return scenario.load(path, overrides)


def shard_run(root: Path, scen: scenario.Scenario, shard: Shard | None, name: str = "",
              *, failed: tuple[str, ...] = (), mismatch: tuple[str, ...] = (),
              ended: bool = True, host: dict[str, Any] | None = None) -> Path:
    """The run dir of `lab run --shard` (shard None: of every trial): per finished trial its
    files and summary row (a MISMATCH verdict for those in `mismatch`), error.txt for a
    failed one, and run.json."""
    trials = scen.trials if shard is None else shard.select(scen.trials)
    run_dir = root / (name or (f"shard-{shard.index}-of-{shard.count}" if shard else "all"))
    run_dir.mkdir(parents=True)
    rows = []
    for t in trials:
        if t.name in failed:
            (run_dir / t.name).mkdir()
            (run_dir / t.name / "error.txt").write_text("Traceback: RuntimeError: x\n")
            continue
        result = TrialResult(t, "nft", "test", predict(t, "nft"), t0=100.0, fault_t=105.0,
                             recover_s=13.5, detect_s=1.0, errors=1, reconnects=1,
                             verdict="MISMATCH: 2.00s off" if t.name in mismatch
                             else "ok: within 0.67s of the model",
                             samples=[{"t": 101.0, "tps": 10, "qps": 200, "reads": 140,
                                       "writes": 40, "other": 20, "lat_p95_ms": 3.0,
                                       "errors": 0, "reconnects": 0}])
        rows.append(results.write_trial(result, run_dir / t.name))
    results.write_summary(run_dir, rows)
    meta: dict[str, Any] = {"scenario_name": scen.name, **rundir.identity(scen),
                            "started": STARTED, "host": host or HOST,
                            "trials": [t.name for t in trials], "resumed": []}
    if shard is not None:
        meta["shard"] = {**shard.record(scen.trials), "hostname": f"node-{shard.index}"}
    if ended:
        meta.update(ended=ENDED, failures={t: "RuntimeError: x" for t in failed})
    results.write_run(run_dir, scen.source, meta)
    return run_dir
