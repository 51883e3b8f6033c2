"""The figures of a run's report (PNG, matplotlib without a display).

Each reads only result files, like lab.experiment.report.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from lab.experiment.rundata import fault_time, read_csv, to_float


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
        measured = to_float(row["measured_outage_s"])
        predicted = to_float(row["predicted_outage_s"])
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
        (to_float(r["predicted_outage_s"]), to_float(r["measured_outage_s"]), r["trial"])
        for r in rows
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
    measured = to_float(row.get("measured_outage_s"))
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
        f"(model {_fmt_s(to_float(row.get('predicted_outage_s')))}, "
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
        pts = [(float(r["t_s"]), to_float(r["gap_s"]) or 0.0) for r in rtx if r["kind"] == kind]
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
            t, [to_float(r["retrans"]) or 0 for r in rows], where="post", label=f"{local} retrans"
        )
        ax.plot(
            t,
            [to_float(r["timer_left_s"]) or 0 for r in rows],
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


