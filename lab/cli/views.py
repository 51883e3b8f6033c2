"""The tables `lab` prints (rich), apart from the commands that fill them.

rich is imported here, and this module only when a command prints a table, so `lab --help`,
`lab keys` and `lab completion` start without it.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from rich.markup import escape
from rich.table import Table

from lab.experiment.compare import COUNTS, Change, Comparison, Diff

if TYPE_CHECKING:  # the trial machinery and the host checks are not imported to draw a table
    from lab.experiment.trial import TrialStatus
    from lab.ops.doctor import Check


def fmt(x: Any, unit: str = "s") -> str:
    """A number with two decimals and its unit; "-" for nothing."""
    if x in (None, ""):
        return "-"
    try:
        return f"{float(x):.2f}{unit}"
    except (TypeError, ValueError):
        return str(x)


def _cell(text: Any) -> str:
    """A value as table text: never rich markup ("[3, 5]" stays as it is)."""
    return escape(str(text))


def _predicted(st: TrialStatus) -> str:
    if not st.mechanism:
        return "-"
    if st.predicted_s is None:
        return f"never ({st.mechanism})"
    return f"{st.predicted_s:.1f}s {st.mechanism}"


def eta(st: TrialStatus, now: float) -> str:
    """When the outage should end: the model's outage, capped by the deadline, counted from
    the fault; past it, the deadline's countdown."""
    if st.recovered_t is not None:
        return "recovered"
    if st.fault_t is None or not st.deadline_s:
        return "-"
    since = now - st.fault_t
    predicted = math.inf if st.predicted_s is None else st.predicted_s
    if predicted < st.deadline_s and since < predicted:
        return f"~{predicted - since:.0f}s"
    left = st.deadline_s - since
    return f"deadline in {left:.0f}s" if left > 0 else "deadline"


# the live view's groups of trial phases, in the order a capped view shows them
PHASE_GROUPS = ("running", "failed", "interrupted", "done", "pending")


def phase_group(phase: str) -> str:
    """pending, done (also "done (earlier run)"), failed, interrupted; any other phase of a
    trial (building, warming up, fault, outage, ...) is running."""
    if phase.startswith("done"):
        return "done"
    return phase if phase in PHASE_GROUPS else "running"


def visible(statuses: Mapping[str, TrialStatus], max_rows: int | None
            ) -> tuple[list[TrialStatus], Counter[str]]:
    """The trials a view of at most max_rows rows shows, and how many of each group it does
    not. All fit: the scenario's order. Not: running trials first, then failed, interrupted,
    done, pending (one pass over the trials, whatever their number)."""
    if max_rows is None or len(statuses) <= max_rows:
        return list(statuses.values()), Counter()
    groups: dict[str, list[TrialStatus]] = {g: [] for g in PHASE_GROUPS}
    for st in statuses.values():
        groups[phase_group(st.phase)].append(st)
    ordered = [st for g in PHASE_GROUPS for st in groups[g]]
    shown = ordered[:max(0, max_rows)]
    return shown, Counter(phase_group(st.phase) for st in ordered[len(shown):])


def _hidden_line(hidden: Counter[str]) -> str:
    counts = ", ".join(f"{hidden[g]} {g}" for g in PHASE_GROUPS if hidden[g])
    return f"... and {sum(hidden.values())} more trial(s) not shown: {counts}"


def progress_table(statuses: Mapping[str, TrialStatus], max_rows: int | None = None) -> Table:
    """The live view: per trial, its phase, qps, outage clock, what the model predicts, the
    deadline and when the outage should end. With max_rows, at most that many rows (one line
    each) and a caption counting the rest per group, so a redraw's cost does not grow with
    the number of trials."""
    shown, hidden = visible(statuses, max_rows)
    table = Table(title="blackhole-lab", expand=False,
                  caption=_hidden_line(hidden) if hidden else None)
    for col in ("trial", "phase", "elapsed", "qps", "outage clock", "predicted", "deadline",
                "ETA", "last report"):
        table.add_column(col, no_wrap=True, overflow="ellipsis")
    now = time.monotonic()
    for st in shown:
        elapsed = now - st.started if st.started else 0.0
        if st.fault_t is None:
            clock = "-"
        elif st.recovered_t is not None:
            clock = f"{st.recovered_t - st.fault_t:.2f}s (recovered)"
        else:
            clock = f"{now - st.fault_t:.1f}s"
        deadline = f"{st.deadline_s:g}s" if st.deadline_s else "-"
        table.add_row(_cell(st.name), st.phase, f"{elapsed:.0f}s", f"{st.qps:.0f}", clock,
                      _predicted(st), deadline, eta(st, now), _cell(st.last_line[:60]))
    return table


