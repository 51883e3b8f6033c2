"""SnapshotLoop: same instant for every function, fixed grid, errors kept, writers closed."""

from __future__ import annotations

import time

from lab.capture.snapshots import SnapshotLoop


class Recorder:
    def __init__(self, fail: bool = False) -> None:
        self.calls: list[float] = []
        self.fail = fail
        self.closed = False

    def __call__(self, t_s: float) -> None:
        self.calls.append(t_s)
        if self.fail:
            raise RuntimeError("boom")

    def close(self) -> None:
        self.closed = True


def test_loop_ticks_all_functions_at_the_same_instants() -> None:
    a, b, bad = Recorder(), Recorder(), Recorder(fail=True)
    t0 = time.time()
    with SnapshotLoop([a, b, bad], 0.05, t0=t0) as loop:
        time.sleep(0.33)
    assert a.calls == b.calls == bad.calls == loop.ticks
    assert 7 <= len(loop.ticks) <= 10  # 0, 0.05 ... 0.30 + the final tick at stop()
    assert all(0 <= t < 1 for t in loop.ticks)
    steps = [y - x for x, y in zip(loop.ticks[:-2], loop.ticks[1:-1], strict=True)]
    assert all(0.03 < s < 0.08 for s in steps), steps
    assert len(loop.errors) == len(loop.ticks) and "boom" in loop.errors[0][1]
    assert a.closed and b.closed and bad.closed


def test_stop_is_idempotent_and_overrun_skips_ticks() -> None:
    def slow(_t: float) -> None:
        time.sleep(0.12)

    loop = SnapshotLoop([slow], 0.05)
    loop.start()
    time.sleep(0.3)
    loop.stop(final_tick=False)
    loop.stop()
    assert 2 <= len(loop.ticks) <= 4  # not 6: missed ticks are skipped, not bunched
