"""Run a scenario's trials side by side, each in its own namespaces and address slot.

A trial mostly waits (on a kernel timer, a server, a driver process), so trials run in threads
of one process; the real work happens in the processes each trial starts. A matrix containing
the 924 s baseline therefore takes about one baseline's time. Finished trials are recorded as
they end (trial.json), so an interrupted matrix resumes without redoing them.
"""

from __future__ import annotations

import json
import threading
import traceback
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lab.config.scenario import Scenario
from lab.experiment import results
from lab.experiment.trial import Interrupted, TrialStatus, run_trial

DEFAULT_PARALLEL = 8


def new_run_dir(root: Path, scenario_name: str) -> Path:
    """A new results/<UTC stamp>-<scenario> directory; a run started in the same second as
    another gets -2, -3, ... (mkdir is the claim, so two processes never share one)."""
    root.mkdir(parents=True, exist_ok=True)
    base = f"{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}-{scenario_name}"
    path, n = root / base, 1
    while True:
        try:
            path.mkdir()
            return path
        except FileExistsError:
            n += 1
            path = root / f"{base}-{n}"


class MatrixRun:
    """Runs every trial of a scenario into run_dir; `statuses` feed a progress view."""

    def __init__(
        self,
        scenario: Scenario,
        run_dir: Path,
        *,
        parallel: int = DEFAULT_PARALLEL,
        on_line: Callable[[str], None] | None = None,
    ) -> None:
        self.scenario = scenario
        self.run_dir = run_dir
        self.parallel = max(1, parallel)
        self.on_line = on_line
        self.stop = threading.Event()
        self.statuses = {t.name: TrialStatus(t.name) for t in scenario.trials}
        self.rows: dict[str, dict[str, Any]] = {}
        self.failures: dict[str, str] = {}
        self.resumed: list[str] = []

    def _run_one(self, index: int) -> None:
        settings = self.scenario.trials[index]
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
            (trial_dir / "error.txt").write_text(traceback.format_exc())
            return
        self.rows[settings.name] = results.write_trial(result, trial_dir)

    def run(self) -> list[dict[str, Any]]:
        """Run (or resume) the matrix; returns summary rows in scenario order."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        todo = []
        for i, t in enumerate(self.scenario.trials):
            row = results.finished_row(self.run_dir / t.name)
            if row is not None:
                self.rows[t.name] = row
                self.statuses[t.name].phase = "done (earlier run)"
                self.resumed.append(t.name)
            else:
                todo.append(i)
        started = datetime.now(UTC).isoformat()
        results.write_run(self.run_dir, self.scenario.source, {
            "scenario_name": self.scenario.name, "started": started, "host": results.host_facts(),
            "trials": [t.name for t in self.scenario.trials], "resumed": self.resumed,
        })
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
        rows = [self.rows[t.name] for t in self.scenario.trials if t.name in self.rows]
        results.write_summary(self.run_dir, rows)
        run_json = json.loads((self.run_dir / "run.json").read_text())
        run_json.update({"ended": datetime.now(UTC).isoformat(), "failures": self.failures})
        (self.run_dir / "run.json").write_text(json.dumps(run_json, indent=2, default=str) + "\n")
        return rows
