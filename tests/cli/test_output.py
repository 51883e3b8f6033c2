"""Printing is best effort: a closed pipe or a stalled terminal never stops or slows the
caller (a driver's reader thread, lab.load.base), and --plain prints every interval asked."""

from __future__ import annotations

import io
import os
import threading

import pytest

from lab.cli.output import QUEUE_LINES, PlainPrinter


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def printed(every_s: float, arrivals: list[float]) -> list[str]:
    """The lines a printer prints for samples of trial t1 arriving at `arrivals`."""
    out, clock = io.StringIO(), Clock()
    printer = PlainPrinter(every_s, out, clock)
    for t in arrivals:
        clock.now = t
        printer(f"t1: [ {round(t)}s ] qps: 10")
    printer.close()
    return [line.split("[ ")[1].split("s ]")[0] for line in out.getvalue().splitlines()]


# samples arrive once a second, each a few tens of ms early or late (measured on a busy VM)
JITTERED = [0.0, 0.98, 2.01, 2.99, 4.03, 4.98, 6.0, 7.02, 7.97, 9.0]


def test_every_one_second_prints_every_sample() -> None:
    assert printed(1.0, JITTERED) == [str(round(t)) for t in JITTERED]


@pytest.mark.parametrize("every_s, expected", [(2.0, ["0", "2", "4", "6", "8"]),
                                               (3.0, ["0", "3", "6", "9"]),
                                               (0.0, [str(round(t)) for t in JITTERED])])
def test_every_n_seconds_prints_one_sample_in_n(every_s: float, expected: list[str]) -> None:
    assert printed(every_s, JITTERED) == expected


def test_each_trial_has_its_own_interval() -> None:
    out, clock = io.StringIO(), Clock()
    printer = PlainPrinter(5.0, out, clock)
    for name in ("a", "b", "a", "b"):
        printer(f"{name}: line")
    printer.close()
    assert out.getvalue().splitlines() == ["a: line", "b: line"]


def test_a_closed_pipe_is_dropped_not_raised() -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)  # `| head -2` has exited
    with os.fdopen(write_end, "w") as out:
        printer = PlainPrinter(0.0, out)
        for i in range(50):
            printer(f"t1: line {i}")  # never raises into the caller
        printer.close()
        assert not printer._thread.is_alive()


def test_a_stalled_terminal_never_blocks_the_caller() -> None:
    """Nobody reads the pipe: the printing thread blocks on it, the calls still return (a full
    queue drops lines and counts them) - the driver's records keep being read."""
    read_end, write_end = os.pipe()
    out = os.fdopen(write_end, "w")
    printer = PlainPrinter(0.0, out)
    line = "t1: " + "x" * 4096
    caller = threading.Thread(target=lambda: [printer(line) for _ in range(4 * QUEUE_LINES)])
    caller.start()
    caller.join(timeout=30)
    try:
        assert not caller.is_alive(), "a stalled terminal blocked the reader thread"
        assert printer.dropped > 0
    finally:
        os.close(read_end)  # the reader goes away: the printer's blocked write fails
        printer.close(timeout_s=5)
        out.close()
