"""Run identity: a unique short prefix, a private address slot, a scratch dir, a state file,
and a claim that tells everyone the run is alive.

Every run (one trial) claims a *slot*: a /21 of the RFC 2544 benchmarking range 198.18.0.0/15,
which no real network routes, so trials can run side by side without address clashes and a
packet that escaped the lab would be recognisable at once. Slots are small files under
STATE_DIR/slots, read and written under an flock; the record of a run (run-<id>.json) lists
what `lab clean` must remove if the run is killed, written before anything it names exists.

Liveness is a kernel-held *claim*, not a pid: each run binds the abstract unix socket
`\\0blackhole-lab/run/<run_id>` (CLAIM_PREFIX) for its whole life, from before its slot, scratch
dir and namespaces exist until after they are gone. Why:
- the kernel frees the name when the process dies (kill -9 included), so a recycled pid can
  never make a dead run look alive, and a run being built is alive from its first step;
- the name does not depend on STATE_DIR: `BHL_STATE_DIR=/tmp/other lab clean` still sees the
  runs of every other state dir, and every lab namespace is named `bhl-<run_id>-<host>`
  (lab.net.topology), so the owner of any namespace can be asked, recorded or not;
- Python sockets are close-on-exec, so a server the run started (an orphan after a kill -9)
  does not keep the claim: its namespace is a leftover, as it should be;
- binding the name is also a lock: `lab clean` holds a dead run's name while it removes the
  run's leftovers, so no new run can take that id meanwhile (and new_run skips a held id, so
  two live runs never share a prefix).
Abstract sockets belong to a network namespace: claims are made and checked in the host's
(where `lab` runs; a record keeps the namespace it was made in). A record without one (an
older lab) or from another namespace falls back to its pid.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import ipaddress
import json
import os
import re
import secrets
import shutil
import socket
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from lab.errors import LabError

STATE_DIR = Path(os.environ.get("BHL_STATE_DIR", "/run/blackhole-lab"))
# Built once per machine and reused by every run (MariaDB data templates, the sysbench fix).
CACHE_DIR = Path(os.environ.get("BHL_CACHE_DIR", "/var/cache/blackhole-lab"))
NS_PREFIX = "bhl-"
CLAIM_PREFIX = "blackhole-lab/run/"  # + run_id: the abstract socket name of a live run
ADDRESS_POOL = ipaddress.IPv4Network("198.18.0.0/15")
SLOT_PREFIXLEN = 21  # 8 /24 links per run, 64 runs side by side
MAX_SLOTS = 2 ** (SLOT_PREFIXLEN - ADDRESS_POOL.prefixlen)
_RUN_ID = re.compile(r"[0-9a-f]{1,32}")  # secrets.token_hex; short enough for a socket name


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


def netns_id() -> int:
    """This thread's network namespace (its inode): where its claims are visible."""
    return os.stat("/proc/thread-self/ns/net").st_ino


class Claim:
    """A run's liveness, held by the kernel: the bound abstract socket CLAIM_PREFIX + run_id.

    Only bound, never listening: nobody can connect to it or queue data on it."""

    def __init__(self, run_id: str, sock: socket.socket) -> None:
        self.run_id = run_id
        self.netns = netns_id()
        self._sock: socket.socket | None = sock

    @classmethod
    def take(cls, run_id: str) -> Claim | None:
        """The claim of `run_id`, or None while a live process (this one included) holds it."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # close-on-exec
        try:
            sock.bind(f"\0{CLAIM_PREFIX}{run_id}")
        except OSError as exc:
            sock.close()
            if exc.errno == errno.EADDRINUSE:
                return None
            raise
        return cls(run_id, sock)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _write_private(path: Path, text: str) -> None:
    """Write a state file only root can read (0600): it names pids and scratch dirs that
    root's `lab clean` kills and deletes."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with open(fd, "w") as f:
        os.fchmod(fd, 0o600)  # an existing file keeps its mode through O_CREAT
        f.write(text)