def summary_table(rows: Iterable[Mapping[str, Any]]) -> Table:
    table = Table(title="summary (outage = fault -> first successful transaction after it)")
    for col in ("trial", "lb", "fault", "predicted", "mechanism", "measured", "detect", "errors",
                "reconn", "verdict"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            _cell(r["trial"]), _cell(r["lb"]), _cell(r["fault"]), fmt(r["predicted_outage_s"]),
            _cell(r["predicted_mechanism"]), fmt(r["measured_outage_s"]), fmt(r["detect_s"]),
            _cell(r["errors"]), _cell(r["reconnects"]), _cell(r["verdict"]),
        )
    return table


def _metric(change: Change, x: float | None, signed: bool = False) -> str:
    """A metric's value: counts as integers, times with two decimals."""
    if x is None:
        return "-"
    sign = "+" if signed and x > 0 else ""
    if change.metric in COUNTS:
        return f"{sign}{int(x)}"
    return f"{sign}{x:.2f}" if change.metric.endswith("_s") else f"{sign}{x:g}"


def compare_table(title: str, comparison: Comparison) -> Table:
    table = Table(title=title)
    for col in ("trial", "metric", "A", "B", "delta", "change", ""):
        table.add_column(col, justify="right" if col in ("A", "B", "delta", "change") else "left")
    for c in comparison.changes:
        pct = "-" if c.percent is None else f"{c.percent:+.1f} %"
        table.add_row(_cell(c.trial), c.metric, _metric(c, c.a), _metric(c, c.b),
                      _metric(c, c.delta, signed=True), pct,
                      "[red]REGRESSION[/red]" if c.regression else "")
    return table


def _value(x: Any) -> str:
    return "unset" if x is None else str(x)


def diff_lines(comparison: Comparison) -> list[str]:
    """What differs in how the runs ran: run facts, then settings of every trial, then each
    trial's own; plain lines (no markup)."""
    def lines(where: str, diff: Diff) -> list[str]:
        return [f"  {where}{k}: {_value(a)} -> {_value(b)}" for k, (a, b) in diff.items()]
    out = lines("run: ", comparison.run) + lines("every trial: ", comparison.every_trial)
    for trial, diff in comparison.trials.items():
        out += lines(f"trial {trial}: ", diff)
    return ["what differs:", *out] if out else ["what differs: no setting, same scenario"]


def doctor_table(checks: Iterable[Check]) -> Table:
    """check, status, detail; a failing row's fix goes under its detail (a fix column would
    be empty on most rows and wrap every other column)."""
    table = Table(title="lab doctor")
    for col in ("check", "status", "detail"):
        table.add_column(col)
    for c in checks:
        status = "ok" if c.ok else ("missing" if c.required else "no")
        detail = _cell(c.detail)
        if c.fix and not c.ok:
            detail += f"\n[yellow]fix: {_cell(c.fix)}[/yellow]"
        table.add_row(_cell(c.name), status, detail)
    return table


def dry_run_table(plans: Iterable[Mapping[str, Any]]) -> Table:
    """Per trial: the model's outage and mechanism, the deadline, how long its load runs."""
    plans = list(plans)
    notes = any(p["note"] for p in plans)
    table = Table(title="dry run: what each trial should show (nothing was built)")
    for col in ("trial", "lb", "fault", "predicted", "mechanism", "deadline", "load runs",
                *(["note"] if notes else [])):
        table.add_column(col)
    for p in plans:
        predicted = "never" if p["predicted_outage_s"] is None else fmt(p["predicted_outage_s"])
        table.add_row(_cell(p["trial"]), _cell(p["lb"]), _cell(p["fault"]), predicted,
                      _cell(p["mechanism"]), f"{p['deadline_s']:g}s", f"{p['observed_s']:.0f}s",
                      *([_cell(p["note"])] if notes else []))
    return table


def scenarios_table(shipped: Iterable[Any]) -> Table:
    table = Table(title="scenarios that ship with the lab (lab run NAME)")
    for col in ("name", "trials", "description"):
        table.add_column(col)
    for s in shipped:
        table.add_row(_cell(s.name), str(s.trials), _cell(s.description))
    return table


def stacks_table(rows: Iterable[Mapping[str, Any]]) -> Table:
    """Each zoo stack's library keys, one section per stack: the option, or why not."""
    table = Table(title="client.* keys in each zoo stack (load.driver = \"zoo\")")
    for col in ("stack", "client key", "becomes in the library"):
        table.add_column(col)
    for r in rows:
        connect = r["default_connect_timeout_s"]
        first = f"{r['stack']}\n{r['language']}, {r['library']}\nconnect timeout unset: " + (
            f"{connect:g} s" if connect is not None else "none (the SYN retries)")
        for i, (key, becomes) in enumerate(r["keys"].items()):
            style = "dim" if str(becomes).startswith("cannot") else ""
            table.add_row(_cell(first) if i == 0 else "", f"client.{key}", _cell(becomes),
                          style=style)
        table.add_section()
    return table
