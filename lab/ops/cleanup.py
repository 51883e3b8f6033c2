"""`lab clean`: remove what killed runs left behind, and only that.

A run records its namespaces and scratch dir in STATE_DIR before creating them (lab.net.runtime),
so a kill -9 at any point leaves a record. Leftovers are: the namespaces of runs whose process
is gone (with the servers running in them), their scratch dirs and slots, and any `bhl-`
namespace no live run claims; for the docker provider, the containers labelled with a run
that is gone and a private dockerd no live process holds
(lab.backends.docker.engine.clean). A user's
own containers, images and networks are never touched.
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

from pyroute2 import netns

from lab.backends.docker import engine as docker_engine
from lab.images import docker as docker_image
from lab.net.runtime import NS_PREFIX, STATE_DIR, pid_alive, recorded_runs
from lab.net.topology import remove_namespace


def clean(include_live: bool = False) -> list[str]:
    """Remove leftovers; returns one line per thing removed."""
    removed: list[str] = []
    # containers first: their engine stops them cleanly before their namespaces go
    removed += docker_engine.clean(include_live)
    removed += docker_image.clean()
    live_namespaces: set[str] = set()
    for run in recorded_runs():
        pid = int(run.get("pid", -1))  # type: ignore[call-overload]
        namespaces = [str(n) for n in run.get("namespaces", [])]  # type: ignore[attr-defined]
        if pid_alive(pid) and not include_live:
            live_namespaces.update(namespaces)
            continue
        for ns in namespaces:
            if ns in netns.listnetns():
                remove_namespace(ns)
                removed.append(f"namespace {ns} (run {run['run_id']}, pid {pid} gone)")
        workdir = Path(str(run.get("workdir", "")))
        if workdir.name.startswith(NS_PREFIX) and workdir.exists():
            shutil.rmtree(workdir, ignore_errors=True)
            removed.append(f"scratch dir {workdir}")
        with contextlib.suppress(FileNotFoundError):
            (STATE_DIR / f"run-{run['run_id']}.json").unlink()
        with contextlib.suppress(FileNotFoundError):
            (STATE_DIR / "slots" / str(run["slot"])).unlink()
    for ns in netns.listnetns():
        if ns.startswith(NS_PREFIX) and ns not in live_namespaces:
            remove_namespace(ns)
            removed.append(f"namespace {ns} (no live run claims it)")
    return removed