def ensure_state_dir() -> Path:
    """STATE_DIR, mode 0700: what is in it steers root's `lab clean` (a forged record's
    scratch dir would be rm -rf'd, its pid's namespace spared), so no one else may write it."""
    STATE_DIR.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(STATE_DIR, 0o700)
    return STATE_DIR


@dataclass
class Run:
    """One run's identity and scratch space; `release()` gives everything back."""

    run_id: str
    slot: int
    workdir: Path
    namespaces: list[str] = field(default_factory=list)
    claim: Claim | None = field(default=None, repr=False, compare=False)

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
            "netns": self.claim.netns if self.claim is not None else None,
            "slot": self.slot,
            "workdir": str(self.workdir),
            "namespaces": self.namespaces,
        }
        tmp = self.state_file.with_suffix(".tmp")
        _write_private(tmp, json.dumps(data))
        tmp.replace(self.state_file)

    def release(self) -> None:
        """Scratch dir, record and slot go first, the claim last: until then this run is
        alive for everyone, and a kill -9 halfway leaves a record for clean."""
        shutil.rmtree(self.workdir, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            self.state_file.unlink()
        release_slot(self.slot, self.run_id)
        if self.claim is not None:
            self.claim.close()


def _slot_file(slot: int) -> Path:
    return STATE_DIR / "slots" / str(slot)


@contextlib.contextmanager
def _slots_locked() -> Iterator[Path]:
    """The slots folder under its flock: every read-modify-write of a slot file is in here."""
    slots = STATE_DIR / "slots"
    slots.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(slots / ".lock", os.O_WRONLY | os.O_CREAT, 0o600)
    with open(fd, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield slots


def _slot_owner(slot: int) -> dict[str, object] | None:
    try:
        owner = json.loads(_slot_file(slot).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {"pid": -1}  # unreadable: its writer died mid-write (under the lock)
    return owner if isinstance(owner, dict) else {"pid": -1}


def _claim_slot(run_id: str) -> int:
    """The lowest slot no live run holds. The whole claim runs under an flock, so two runs
    starting at once cannot both read a half-written slot file as stale and share a slot."""
    with _slots_locked():
        claimed = claimed_run_ids()
        for slot in range(MAX_SLOTS):
            owner = _slot_owner(slot)
            if owner is not None and record_alive(owner, claimed):
                continue  # taken by a live run
            _write_private(_slot_file(slot), json.dumps(
                {"pid": os.getpid(), "run_id": run_id, "netns": netns_id()}))
            return slot
    raise LabError(
        f"all {MAX_SLOTS} address slots are in use by live runs",
        "wait for running trials to finish, or run 'lab clean' if they were killed",
    )


def release_slot(slot: object, run_id: object) -> None:
    """Free `slot` if it is still `run_id`'s: a dead run's slot may be another run's by now."""
    if not isinstance(slot, int) or not (STATE_DIR / "slots").is_dir():
        return
    with _slots_locked():
        owner = _slot_owner(slot)
        if owner is not None and owner.get("run_id") in (run_id, None):
            with contextlib.suppress(FileNotFoundError):
                _slot_file(slot).unlink()


def _new_claim() -> Claim:
    """A fresh run id, claimed: an id a live run holds is skipped, so two live runs never
    share a namespace prefix."""
    for _ in range(100):
        claim = Claim.take(secrets.token_hex(3))
        if claim is not None:
            return claim
    raise LabError("no free run id after 100 tries", "run 'lab clean', then try again")


def new_run(scratch_root: Path | None = None) -> Run:
    """Claim an id, a slot and a scratch dir for a new run.

    The scratch dir is 0700 (mkdtemp's mode): only root may read the run's configs and
    sockets. A server that runs as another user needs a subdir of its own made for it."""
    if os.geteuid() != 0:
        raise LabError("the lab needs root (network namespaces, nftables)", "run it with sudo")
    ensure_state_dir()
    claim = _new_claim()
    try:
        slot = _claim_slot(claim.run_id)
        workdir = Path(tempfile.mkdtemp(prefix=f"{NS_PREFIX}{claim.run_id}-", dir=scratch_root))
    except BaseException:
        claim.close()  # a slot it wrote is free again with it
        raise
    run = Run(run_id=claim.run_id, slot=slot, workdir=workdir, claim=claim)
    run.record()
    return run


def is_run_id(text: str) -> bool:
    """Whether `text` can be a run's id (and so the name of a claim)."""
    return _RUN_ID.fullmatch(text) is not None


def run_id_of(namespace: str) -> str | None:
    """The run id in a lab namespace's name (`bhl-<run_id>-<host>`), None for a name no run
    can have made (nor claimed)."""
    if not namespace.startswith(NS_PREFIX):
        return None
    run_id = namespace.removeprefix(NS_PREFIX).partition("-")[0]
    return run_id if is_run_id(run_id) else None


def claimed_run_ids() -> dict[str, int]:
    """{run_id: socket inode} of every claim held now in this network namespace, whatever
    state dir its run uses: read from the kernel's table of unix sockets, changing nothing."""
    marker = f"@{CLAIM_PREFIX}"
    claimed = {}
    with open("/proc/thread-self/net/unix") as table:
        next(table)  # the header
        for line in table:
            fields = line.split()
            if len(fields) >= 8 and fields[7].startswith(marker):
                claimed[fields[7].removeprefix(marker)] = int(fields[6])
    return claimed


def _socket_inodes(pid: int) -> set[int]:
    """Inodes of the sockets process `pid` has open (none if it is gone)."""
    inodes = set()
    with contextlib.suppress(FileNotFoundError, PermissionError, ProcessLookupError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:["):
                    inodes.add(int(link[8:-1]))
    return inodes


def live_run_ids(exclude_pids: Iterable[int | None] = ()) -> set[str]:
    """Ids of the runs alive now (any state dir), less those `exclude_pids` hold."""
    theirs: set[int] = set()
    for pid in exclude_pids:
        if pid:
            theirs |= _socket_inodes(pid)
    return {run_id for run_id, inode in claimed_run_ids().items() if inode not in theirs}


def record_alive(record: Mapping[str, object], claimed: Mapping[str, int] | None = None
                 ) -> bool:
    """Whether the run of a record (a run or slot file) is alive: by its claim when the
    record was made in this network namespace, else (an older lab, another namespace) by its
    pid. `claimed`: claimed_run_ids(), when already read."""
    run_id, pid = record.get("run_id"), record.get("pid")
    if record.get("netns") == netns_id() and isinstance(run_id, str):
        return run_id in (claimed_run_ids() if claimed is None else claimed)
    return isinstance(pid, int) and pid_alive(pid)


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
    """Recorded runs (of STATE_DIR) that are alive, less those of `exclude_pids`: what a leak
    check must leave to its owner (a user's run beside the tests)."""
    claimed = claimed_run_ids()
    return [r for r in recorded_runs()
            if r.get("pid") not in exclude_pids and record_alive(r, claimed)]


def foreign_run_ids(own_pids: Iterable[int | None]) -> set[str]:
    """Ids of runs that are not `own_pids`' to answer for: alive in another process (any
    state dir: a user's `lab run`, a `lab tm live`, a doctor's probe, one still being built),
    or recorded in STATE_DIR by another pid (a user's run killed meanwhile). What a leak
    check of a test that owns `own_pids` must not count."""
    own = tuple(own_pids)
    recorded = {str(r.get("run_id")) for r in recorded_runs() if r.get("pid") not in own}
    return live_run_ids(own) | recorded


def forget(record: Mapping[str, object]) -> None:
    """Drop a gone run's record and its slot (if the slot is still that run's)."""
    with contextlib.suppress(FileNotFoundError):
        (STATE_DIR / f"run-{record.get('run_id')}.json").unlink()
    release_slot(record.get("slot"), record.get("run_id"))
