"""`lab report`: the report of a finished run, made from its result files only."""

from __future__ import annotations

from pathlib import Path

from lab.experiment import figures, html
from lab.experiment.rundata import read_run


def make_report(run_dir: Path) -> list[Path]:
    """report/index.html (the page to open and share) and the figures it shows: the outages
    first, then model vs measurement, the timelines, and each trial's timeline.png."""
    rows = read_run(run_dir)
    out = run_dir / "report"
    out.mkdir(exist_ok=True)
    paths = [figures.plot_outages(rows, out),
             figures.plot_predicted_vs_measured(rows, out),
             figures.plot_timelines(run_dir, rows, out)]
    paths += [figures.plot_trial(run_dir / r["trial"], r) for r in rows]
    return [html.write_index(run_dir, rows, out), *paths]
