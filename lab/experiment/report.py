"""Reports over result directories: plots of a run, and run-vs-run comparison.

Reads only the result files (design.md's contract), so it works on any run, old or new, and on
runs copied from another machine.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from lab.errors import LabError


def _float(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v


def read_run(run_dir: Path) -> list[dict[str, str]]:
    path = run_dir / "summary.csv"
    if not path.exists():
        raise LabError(
            f"{run_dir} has no summary.csv",
            "give a results/<run-id> directory "
            "of a finished run (or finish it with lab run --resume)",
        )
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def read_csv(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def fault_time(trial_dir: Path) -> float | None:
    for e in read_csv(trial_dir / "events.csv"):
        if e["event"] == "fault":
            return _float(e["t_s"])
    return None


def plot_timelines(run_dir: Path, rows: list[dict[str, str]], out: Path) -> Path:
    """qps over time per trial, aligned on the fault instant, outage shaded (the article's
    picture), predicted end of the outage dashed."""
    n = len(rows)
    fig, axes = plt.subplots(n, 1, figsize=(10, 2.2 * n + 0.6), squeeze=False)
    for ax, row in zip(axes[:, 0], rows, strict=True):
        trial_dir = run_dir / row["trial"]
        tl = read_csv(trial_dir / "timeline.csv")
        fault = fault_time(trial_dir) or 0.0
        t = [float(s["t_s"]) - fault for s in tl]
        qps = [float(s["qps"]) for s in tl]
        ax.plot(t, qps, drawstyle="steps-pre", color="tab:blue", lw=1.2, label="qps")
        ax.axvline(0, color="red", lw=1, label="fault")
        measured = _float(row["measured_outage_s"])
        predicted = _float(row["predicted_outage_s"])
        if measured is not None:
            ax.axvspan(
                0, measured, color="red", alpha=0.15, label=f"outage {measured:.2f} s (measured)"
            )
        else:
            ax.axvspan(0, max(t, default=0), color="red", alpha=0.08, label="not recovered")
        if predicted is not None and predicted <= max(t, default=0) + 1:
            ax.axvline(
                predicted,
                color="black",
                ls="--",
                lw=1,
                label=f"model {predicted:.2f} s ({row['predicted_mechanism']})",
            )
        ax.set_title(f"{row['trial']}  [{row['lb']}, {row['fault']}]", fontsize=9, loc="left")
        ax.set_ylabel("qps")
        ax.set_xlim(min(t, default=-1), max(t, default=1))
        ax.set_ylim(bottom=0)  # an outage is qps 0: keep zero on the axis
        ax.legend(fontsize=7, loc="upper right")
    axes[-1, 0].set_xlabel("seconds from the fault")
    return save_figure(fig, out / "timelines.png")


def plot_predicted_vs_measured(rows: list[dict[str, str]], out: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 5.5))
    pts = [
        (_float(r["predicted_outage_s"]), _float(r["measured_outage_s"]), r["trial"]) for r in rows
    ]
    pts = [(p, m, n) for p, m, n in pts if p is not None and m is not None and p > 0 and m > 0]
    if pts:
        lo = min(min(p, m) for p, m, _ in pts) / 1.5
        hi = max(max(p, m) for p, m, _ in pts) * 1.5
        xs = [lo, hi]
        ax.plot(xs, xs, color="gray", lw=1, label="measured = model")
        ax.fill_between(
            xs,
            [max(0.95 * x, x - 0.5) for x in xs],
            [max(1.05 * x, x + 0.5) for x in xs],
            color="gray",
            alpha=0.2,
            label="±5 % or ±0.5 s",
        )
        for p, m, name in pts:
            ax.scatter([p], [m], s=25)
            ax.annotate(name, (p, m), fontsize=7, xytext=(4, 4), textcoords="offset points")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
    ax.set_xlabel("predicted outage (s)")
    ax.set_ylabel("measured outage (s)")
    ax.set_title("outage: model vs measurement")
    ax.legend(fontsize=8, loc="upper left")
    return save_figure(fig, out / "predicted_vs_measured.png")


def plot_trial(trial_dir: Path, row: dict[str, str]) -> Path:
    """One trial's evidence on one time axis: qps; the blackholed segment's retransmissions
    with their gaps (the exponential backoff); the client socket's retransmit counter and
    time left on its timer (what `ss -o` / `netstat -o` show)."""
    fig, (ax_q, ax_r, ax_s) = plt.subplots(3, 1, figsize=(10, 7.5), sharex=True)
    fault = fault_time(trial_dir)
    measured = _float(row.get("measured_outage_s"))
    _plot_qps(ax_q, trial_dir, row, measured)
    for ax in (ax_q, ax_r, ax_s):
        if fault is not None:
            ax.axvline(fault, color="red", lw=1)
            if measured is not None:
                ax.axvspan(fault, fault + measured, color="red", alpha=0.12)
    _plot_retransmits(ax_r, trial_dir)
    _plot_client_sockets(ax_s, trial_dir)
    return save_figure(fig, trial_dir / "timeline.png")


def _plot_qps(ax: Axes, trial_dir: Path, row: dict[str, str], measured: float | None) -> None:
    tl = read_csv(trial_dir / "timeline.csv")
    ax.plot(
        [float(s["t_s"]) for s in tl],
        [float(s["qps"]) for s in tl],
        drawstyle="steps-pre",
        lw=1.2,
        label="qps",
    )
    ax.set_ylabel("qps")
    ax.set_title(
        f"{row['trial']}: outage {_fmt_s(measured)} "
        f"(model {_fmt_s(_float(row.get('predicted_outage_s')))}, "
        f"{row.get('predicted_mechanism', '')})",
        fontsize=9,
        loc="left",
    )


def _plot_retransmits(ax: Axes, trial_dir: Path) -> None:
    """The client's outgoing retransmissions (retransmits.csv), each with its gap."""
    rtx = [
        r
        for r in read_csv(trial_dir / "retransmits.csv")
        if r.get("kind") in ("tlp", "rto", "fast") and r.get("dir", "out") == "out"
    ]
    for kind, marker in (("tlp", "^"), ("rto", "o"), ("fast", "x")):
        pts = [(float(r["t_s"]), _float(r["gap_s"]) or 0.0) for r in rtx if r["kind"] == kind]
        if pts:
            ax.scatter(*zip(*pts, strict=True), marker=marker, label=kind, s=22)
            for t, gap in pts:
                ax.annotate(
                    f"{gap:.2f}s", (t, gap), fontsize=6, xytext=(3, 3), textcoords="offset points"
                )
    if rtx:
        ax.set_yscale("log")
        ax.legend(fontsize=7, loc="upper left")
    ax.set_ylabel("retransmission gap (s)")


