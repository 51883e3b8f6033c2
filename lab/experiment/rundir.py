"""A run's results folder: created atomically, owned by one lab at a time, resumed only by the
same scenario and settings.

A run dir is claimed by mkdir (two labs started in the same second never share one) and then
held with an exclusive flock on its `.lock` for as long as a lab writes into it: a second
`--resume` of the same dir, or a resume while the first run still goes, is refused instead of
running the same trials into the same files. The kernel drops the flock when its holder dies,
so a killed run's dir can be resumed at once.

run.json records the scenario file's sha256 and the `--set` list (and, for `lab run --shard`,
the shard); a resume that would mix trials of another scenario, other settings or another
shard into one summary.csv is refused.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from lab.config.scenario import Scenario
from lab.errors import LabError

if TYPE_CHECKING:
    from lab.experiment.shard import Shard

LOCK_NAME = ".lock"
RUN_JSON = "run.json"


def check_out_root(root: Path) -> None:
    """The results root must be (or become) a writable directory: refused before anything is
    built, never found out after a trial ran."""
    if root.exists() and not root.is_dir():
        raise LabError(f"--out {root} is a file, not a directory", "give a directory for results")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LabError(f"--out {root}: cannot create it ({exc.strerror})",
                       "give a directory you can write to") from None
    if not os.access(root, os.W_OK | os.X_OK):
        raise LabError(f"--out {root} is not writable", "give a directory you can write to")


def new_run_dir(root: Path, scenario_name: str) -> Path:
    """A new results/<UTC stamp>-<scenario> directory; a run started in the same second as
    another gets -2, -3, ... (mkdir is the claim, so two processes never share one)."""
    check_out_root(root)
    base = f"{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}-{scenario_name}"
    path, n = root / base, 1
    while True:
        try:
            path.mkdir()
            return path
        except FileExistsError:
            n += 1
            path = root / f"{base}-{n}"


class RunDirLock:
    """An exclusive, non-blocking flock on run_dir/.lock; the holder's pid is written into it
    so the refusal can name who holds it."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / LOCK_NAME
        self._file: TextIO | None = None

    def acquire(self) -> None:
        f = open(self.path, "a+")  # noqa: SIM115 (held open for the run: the lock is the fd)
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "?"
            f.close()
            raise LabError(f"{self.path.parent} is in use by another lab (pid {holder})",
                           "wait for it to finish, or resume into a new run") from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        self._file = f

    def release(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()  # closing the fd drops the flock
            self._file = None

    def __enter__(self) -> RunDirLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def identity(scenario: Scenario) -> dict[str, Any]:
    """What must be equal for a resume to add to a run: the file's bytes, the --set list."""
    return {"scenario_sha256": scenario.digest, "overrides": list(scenario.overrides)}


def recorded(run_dir: Path) -> dict[str, Any] | None:
    """run.json of an earlier run in run_dir, None if there is none."""
    path = run_dir / RUN_JSON
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise LabError(f"{path} is unreadable ({exc})", "start a new run instead") from None
    if not isinstance(data, dict):
        raise LabError(f"{path} is not a run record", "start a new run instead")
    return data


def shard_of(record: dict[str, Any]) -> str | None:
    """The shard ("I/N") a run.json records; None for a run of every trial."""
    shard = record.get("shard")
    if not isinstance(shard, dict):
        return None
    return f"{shard.get('index')}/{shard.get('count')}"


def _check_shard(run_dir: Path, earlier: dict[str, Any], shard: Shard | None) -> None:
    ran, want = shard_of(earlier), None if shard is None else str(shard)
    if ran != want:
        raise LabError(f"--resume {run_dir}: it ran {f'shard {ran}' if ran else 'every trial'}"
                       f", this run has {f'--shard {want}' if want else 'no --shard'}",
                       "resume with the same --shard, or start a new run")


def check_resume(run_dir: Path, scenario: Scenario, shard: Shard | None = None) -> None:
    """Refuse to resume run_dir with another scenario file, other --set values or another
    shard."""
    earlier = recorded(run_dir)
    if earlier is None:
        return
    want = identity(scenario)
    if "scenario_sha256" not in earlier:
        raise LabError(f"{run_dir} records no scenario hash (made by an older lab)",
                       "start a new run; results of two lab versions are not mixed")
    if earlier["scenario_sha256"] != want["scenario_sha256"]:
        raise LabError(f"--resume {run_dir}: it ran another scenario file (sha256 "
                       f"{str(earlier['scenario_sha256'])[:12]}, this one {scenario.digest[:12]})",
                       "resume with the same file, or start a new run")
    if list(earlier.get("overrides", [])) != want["overrides"]:
        raise LabError(f"--resume {run_dir}: it ran with --set {earlier.get('overrides')}, "
                       f"this run has {want['overrides']}",
                       "resume with the same --set values, or start a new run")
    _check_shard(run_dir, earlier, shard)
