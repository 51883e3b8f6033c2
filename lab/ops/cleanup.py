"""`lab clean`: remove what killed runs left behind, and only that.

A run records its namespaces and scratch dir in STATE_DIR before creating them, and holds its
claim (lab.net.runtime) from before its first step until after its last. Leftovers are: the
namespaces of runs that are gone (with the servers running in them), their scratch dirs and
slots, and any `bhl-` namespace whose run is gone, recorded here or not; for the docker
provider, the containers labelled with a run that is gone and a private dockerd no live
process holds (lab.backends.docker.engine.clean). A user's own containers, images and
networks are never touched.

Why nothing live is ever removed, whatever BHL_STATE_DIR says:
- a run is judged by its claim, which is the same for every state dir, and every lab
  namespace names its run (`bhl-<run_id>-<host>`), so a live run of another state dir, a run
  still being built and the doctor's netem probe (a run too) are all spared;
- while clean removes a dead run's leftovers it holds that run's claim itself, so no new run
  can take the id (and make namespaces of that prefix) meanwhile;
- namespaces are listed *before* the records are read: a run records before it creates, so a
  namespace in the list belongs to a record already written, even for an older lab judged
  by its pid; one whose record appeared since is left for the next clean.
`--all` (include_live) removes live runs' namespaces too.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path

from pyroute2 import netns

from lab.errors import LabError
from lab.images import docker as docker_image
from lab.net import runtime
from lab.net.runtime import NS_PREFIX, Claim
from lab.net.topology import remove_namespace


def clean(include_live: bool = False) -> list[str]:
    """Remove leftovers; returns one line per thing removed."""
    removed: list[str] = []
    # containers first: their engine stops them cleanly before their namespaces go
    removed += _clean_docker(include_live)
    removed += docker_image.clean()
    return removed + clean_runs(include_live)


def _clean_docker(include_live: bool) -> list[str]:
    """The lab's dockerd and containers; without the docker SDK (an optional extra) no run
    of this install could have started them."""
    try:
        from lab.backends.docker import engine as docker_engine
    except ModuleNotFoundError as exc:
        if exc.name != "docker":
            raise
        return []
    return docker_engine.clean(include_live)


def lab_namespaces() -> set[str]:
    return {ns for ns in netns.listnetns() if ns.startswith(NS_PREFIX)}


def _refuse_inside_a_lab_namespace() -> None:
    """Claims are visible only in the network namespace they were made in (the host's): from
    inside a lab namespace every run would look dead."""
    here = runtime.netns_id()
    for ns in lab_namespaces():
        with contextlib.suppress(OSError):
            if os.stat(f"/run/netns/{ns}").st_ino == here:
                raise LabError(f"lab clean runs inside the lab namespace {ns}",
                               "run it from the host's network namespace")


@contextlib.contextmanager
def _gone(run_id: str, record: Mapping[str, object] | None, include_live: bool
          ) -> Iterator[bool]:
    """Whether run `run_id` is gone (or `include_live`), holding its claim meanwhile so no
    new run takes the id while its leftovers are removed. A record an older lab (or another
    network namespace) made is judged by its pid."""
    claim = Claim.take(run_id) if runtime.is_run_id(run_id) else None
    try:
        if include_live:
            yield True
        elif record is not None and record.get("netns") != runtime.netns_id():
            yield not runtime.record_alive(record)
        else:
            yield claim is not None
    finally:
        if claim is not None:
            claim.close()


def _remove(names: set[str], why: str) -> list[str]:
    removed = []
    now = set(netns.listnetns())
    for ns in sorted(names & now):
        remove_namespace(ns)
        removed.append(f"namespace {ns} ({why})")
    return removed


def _clean_record(record: Mapping[str, object], present: set[str], include_live: bool
                  ) -> list[str]:
    """A recorded run's namespaces, scratch dir, record and slot, if the run is gone."""
    run_id = str(record.get("run_id", ""))
    prefix = f"{NS_PREFIX}{run_id}-"
    with _gone(run_id, record, include_live) as gone:
        if not gone:
            return []
        listed = {str(n) for n in record.get("namespaces", [])}  # type: ignore[attr-defined]
        # only its own prefix: a record never makes clean remove another run's namespace
        ours = {n for n in listed | present if n.startswith(prefix)}
        removed = _remove(ours, f"run {run_id}, pid {record.get('pid')} gone")
        workdir = Path(str(record.get("workdir", "")))
        if workdir.name.startswith(NS_PREFIX) and workdir.exists():
            shutil.rmtree(workdir, ignore_errors=True)
            removed.append(f"scratch dir {workdir}")
        runtime.forget(record)
    return removed


def _clean_unrecorded(run_id: str | None, names: set[str], include_live: bool) -> list[str]:
    """`bhl-` namespaces no record here names: removed if their run is gone (one of another
    state dir is judged by its claim all the same). A name no run can have made is removed."""
    if run_id is None:
        return _remove(names, "no run can claim it")
    with _gone(run_id, None, include_live) as gone:
        if not gone or (runtime.STATE_DIR / f"run-{run_id}.json").exists():
            return []  # live, or recorded since the list was taken: the next clean judges it
        return _remove(names, f"run {run_id} gone, no record in {runtime.STATE_DIR}")


def clean_runs(include_live: bool = False) -> list[str]:
    """The lab.net part of `lab clean`: namespaces, scratch dirs, records and slots of runs
    that are gone."""
    _refuse_inside_a_lab_namespace()
    present = lab_namespaces()  # before the records: see the module's docstring
    removed: list[str] = []
    recorded: set[str] = set()
    for record in runtime.recorded_runs():
        recorded.add(str(record.get("run_id", "")))
        removed += _clean_record(record, present, include_live)
    unrecorded: dict[str | None, set[str]] = {}
    for ns in present:
        run_id = runtime.run_id_of(ns)
        if run_id not in recorded:
            unrecorded.setdefault(run_id, set()).add(ns)
    for run_id, names in sorted(unrecorded.items(), key=lambda kv: str(kv[0])):
        removed += _clean_unrecorded(run_id, names, include_live)
    return removed
