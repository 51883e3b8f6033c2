"""What a test's own lab runs left behind: namespaces and servers that exist now and did not
before, less what other live lab runs own (a user's run beside the suite is not a leak)."""

from __future__ import annotations

import os
import signal
import subprocess

from lab.net import runtime

SERVER_NAMES = ("mariadbd", "mysqld")


def snapshot() -> tuple[set[str], set[str]]:
    """The lab's namespaces and the server processes that exist now."""
    ns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    procs = subprocess.run(["pgrep", "-a", "-x", "|".join(SERVER_NAMES)], capture_output=True,
                           text=True).stdout
    return ({n.split()[0] for n in ns.splitlines() if n.startswith("bhl-")},
            set(procs.strip().splitlines()))


def leftovers(before: tuple[set[str], set[str]], mine: int | None = None) -> tuple[str, str]:
    """What exists now and did not before, less what other live runs own: so a user's own
    lab run beside the tests (its namespaces and servers, even ones started since `before`)
    is not taken for a leak. `mine`: the pid of a `lab` the test started. A server counts
    only if it is a lab run's (its files in a run's bhl-* scratch dir or in the lab's cache):
    another test's server, with files of its own elsewhere, is not this trial's leak."""
    ns, procs = snapshot()
    others = runtime.foreign_run_ids((os.getpid(), mine))  # any state dir, being built too
    prefixes = tuple(f"{runtime.NS_PREFIX}{r}-" for r in others)
    dirs = tuple(f"/{runtime.NS_PREFIX}{r}-" for r in others)  # scratch dirs are bhl-<id>-XXXX
    still_ns, still_procs = snapshot()  # what went meanwhile was removed by its owner
    labs = ("/bhl-", str(runtime.CACHE_DIR))
    return ("\n".join(sorted(n for n in (ns & still_ns) - before[0]
                             if not n.startswith(prefixes))),
            "\n".join(sorted(p for p in (procs & still_procs) - before[1]
                             if any(d in p for d in labs) and not any(d in p for d in dirs))))


def as_from_a_terminal() -> None:
    """SIGINT back to its default in the child, as Ctrl-C finds a foreground process: a
    launcher that ran the tests in the background (`cmd &` without job control) leaves it
    ignored, and Python keeps an ignored SIGINT (2026-12-03: lab ran on, exit 0)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def as_from_a_background_script() -> None:
    """SIGINT ignored in the child, as a shell without job control starts `cmd &`: the lab
    must still stop on it (it installs its own handler)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