def _plot_client_sockets(ax: Axes, trial_dir: Path) -> None:
    """Per client connection (sockets.csv): its retransmit counter and its timer's time left."""
    socks = [r for r in read_csv(trial_dir / "sockets.csv") if r.get("state") != "none"]
    by_conn: dict[str, list[dict[str, str]]] = {}
    for r in socks:
        by_conn.setdefault(r["local"], []).append(r)
    for local, rows in by_conn.items():
        t = [float(r["t_s"]) for r in rows]
        ax.step(
            t, [_float(r["retrans"]) or 0 for r in rows], where="post", label=f"{local} retrans"
        )
        ax.plot(
            t,
            [_float(r["timer_left_s"]) or 0 for r in rows],
            ls=":",
            lw=1,
            label=f"{local} timer left (s)",
        )
    if by_conn:
        ax.legend(fontsize=6, loc="upper left")
    ax.set_ylabel("client socket")
    ax.set_xlabel("seconds from the trial start")


def save_figure(fig: Figure, path: Path, dpi: int = 110) -> Path:
    """Lay the figure out, write it to `path` and free it (pyplot keeps every open figure)."""
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def _fmt_s(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f} s"


def make_report(run_dir: Path) -> list[Path]:
    rows = read_run(run_dir)
    out = run_dir / "report"
    out.mkdir(exist_ok=True)
    paths = [plot_timelines(run_dir, rows, out), plot_predicted_vs_measured(rows, out)]
    paths += [plot_trial(run_dir / r["trial"], r) for r in rows]
    return paths


# --- comparison ------------------------------------------------------------------------------

COMPARED = ("measured_outage_s", "detect_s", "recover_s", "errors")


@dataclass(frozen=True)
class Change:
    trial: str
    metric: str
    a: float | None
    b: float | None
    regression: bool

    @property
    def delta(self) -> float | None:
        return None if self.a is None or self.b is None else self.b - self.a


def regressed(a: float | None, b: float | None, rel_tol: float, abs_tol: float) -> bool:
    """Worse = larger (outages, errors); not recovering where A recovered is worse too."""
    if b is None:
        return a is not None
    if a is None:
        return False
    return b > a + max(abs(a) * rel_tol, abs_tol)


def compare(
    run_a: Path,
    run_b: Path,
    metric: str = "measured_outage_s",
    rel_tol: float = 0.10,
    abs_tol: float = 0.5,
) -> tuple[list[Change], list[str]]:
    """Per trial present in both runs: each compared metric; only `metric` can regress."""
    if metric not in COMPARED:
        raise LabError(f"unknown metric {metric!r}", f"use one of {', '.join(COMPARED)}")
    a_rows = {r["trial"]: r for r in read_run(run_a)}
    b_rows = {r["trial"]: r for r in read_run(run_b)}
    if not set(a_rows) & set(b_rows):
        raise LabError(f"{run_a} and {run_b} share no trial, so there is nothing to compare",
                       "compare two runs of the same scenario")
    notes = [f"trial {t} only in {run_a}" for t in a_rows if t not in b_rows]
    notes += [f"trial {t} only in {run_b}" for t in b_rows if t not in a_rows]
    changes = []
    for trial in (t for t in a_rows if t in b_rows):
        for m in COMPARED:
            a, b = _float(a_rows[trial].get(m)), _float(b_rows[trial].get(m))
            changes.append(
                Change(trial, m, a, b, m == metric and regressed(a, b, rel_tol, abs_tol))
            )
    return changes, notes


def run_facts(run_dir: Path) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads((run_dir / "run.json").read_text())
        return data
    except (OSError, ValueError):
        return {}
