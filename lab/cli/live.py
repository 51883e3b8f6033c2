"""`lab run`'s live progress view: one redraw path, at a fixed rate, of bounded cost.

rich's Live runs with auto_refresh off, so the only redraws are this view's timer thread's
(REFRESH_HZ a second, whatever the number of trials) and the final one on exit; a redraw builds
a table of at most the terminal's height in rows (lab.cli.views.progress_table: the running
trials first, the rest counted per phase in one caption line). (Before, Live's own refresh
thread redrew 4 times a second and a second thread replaced the table 4 times a second too:
two redraw paths, each drawing every trial.)
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

from rich.console import Console
from rich.live import Live

from lab.cli.views import progress_table

if TYPE_CHECKING:
    from lab.experiment.trial import TrialStatus

REFRESH_HZ = 4.0
# the table's lines besides its rows: title, top border, header, header rule, bottom border,
# the caption (up to two lines), and the line the cursor rests on
CHROME_LINES = 8


class LiveProgress:
    """`with LiveProgress(statuses, console): ...` draws statuses until the block ends."""

    def __init__(self, statuses: Mapping[str, TrialStatus], console: Console,
                 rate_hz: float = REFRESH_HZ) -> None:
        self.statuses = statuses
        self.console = console
        self.period_s = 1.0 / rate_hz
        self.redraws = 0
        self.most_rows = 0  # the most rows one redraw drew (tests bound it)
        self._done = threading.Event()
        self._live = Live(console=console, auto_refresh=False)
        self._thread = threading.Thread(target=self._loop, name="live-view", daemon=True)

    def max_rows(self) -> int:
        return max(1, self.console.size.height - CHROME_LINES)

    def redraw(self) -> None:
        table = progress_table(self.statuses, self.max_rows())
        self.most_rows = max(self.most_rows, table.row_count)
        self._live.update(table, refresh=True)
        self.redraws += 1

    def _loop(self) -> None:
        """Redraw every period_s on a fixed schedule; a redraw slower than that is followed
        by the next at once, never by a burst of the missed ones."""
        due = time.monotonic()
        while True:
            due = max(due + self.period_s, time.monotonic())
            if self._done.wait(max(0.0, due - time.monotonic())):
                return
            self.redraw()

    def __enter__(self) -> LiveProgress:
        self._live.start()
        self.redraw()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()
        try:
            self.redraw()  # the final state
        finally:
            self._live.stop()
