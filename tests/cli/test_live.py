"""`lab run`'s live view (issue 15, item 4): one redraw path at a fixed rate, each redraw at
most the terminal's height in rows, whatever the number of trials."""

from __future__ import annotations

import io
import time

import pytest
from rich.console import Console
from rich.live import Live

from lab.cli.live import CHROME_LINES, LiveProgress
from lab.cli.views import phase_group, progress_table, visible
from lab.experiment.trial import TrialStatus


def statuses(n: int, running: int = 8, done: int = 10, failed: int = 2
             ) -> dict[str, TrialStatus]:
    """n trials: the first `done` done, then `failed` failed, `running` in their outage, the
    rest pending (as a matrix of n trials with --parallel `running` is, part-way)."""
    phases = ["done"] * done + ["failed"] * failed + ["outage"] * running
    now = time.monotonic()
    return {f"t{i:03}": TrialStatus(f"t{i:03}", phase=phases[i] if i < len(phases) else
                                    "pending", started=now - 5, fault_t=now - 2,
                                    deadline_s=30, predicted_s=13.4, mechanism="retries2")
            for i in range(n)}


def test_phases_group_into_what_a_capped_view_counts() -> None:
    assert [phase_group(p) for p in ("pending", "building", "warming up", "fault", "outage",
                                     "recovered", "tearing down", "done",
                                     "done (earlier run)", "failed", "interrupted")] == [
        "pending", "running", "running", "running", "running", "running", "running", "done",
        "done", "failed", "interrupted"]


def test_a_view_of_64_trials_draws_at_most_max_rows() -> None:
    many = statuses(64)
    table = progress_table(many, max_rows=20)
    assert table.row_count == 20
    shown, hidden = visible(many, 20)
    assert [phase_group(s.phase) for s in shown] == ["running"] * 8 + ["failed"] * 2 + \
        ["done"] * 10  # what is going on first, the pending ones are counted
    assert hidden == {"pending": 44}
    assert table.caption == "... and 44 more trial(s) not shown: 44 pending"
    assert progress_table(many, max_rows=1).row_count == 1


def test_a_view_that_fits_shows_every_trial_in_order_and_no_caption() -> None:
    few = statuses(5, running=2, done=1, failed=0)
    table = progress_table(few, max_rows=20)
    assert table.row_count == 5 and table.caption is None
    assert [s.name for s in visible(few, 20)[0]] == list(few)
    assert progress_table(statuses(64)).row_count == 64  # no cap: every trial (tests, JSON)


def run_view(n: int, seconds: float, rate_hz: float, height: int = 30
             ) -> tuple[LiveProgress, int]:
    """A LiveProgress on an in-memory terminal for `seconds`; (the view, Live's refreshes)."""
    console = Console(file=io.StringIO(), force_terminal=True, width=200, height=height)
    refreshes = 0
    real = Live.refresh

    def counted(self: Live) -> None:
        nonlocal refreshes
        refreshes += 1
        real(self)
    Live.refresh = counted  # type: ignore[method-assign]
    try:
        with LiveProgress(statuses(n), console, rate_hz=rate_hz) as view:
            time.sleep(seconds)
    finally:
        Live.refresh = real  # type: ignore[method-assign]
    return view, refreshes


@pytest.mark.parametrize("n", [4, 64, 1000])
def test_each_redraw_is_bounded_by_the_terminal_height(n: int) -> None:
    view, _ = run_view(n, 0.3, rate_hz=20, height=30)
    assert view.redraws >= 3
    assert view.most_rows <= 30 - CHROME_LINES
    assert view.most_rows == min(n, 30 - CHROME_LINES)


def test_redraws_per_second_do_not_depend_on_the_number_of_trials() -> None:
    """10 a second for 4 trials and for 1000; each is one refresh of rich's Live (its own
    refresh thread is off: one redraw path), plus the one Live.stop makes."""
    counts = {}
    for n in (4, 1000):
        view, refreshes = run_view(n, 1.0, rate_hz=10)
        counts[n] = view.redraws
        assert refreshes <= view.redraws + 1, (n, refreshes, view.redraws)
        assert 8 <= view.redraws <= 14, (n, view.redraws)  # 10, + the first and the last
    assert abs(counts[4] - counts[1000]) <= 2, counts
