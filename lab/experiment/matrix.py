"""Run a scenario's trials side by side, each in its own namespaces and address slot.

A trial mostly waits (on a kernel timer, a server, a driver process), so trials run in threads
of one process; the real work happens in the processes each trial starts. A matrix containing
the 924 s baseline therefore takes about one baseline's time. Finished trials are recorded as
they end (trial.json), so an interrupted matrix resumes without redoing them.
"""

from __future__ import annotations

import json
import platform
import threading
import traceback
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lab.config.scenario import Scenario
from lab.experiment import results, rundir
from lab.experiment.shard import Shard
from lab.experiment.trial import Interrupted, TrialStatus, run_trial

DEFAULT_PARALLEL = 8


class MatrixRun:
    """Runs every trial of a scenario (of its `shard`, if one is given) into run_dir;
    `statuses` feed a progress view."""

    def __init__(
        self,
        scenario: Scenario,
        run_dir: Path,
        *,
        parallel: int = DEFAULT_PARALLEL,
        on_line: Callable[[str], None] | None = None,
        shard: Shard | None = None,
    ) -> None:
        self.scenario = scenario
        self.shard = shard
        self.trials = scenario.trials if shard is None else shard.select(scenario.trials)
        self.run_dir = run_dir
        self.parallel = max(1, parallel)
        self.on_line = on_line
        self.stop = threading.Event()
        self.statuses = {t.name: TrialStatus(t.name) for t in self.trials}
        self.rows: dict[str, dict[str, Any]] = {}
        self.failures: dict[str, str] = {}
        self.resumed: list[str] = []

    def _run_one(self, index: int) -> None:
        settings = self.trials[index]
        trial_dir = self.run_dir / settings.name
        status = self.statuses[settings.name]
        try:
            result = run_trial(
                settings, trial_dir, stop=self.stop, status=status, on_line=self.on_line
            )
        except Interrupted:
            status.phase = "interrupted"
            return
        except Exception as exc:
            status.phase = "failed"
            self.failures[settings.name] = f"{type(exc).__name__}: {exc}"
            trial_dir.mkdir(parents=True, exist_ok=True)
            (trial_dir / "error.txt").write_text(traceback.format_exc())
            return
        self.rows[settings.name] = results.write_trial(result, trial_dir)

    def run(self) -> list[dict[str, Any]]:
        """Run (or resume) the matrix; returns summary rows in scenario order.

        The run dir is held (rundir.RunDirLock) from before run.json is read until the
        summary is written, and a resume must be of the same scenario, settings and shard."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with rundir.RunDirLock(self.run_dir):
            rundir.check_resume(self.run_dir, self.scenario, self.shard)
            todo = self._resume()
            self._write_run_json()
            self._run_all(todo)
            rows = [self.rows[t.name] for t in self.trials if t.name in self.rows]
            results.write_summary(self.run_dir, rows)
            self._write_run_json(ended=True)
        return rows

    def _resume(self) -> list[int]:
        """Take the rows of trials an earlier run of this dir finished; the rest, to run."""
        todo = []
        for i, t in enumerate(self.trials):
            row = results.finished_row(self.run_dir / t.name)
            if row is not None:
                self.rows[t.name] = row
                self.statuses[t.name].phase = "done (earlier run)"
                self.resumed.append(t.name)
            else:
                todo.append(i)
        return todo

    def _write_run_json(self, ended: bool = False) -> None:
        path = self.run_dir / rundir.RUN_JSON
        if ended:
            data = json.loads(path.read_text())
            data.update({"ended": datetime.now(UTC).isoformat(), "failures": self.failures})
            path.write_text(json.dumps(data, indent=2, default=str) + "\n")
            return
        shard = {} if self.shard is None else {"shard": {
            **self.shard.record(self.scenario.trials), "hostname": platform.node()}}
        results.write_run(self.run_dir, self.scenario.source, {
            "scenario_name": self.scenario.name, **rundir.identity(self.scenario),
            "started": datetime.now(UTC).isoformat(), "host": results.host_facts(),
            "trials": [t.name for t in self.trials], "resumed": self.resumed, **shard,
        })

    def _run_all(self, todo: list[int]) -> None:
        pool = ThreadPoolExecutor(self.parallel, thread_name_prefix="trial")
        futures: list[Future[None]] = [pool.submit(self._run_one, i) for i in todo]
        try:
            while not all(f.done() for f in futures):
                wait(futures, timeout=0.2)  # short waits keep the main thread interruptible
        except BaseException:
            self.stop.set()  # every trial tears itself down; wait for them
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
