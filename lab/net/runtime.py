"""Run identity: a unique short prefix, a private address slot, a scratch dir, a state file.

Every run (one trial) claims a *slot*: a /21 of the RFC 2544 benchmarking range 198.18.0.0/15,
which no real network routes, so trials can run side by side without address clashes and a
packet that escaped the lab would be recognisable at once. Slots are claimed with O_EXCL files
under STATE_DIR that record the owner's pid, so a slot of a killed run is reclaimed, and
`lab clean` can tell a live run's namespaces from a dead run's leftovers.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import secrets
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from lab.errors import LabError

STATE_DIR = Path(os.environ.get("BHL_STATE_DIR", "/run/blackhole-lab"))
# Built once per machine and reused by every run (MariaDB data templates, the sysbench fix).
CACHE_DIR = Path(os.environ.get("BHL_CACHE_DIR", "/var/cache/blackhole-lab"))
NS_PREFIX = "bhl-"
ADDRESS_POOL = ipaddress.IPv4Network("198.18.0.0/15")
SLOT_PREFIXLEN = 21  # 8 /24 links per run, 64 runs side by side
MAX_SLOTS = 2 ** (SLOT_PREFIXLEN - ADDRESS_POOL.prefixlen)


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists (0 and negatives name process groups, never a run)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class Run:
    """One run's identity and scratch space; `release()` gives everything back."""

    run_id: str
    slot: int
    workdir: Path
    namespaces: list[str] = field(default_factory=list)

    @property
    def prefix(self) -> str:
        return f"{NS_PREFIX}{self.run_id}-"

    @property
    def subnet(self) -> ipaddress.IPv4Network:
        return list(ADDRESS_POOL.subnets(new_prefix=SLOT_PREFIXLEN))[self.slot]

    def link_subnet(self, index: int) -> ipaddress.IPv4Network:
        """The /24 of the index-th link of this run."""
        return list(self.subnet.subnets(new_prefix=24))[index]

    @property
    def state_file(self) -> Path:
        return STATE_DIR / f"run-{self.run_id}.json"

    def record(self) -> None:
        """Write what `lab clean` needs to remove this run if it is killed."""
        data = {
            "run_id": self.run_id,
            "pid": os.getpid(),
            "slot": self.slot,
            "workdir": str(self.workdir),
            "namespaces": self.namespaces,
        }
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        tmp.replace(self.state_file)

    def release(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            self.state_file.unlink()
        with contextlib.suppress(FileNotFoundError):
            _slot_file(self.slot).unlink()


def _slot_file(slot: int) -> Path:
    return STATE_DIR / "slots" / str(slot)


def _claim_slot(run_id: str) -> int:
    """The lowest slot no live run holds. The whole claim runs under an flock, so two runs
    starting at once cannot both read a half-written slot file as stale and share a slot."""
    slots = STATE_DIR / "slots"
    slots.mkdir(parents=True, exist_ok=True)
    with open(slots / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for slot in range(MAX_SLOTS):
            path = _slot_file(slot)
            try:
                owner = json.loads(path.read_text())
            except FileNotFoundError:
                owner = None
            except (OSError, ValueError):
                owner = {"pid": -1}  # unreadable: its writer died mid-write (under the lock)
            if owner is not None and owner.get("pid", -1) > 0 and pid_alive(owner["pid"]):
                continue  # taken by a live run
            path.write_text(json.dumps({"pid": os.getpid(), "run_id": run_id}))
            return slot
    raise LabError(
        f"all {MAX_SLOTS} address slots are in use by live runs",
        "wait for running trials to finish, or run 'lab clean' if they were killed",
    )


def new_run(scratch_root: Path | None = None) -> Run:
    """Claim a slot and a scratch dir for a new run."""
    if os.geteuid() != 0:
        raise LabError("the lab needs root (network namespaces, nftables)", "run it with sudo")
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    run_id = secrets.token_hex(3)
    slot = _claim_slot(run_id)
    workdir = Path(tempfile.mkdtemp(prefix=f"bhl-{run_id}-", dir=scratch_root))
    os.chmod(workdir, 0o755)
    run = Run(run_id=run_id, slot=slot, workdir=workdir)
    run.record()
    return run


def recorded_runs() -> list[dict[str, object]]:
    """State of every run that has not released itself (live or killed)."""
    runs = []
    for path in sorted(STATE_DIR.glob("run-*.json")):
        try:
            runs.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return runs


def live_runs(exclude_pids: tuple[int | None, ...] = ()) -> list[dict[str, object]]:
    """Recorded runs whose process is alive, less those of `exclude_pids`: what a leak check
    must leave to its owner (a user's run beside the tests)."""
    return [r for r in recorded_runs() if isinstance(r.get("pid"), int)
            and r["pid"] not in exclude_pids and pid_alive(r["pid"])]
