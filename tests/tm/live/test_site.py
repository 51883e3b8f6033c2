"""The site's worker budget: FIFO slots at the budget's rate, and exact CPU accounting."""

from __future__ import annotations

import itertools
import time

from lab.tm.live.site import Budget, burn


def test_budget_queues_requests_at_its_rate() -> None:
    budget = Budget(100.0)  # 100 CPU ms per second: a 10 ms request takes a 0.1 s slot
    now = time.monotonic()
    starts = [budget.reserve(10.0) for _ in range(5)]
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert starts[0] - now < 0.01
    assert all(abs(g - 0.1) < 1e-6 for g in gaps)
    budget.settle(10.0, 30.0)  # the last one used 20 ms more than it reserved: queue moves
    assert abs(budget.reserve(1.0) - (starts[-1] + 0.3)) < 1e-6
    budget.set_rate(50.0)
    assert budget.reserve(5.0) > starts[-1] + 0.3


def test_allowed_cpu_accrues_at_the_rate_in_force() -> None:
    budget = Budget(200.0)
    time.sleep(0.1)
    budget.set_rate(100.0)
    time.sleep(0.1)
    allowed = budget.allowed_ms()
    assert 28 < allowed < 34  # 0.1 s * 200 + 0.1 s * 100


def test_burn_spends_thread_cpu_time() -> None:
    t0 = time.thread_time()
    burn(5.0)
    used = (time.thread_time() - t0) * 1000
    assert 5.0 <= used < 8.0
