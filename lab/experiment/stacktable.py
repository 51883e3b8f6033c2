"""The client stacks side by side, from a finished run of zoo trials (scenarios/client-zoo.toml):
the README's table "stack | version | outage with defaults | the one setting that fixes it |
outage with it | reconnect while the new backend is down", as markdown.

Every figure is a measured outage from summary.csv with the model's prediction beside it; the
version is what the program itself printed (its VERSION line, events.csv). Nothing is typed
in: a stack with no such trial in the run shows "-".
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from lab.config.stacks import STACK_NAMES, STACKS
from lab.experiment.rundata import read_csv, read_run, to_float

HEADER = ("stack", "version", "outage with defaults", "the one setting that fixes it",
          "outage with it", "reconnect while the new backend is down")

Row = Mapping[str, str]


def _outage(row: Row | None) -> str:
    if row is None:
        return "-"
    measured, predicted = to_float(row["measured_outage_s"]), to_float(row["predicted_outage_s"])
    model = f"model {predicted:.2f} s" if predicted is not None else "model: never"
    if measured is None:
        return f"not recovered in {row['deadline_s']} s ({model})"
    return f"{measured:.2f} s ({model})"


def _version(run_dir: Path, rows: list[Row]) -> str:
    for row in rows:
        for ev in read_csv(run_dir / row["trial"] / "events.csv"):
            if ev["event"] == "version":
                return ev["detail"].split(": ", 1)[-1]
    return "-"


def _setting(stack: str, row: Row | None) -> str:
    if row is None:
        return "-"
    value = to_float(row["client.read_timeout_s"])
    option = STACKS[stack].options["read_timeout_s"].split(" (")[0]
    return f"`client.read_timeout_s = {value:g}` ({option})"


def _reconnect(stack: str, row: Row | None) -> str:
    if row is None:
        return "-"
    connect = to_float(row["client.connect_timeout_s"])
    lasts = (f"a connect attempt gives up after {connect:g} s (its connect timeout)"
             if connect is not None else "no connect timeout: an attempt lasts the kernel's "
             f"SYN retries (tcp_syn_retries={row['client.tcp_syn_retries'] or 6})")
    return (f"{_outage(row)}, the new backend up at {to_float(row['fault.failover_after_s']):g}"
            f" s: {lasts}")


def _pick(rows: list[Row]) -> tuple[Row | None, Row | None, Row | None]:
    """(defaults, fix, reconnect): switchover without / with a read timeout, and the trial
    whose new backend comes up only later."""
    switch = [r for r in rows if r["fault.kind"] == "switchover"]
    later = [r for r in rows if (to_float(r["fault.failover_after_s"]) or 0) > 0]
    return (next((r for r in switch if not r["client.read_timeout_s"]), None),
            next((r for r in switch if r["client.read_timeout_s"]), None),
            later[0] if later else None)


def stack_table(run_dir: Path) -> str:
    """The markdown table of the zoo trials in `run_dir` ("" when it has none)."""
    rows = [r for r in read_run(run_dir) if r.get("load.driver") == "zoo"]
    lines = []
    for stack in STACK_NAMES:
        mine = [r for r in rows if r["load.stack"] == stack]
        if not mine:
            continue
        defaults, fix, reconnect = _pick(mine)
        cells = (f"`{stack}`", _version(run_dir, mine), _outage(defaults), _setting(stack, fix),
                 _outage(fix), _reconnect(stack, reconnect))
        lines.append("| " + " | ".join(cells) + " |")
    if not lines:
        return ""
    head = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    return "\n".join(head + lines) + "\n"
