"""`lab report`: the report of a finished run, made from its result files only."""

from __future__ import annotations

from pathlib import Path

from lab.experiment import figures, html
from lab.experiment.rundata import read_run
from lab.experiment.stacktable import stack_table


def make_report(run_dir: Path) -> list[Path]:
    """report/index.html (the page to open and share) and the figures it shows: the outages
    first, then model vs measurement, the timelines, and each trial's timeline.png; with zoo
    trials, stacks.md (the client stacks side by side)."""
    rows = read_run(run_dir)
    out = run_dir / "report"
    out.mkdir(exist_ok=True)
    paths = [figures.plot_outages(rows, out),
             figures.plot_predicted_vs_measured(rows, out),
             figures.plot_timelines(run_dir, rows, out)]
    paths += [figures.plot_trial(run_dir / r["trial"], r) for r in rows]
    table = stack_table(run_dir)
    if table:  # zoo trials: the stacks side by side, markdown to paste (the README's table)
        (out / "stacks.md").write_text(table)
        paths.append(out / "stacks.md")
    return [html.write_index(run_dir, rows, out), *paths]
