"""`lab run --shard I/N`: a deterministic 1/N of a scenario's trials, for a matrix that
outgrows one machine (N machines or pods each run one shard; `lab merge` joins their run dirs).

I is 1-based (1..N: "shard 1 of 2"); Kubernetes' JOB_COMPLETION_INDEX is 0-based, so an
Indexed Job passes `--shard $((JOB_COMPLETION_INDEX + 1))/N` (docs/sharding.md).

The split depends on the scenario's expanded trial list alone, never on the host: every trial
gets a cost, the length of its load as the model predicts it (fault time + the outage, capped
by the deadline, + after_s; `lab run --dry-run`'s "load runs") plus a fixed build and warm-up
allowance, computed with the engine as written (`auto` is costed as nft, whatever this host
would pick). Then the longest trial first goes to the shard with the least cost so far (ties:
the lower trial index, the lower shard), so a 900 s trial does not share a shard with the
other long ones while short ones pile up elsewhere. Costs are whole deciseconds, so the sums
are exact integers and two machines cannot split differently by a rounding. Each shard runs
its trials in the scenario's order. A shard's run.json records the split (index, count,
method, the scenario's whole trial list), which `lab merge` checks.
"""

from __future__ import annotations

import heapq
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from lab.config.settings import TrialSettings
from lab.errors import LabError

METHOD = "longest-predicted-first/v1"  # recorded: a split made otherwise is not merged blindly
# what a trial takes beyond its load: namespaces, servers, the driver's connect (roughly)
BUILD_S = 5.0
SHARD_FIX = "write --shard I/N with 1 <= I <= N, e.g. --shard 1/2 (I is 1-based)"
_FORM = re.compile(r"\s*(\d+)\s*/\s*(\d+)\s*")
MAX_COUNT = 10_000  # as lab.config.scenario.MAX_TRIALS: more shards than trials is no use


@dataclass(frozen=True)
class Shard:
    """Shard `index` (1-based) of `count`."""

    index: int
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def select(self, trials: Sequence[TrialSettings]) -> list[TrialSettings]:
        """This shard's trials, in the scenario's order."""
        mine = set(assign(trials, self.count)[self.index - 1])
        return [t for i, t in enumerate(trials) if i in mine]

    def record(self, trials: Sequence[TrialSettings]) -> dict[str, Any]:
        """run.json's "shard": what `lab merge` checks a set of shards against."""
        return {"index": self.index, "count": self.count, "method": METHOD,
                "scenario_trials": [t.name for t in trials]}


def parse(text: str) -> Shard:
    """"I/N" -> Shard(I, N); anything else is one LabError line."""
    match = _FORM.fullmatch(text)
    if match is None:
        raise LabError(f"--shard {text!r} is not I/N", SHARD_FIX)
    index, count = int(match[1]), int(match[2])
    if not 1 <= count <= MAX_COUNT:
        raise LabError(f"--shard {text}: the number of shards must be 1..{MAX_COUNT}",
                       SHARD_FIX)
    if index == 0:
        raise LabError(f"--shard {text}: shards are numbered from 1 (1..{count}); from a "
                       "0-based index such as JOB_COMPLETION_INDEX, add 1", SHARD_FIX)
    if index > count:
        raise LabError(f"--shard {text}: there is no shard {index} of {count} (I is "
                       f"1..{count})", SHARD_FIX)
    return Shard(index, count)


def cost_ds(trial: TrialSettings) -> int:
    """A trial's predicted length in whole deciseconds (host-independent, see the module)."""
    from lab.experiment.dryrun import load_length_s
    return round(10 * (load_length_s(trial, trial.lb.engine) + BUILD_S))


def assign(trials: Sequence[TrialSettings], count: int) -> list[list[int]]:
    """The trial indices of each of `count` shards (each list ascending)."""
    costs = [cost_ds(t) for t in trials]
    order = sorted(range(len(trials)), key=lambda i: (-costs[i], i))
    loads = [(0, s) for s in range(count)]  # (cost so far, shard): a heap
    shards: list[list[int]] = [[] for _ in range(count)]
    for i in order:
        load, s = heapq.heappop(loads)
        shards[s].append(i)
        heapq.heappush(loads, (load + costs[i], s))
    return [sorted(s) for s in shards]
