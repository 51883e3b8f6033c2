"""The figures of a run's report (PNG, matplotlib without a display).

Each reads only result files (through lab.experiment.rundata), so a report can be drawn for
any finished run, also one copied from another machine. The pure helpers at the top decide
where things go (the tolerance band, 0 s on a log axis, labels that do not overlap) and are
tested on their numbers; the plot functions only draw what they decide.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

from lab import model
from lab.experiment.rundata import fault_time, read_csv, to_float

OK_COLOR = "tab:blue"
MISMATCH_COLOR = "tab:red"
BAND_COLOR = "gray"
LABEL_FONT = 6.5  # points, the size of the gap labels
MARKER_PT = 2.9  # half a scatter marker (s=22), points: what a label must not cover
TWIN_LEGEND_X = 1.12  # axes fraction: a legend right of a twin axis' ticks and label
Row = dict[str, str]


# --- pure helpers: where things go -----------------------------------------------------------


def log_floor(values: Iterable[float | None]) -> float:
    """Where 0 s sits on a log axis: a power of ten at least half a decade below the smallest
    positive value (0.01 s if there is none). A drain's 0 s prediction is drawn there,
    labelled "0", instead of vanishing off the axis."""
    pos = [v for v in values if v is not None and v > 0]
    if not pos:
        return 0.01
    return float(10 ** math.floor(math.log10(min(pos)) - 0.5))


def tolerance_edges(predicted: float, floor: float) -> tuple[float, float]:
    """The measured outages the verdict calls "ok" for `predicted`, the lower edge clipped at
    the axis floor (a log axis has no 0)."""
    tol = model.tolerance(predicted)
    return max(predicted - tol, floor), predicted + tol


def tolerance_band(lo: float, hi: float, floor: float,
                   n: int = 400) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The "ok" band around measured = predicted, on a dense log grid from lo to hi: for each
    x, x - tolerance(x) .. x + tolerance(x), the lower edge clipped at `floor`. Dense, because
    fill_between joins its points with straight lines: on log-log axes two points make a band
    that no longer follows the rule."""
    xs = np.geomspace(lo, hi, n)
    edges = np.array([tolerance_edges(float(x), floor) for x in xs])
    return xs, edges[:, 0], edges[:, 1]


def in_band(band: tuple[np.ndarray, np.ndarray, np.ndarray], predicted: float,
            measured: float) -> bool:
    """Whether (predicted, measured) lies inside the drawn band (interpolated on its grid)."""
    xs, lower, upper = band
    x = max(predicted, float(xs[0]))
    return bool(np.interp(x, xs, lower) <= measured <= np.interp(x, xs, upper))


Box = tuple[float, float, float, float]  # x0, y0, x1, y1


def place_labels(anchors: Sequence[tuple[float, float]], widths: Sequence[float],
                 height: float, levels: int = 3, blocked: Sequence[Box] = ()) -> list[int | None]:
    """A level for each label so that no two overlap, nor cover a `blocked` box (the points
    themselves): label i is a box `widths[i]` wide and `height` high whose lower left corner
    is anchors[i] raised by level x height (display units, y up). Each takes the lowest free
    level; None when all are taken (the label is not drawn)."""
    placed: list[Box] = list(blocked)
    out: list[int | None] = []
    for (x, y), w in zip(anchors, widths, strict=True):
        level = next((k for k in range(levels)
                      if not any(_overlap((x, y + k * height, x + w, y + (k + 1) * height), b)
                                 for b in placed)), None)
        if level is not None:
            placed.append((x, y + level * height, x + w, y + (level + 1) * height))
        out.append(level)
    return out


def _overlap(a: Box, b: Box) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def shared_range(spans: Iterable[tuple[float, float]]) -> tuple[float, float]:
    """One x range that holds every trial's (first, last) sample, seconds from its fault (at
    least a second wide: a range of one instant has no scale)."""
    spans = list(spans)
    if not spans:
        return -1.0, 1.0
    lo, hi = min(a for a, _ in spans), max(b for _, b in spans)
    return (lo, hi) if hi - lo >= 1.0 else (lo - 0.5, hi + 0.5)


def _is_mismatch(row: Row) -> bool:
    return row.get("verdict", "").startswith("MISMATCH")


def _color(row: Row) -> str:
    return MISMATCH_COLOR if _is_mismatch(row) else OK_COLOR


# --- the question itself: outage per setting, model beside measurement -----------------------


def plot_outages(rows: list[Row], out: Path) -> Path:
    """One bar per trial: the measured outage (hatched to the deadline when the service did
    not recover), the model's outage as a diamond with its tolerance band around it, the
    model's mechanism in the label and the verdict on the right; log x, 0 s at the floor."""
    n = max(len(rows), 1)
    fig, ax = plt.subplots(figsize=(11, 0.62 * n + 1.9))
    values = [to_float(r.get(k)) for r in rows
              for k in ("measured_outage_s", "predicted_outage_s")]
    floor = log_floor(values)
    left = floor / 1.6
    for y, row in enumerate(rows):
        _outage_bar(ax, y, row, floor, left)
    hi = max([v for v in values if v is not None]
             + [to_float(r.get("deadline_s")) or 0.0 for r in rows] + [floor * 10])
    ax.set_xscale("log")
    ax.set_xlim(left, hi * 1.6)
    _zero_tick(ax, floor, "x")
    ax.set_yticks(range(len(rows)),
                  [f"{r['trial']}\nmodel: {r.get('predicted_mechanism') or '-'}" for r in rows],
                  fontsize=8)
    ax.set_ylim(n - 0.5, -0.5)  # first trial on top
    right = ax.twinx()
    right.set_ylim(ax.get_ylim())
    right.set_yticks(range(len(rows)), [_verdict_label(r) for r in rows], fontsize=7)
    for label, row in zip(right.get_yticklabels(), rows, strict=True):
        label.set_color(MISMATCH_COLOR if _is_mismatch(row) else "black")
    ax.set_xlabel("outage after the fault (s, log; 0 s at the left edge)")
    ax.set_title("outage per setting: measured (bar) vs model (diamond, tolerance band)",
                 fontsize=10, loc="left")
    fig.legend(handles=_outage_legend(), fontsize=7, loc="lower center", ncol=5, frameon=False)
    return save_figure(fig, out / "outages.png", rect=(0, 0.45 / fig.get_figheight(), 1, 1))


def _outage_bar(ax: Axes, y: int, row: Row, floor: float, left: float) -> None:
    measured = to_float(row.get("measured_outage_s"))
    predicted = to_float(row.get("predicted_outage_s"))
    if measured is not None:
        ax.barh(y, max(measured, floor) - left, left=left, height=0.5, color=_color(row),
                alpha=0.75, zorder=2)
    elif not row.get("verdict", "").startswith("no fault"):
        deadline = to_float(row.get("deadline_s")) or floor
        ax.barh(y, deadline - left, left=left, height=0.5, color="none", edgecolor=_color(row),
                hatch="//", lw=1, zorder=2)
    if predicted is None:  # "never": the right-hand label says so
        return
    lo, hi = tolerance_edges(predicted, floor)
    ax.fill_betweenx([y - 0.38, y + 0.38], lo, hi, color=BAND_COLOR, alpha=0.4, lw=0, zorder=1)
    ax.plot([max(predicted, floor)], [y], marker="D", color="black", ms=6, ls="none", zorder=3)


def _verdict_label(row: Row) -> str:
    measured = to_float(row.get("measured_outage_s"))
    predicted = to_float(row.get("predicted_outage_s"))
    verdict = row.get("verdict", "")
    word = "MISMATCH" if verdict.startswith("MISMATCH") else verdict.split(":")[0]
    if measured is None and not verdict.startswith("no fault"):
        got = f"not recovered in {to_float(row.get('deadline_s')) or 0:g} s"
    else:
        got = _fmt_s(measured)
    model_s = "never" if predicted is None else (
        f"{predicted:.2f} ± {model.tolerance(predicted):.2f} s")
    return f"{got} vs model {model_s}   {word}"


def _outage_legend() -> list[Artist]:
    return [
        Patch(color=OK_COLOR, alpha=0.75, label="measured, ok"),
        Patch(color=MISMATCH_COLOR, alpha=0.75, label="measured, MISMATCH"),
        Patch(facecolor="white", edgecolor="gray", hatch="//", label="not recovered (deadline)"),
        Line2D([], [], marker="D", color="black", ls="none", label="model"),
        Patch(color=BAND_COLOR, alpha=0.4, label="tolerance: ± max(5 %, 0.5 s)"),
    ]


def _zero_tick(ax: Axes, floor: float, axis: str) -> None:
    """Decade ticks, plus "0" at the floor where zero values are drawn."""
    top = (ax.get_xlim() if axis == "x" else ax.get_ylim())[1]
    first = round(math.log10(floor)) + 1
    decades = [10.0**k for k in range(first, math.floor(math.log10(top)) + 1)]
    labels = ["0", *(f"{d:g}" for d in decades)]
    if axis == "x":
        ax.set_xticks([floor, *decades], labels)
        ax.axvline(floor, color="gray", lw=0.6, ls=":")
    else:
        ax.set_yticks([floor, *decades], labels)
        ax.axhline(floor, color="gray", lw=0.6, ls=":")


# --- model vs measurement --------------------------------------------------------------------


def plot_predicted_vs_measured(rows: list[Row], out: Path) -> Path:
    """Each trial at (model, measured) on log-log axes, 0 s at the floor of both; the verdict's
    tolerance as the band around the diagonal; a trial that did not recover drawn at its
    deadline as a lower bound (^). A trial the model says never recovers has no x: left out."""
    fig, ax = plt.subplots(figsize=(6.5, 6))
    pts = _model_points(rows)
    values = [v for p, m, _, _ in pts for v in (p, m)]
    floor = log_floor(values)
    lo, hi = floor / 1.6, max([*values, floor * 10]) * 1.6
    xs, lower, upper = tolerance_band(floor, hi, floor)
    ax.plot(xs, xs, color="gray", lw=1, label="measured = model")
    ax.fill_between(xs, lower, upper, color=BAND_COLOR, alpha=0.25, lw=0,
                    label="tolerance: ± max(5 %, 0.5 s)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    _zero_tick(ax, floor, "x")
    _zero_tick(ax, floor, "y")
    for p, m, row, bound in pts:
        ax.scatter([max(p, floor)], [max(m, floor)], s=30, color=_color(row),
                   marker="^" if bound else "o", zorder=3)
    ax.scatter([], [], color=OK_COLOR, label="ok")
    ax.scatter([], [], color=MISMATCH_COLOR, label="MISMATCH")
    ax.scatter([], [], color="gray", marker="^", label="not recovered (at its deadline)")
    ax.set_xlabel("model's outage (s, log; 0 s at the floor)")
    ax.set_ylabel("measured outage (s, log)")
    ax.set_title("outage: model vs measurement", fontsize=10, loc="left")
    fig.legend(*ax.get_legend_handles_labels(), fontsize=7, loc="lower center", ncol=3,
               frameon=False)  # below the axes: no corner of the plot is safe to cover
    rect = (0, 0.5 / fig.get_figheight(), 1, 1)
    fig.set_dpi(110)
    fig.tight_layout(rect=rect)
    _name_points(ax, [(max(p, floor), max(m, floor)) for p, m, _, _ in pts],
                 [r["trial"] for _, _, r, _ in pts])
    return save_figure(fig, out / "predicted_vs_measured.png", rect=rect)


def _model_points(rows: list[Row]) -> list[tuple[float, float, Row, bool]]:
    """(model, measured, row, measured-is-a-lower-bound) of each trial with a model outage."""
    pts = []
    for r in rows:
        p = to_float(r.get("predicted_outage_s"))
        m = to_float(r.get("measured_outage_s"))
        if p is None or r.get("verdict", "").startswith("no fault"):
            continue
        if m is not None:
            pts.append((p, m, r, False))
        elif (deadline := to_float(r.get("deadline_s"))) is not None:
            pts.append((p, deadline, r, True))
    return pts


def _name_points(ax: Axes, pts: list[tuple[float, float]], names: list[str]) -> None:
    """Each point's name beside it, raised a line where it would cover another name."""
    fig = ax.get_figure()
    assert fig is not None
    to_pt = 72.0 / fig.dpi
    anchors = [(x * to_pt + 4, y * to_pt + 3) for x, y in ax.transData.transform(pts)] \
        if pts else []
    widths = [0.55 * 7 * len(n) for n in names]
    for (x, y), name, level in zip(pts, names, place_labels(anchors, widths, 9.0, 4),
                                   strict=True):
        if level is not None:
            ax.annotate(name, (x, y), fontsize=7, xytext=(4, 3 + 9 * level),
                        textcoords="offset points")


# --- every trial on one time axis ------------------------------------------------------------


def plot_timelines(run_dir: Path, rows: list[Row], out: Path) -> Path:
    """qps per trial, all on one x range (seconds from the fault), the outage shaded (the
    article's picture), the model's end of the outage dashed in its tolerance band; the
    numbers in each title, one legend for all above the plots (none covers a recovery)."""
    n = max(len(rows), 1)
    fig, axes = plt.subplots(n, 1, figsize=(10, 1.9 * n + 1.0), squeeze=False, sharex=True)
    timelines = [_qps_from_fault(run_dir / r["trial"]) for r in rows]
    x0, x1 = shared_range((t[0], t[-1]) for t, _ in timelines if t)
    for ax, row, (t, qps) in zip(axes[:, 0], rows, timelines, strict=True):
        ax.plot(t, qps, drawstyle="steps-pre", color=OK_COLOR, lw=1.2)
        _mark_outage(ax, row, x1)
        ax.set_title(f"{row['trial']}  [{row.get('lb', '')}, {row.get('fault', '')}]: "
                     f"{_fmt_outage(row)}, model {_fmt_model(row)}; {row.get('verdict', '')}",
                     fontsize=8.5, loc="left", color=_color(row))
        ax.set_ylabel("qps")
        ax.set_ylim(bottom=0)  # an outage is qps 0: keep zero on the axis
    axes[-1, 0].set_xlim(x0, x1)
    axes[-1, 0].set_xlabel("seconds from the fault")
    fig.legend(handles=_timeline_legend(), fontsize=7, loc="upper center", ncol=5,
               frameon=False)
    return save_figure(fig, out / "timelines.png",
                       rect=(0, 0, 1, 1 - 0.3 / fig.get_figheight()))


def _qps_from_fault(trial_dir: Path) -> tuple[list[float], list[float]]:
    tl = read_csv(trial_dir / "timeline.csv")
    fault = fault_time(trial_dir) or 0.0
    return [float(s["t_s"]) - fault for s in tl], [float(s["qps"]) for s in tl]


def _mark_outage(ax: Axes, row: Row, end: float) -> None:
    """Fault at 0, the measured outage shaded (to the deadline, or `end`, if not recovered),
    the model's outage dashed with its tolerance band."""
    ax.axvline(0, color="red", lw=1)
    measured = to_float(row.get("measured_outage_s"))
    predicted = to_float(row.get("predicted_outage_s"))
    if measured is not None:
        ax.axvspan(0, measured, color="red", alpha=0.15, lw=0)
    elif not row.get("verdict", "").startswith("no fault"):
        deadline = to_float(row.get("deadline_s"))
        ax.axvspan(0, end if deadline is None else min(deadline, end), color="red", alpha=0.07,
                   lw=0, hatch="//")
    if predicted is not None:
        lo, hi = tolerance_edges(predicted, 0.0)
        ax.axvspan(lo, hi, color=BAND_COLOR, alpha=0.3, lw=0)
        ax.axvline(predicted, color="black", ls="--", lw=1)


def _timeline_legend() -> list[Artist]:
    return [
        Line2D([], [], color=OK_COLOR, lw=1.2, label="qps"),
        Line2D([], [], color="red", lw=1, label="fault"),
        Patch(color="red", alpha=0.15, label="measured outage (hatched: not recovered)"),
        Line2D([], [], color="black", ls="--", lw=1, label="model's outage"),
        Patch(color=BAND_COLOR, alpha=0.3, label="tolerance"),
    ]


def _fmt_outage(row: Row) -> str:
    measured = to_float(row.get("measured_outage_s"))
    if measured is None:
        return f"not recovered in {to_float(row.get('deadline_s')) or 0:g} s"
    return f"outage {_fmt_s(measured)}"


def _fmt_model(row: Row) -> str:
    predicted = to_float(row.get("predicted_outage_s"))
    what = "never" if predicted is None else _fmt_s(predicted)
    return f"{what} ({row.get('predicted_mechanism') or '-'})"


# --- one trial's evidence --------------------------------------------------------------------


def plot_trial(trial_dir: Path, row: Row) -> Path:
    """One trial's evidence on one time axis (seconds from the fault), each on its own scale:
    qps; the p95 latency (in-flight requests counted by their age); the blackholed segment's
    retransmissions with their gaps (the exponential backoff); the client socket's retransmit
    counter and RTO timer; its keepalive timer and probes (what `ss -o` / `netstat -o` show)."""
    fig, axes = plt.subplots(5, 1, figsize=(10, 11), sharex=True,
                             gridspec_kw={"height_ratios": [1, 1, 1.2, 1, 0.8]})
    ax_q, ax_l, ax_r, ax_s, ax_k = axes
    fault = fault_time(trial_dir)
    shift = fault or 0.0
    measured = to_float(row.get("measured_outage_s"))
    timeline = read_csv(trial_dir / "timeline.csv")
    end = max((float(s["t_s"]) - shift for s in timeline), default=0.0)
    deadline = to_float(row.get("deadline_s"))
    age_until = None if fault is None else (
        measured if measured is not None else min(end, deadline or end))
    _plot_qps(ax_q, timeline, shift, row)
    _plot_latency(ax_l, timeline, shift, age_until)
    socks = _socket_rows(trial_dir)
    _plot_rto_state(ax_s, socks, shift)
    _plot_keepalive(ax_k, socks, shift)
    for ax in axes:
        if fault is not None:
            _mark_outage(ax, row, end)
    ax_k.set_xlabel("seconds from the fault" if fault is not None
                    else "seconds from the trial start (no fault)")
    fig.set_dpi(110)
    rtx = _plot_retransmits(ax_r, trial_dir, shift)
    fig.tight_layout()
    _label_gaps(ax_r, rtx)
    return save_figure(fig, trial_dir / "timeline.png")


def _plot_qps(ax: Axes, timeline: list[Row], shift: float, row: Row) -> None:
    ax.plot([float(s["t_s"]) - shift for s in timeline], [float(s["qps"]) for s in timeline],
            drawstyle="steps-pre", lw=1.2, color=OK_COLOR, label="qps")
    ax.set_ylabel("qps")
    ax.set_ylim(bottom=0)
    ax.set_title(f"{row['trial']}: {_fmt_outage(row)}, model {_fmt_model(row)}\n"
                 f"{row.get('verdict', '')}  (fault: red; model: dashed, in its tolerance)",
                 fontsize=8.5, loc="left", color=_color(row))
    _legend_outside(ax)


def _plot_latency(ax: Axes, timeline: list[Row], shift: float, age_until: float | None) -> None:
    """lat_p95_ms per second on a log scale (0, a second without one in an older run, is a
    gap, not a line across the outage), and the time since the fault up to `age_until`: a
    stalled request's age follows it."""
    t = [float(s["t_s"]) - shift for s in timeline]
    lat = [v if (v := to_float(s.get("lat_p95_ms"))) is not None and v > 0 else math.nan
           for s in timeline]
    shown = [v for v in lat if not math.isnan(v)]
    if shown:
        ax.plot(t, lat, drawstyle="steps-pre", color="tab:purple", lw=1.2, label="lat p95 (ms)")
        _plain_log_y(ax, shown)
    if age_until is not None and age_until > 0 and shown:
        since = np.linspace(min(0.05, age_until), age_until, 50)
        ax.plot(since, since * 1000, color="gray", ls=":", lw=1, label="time since the fault")
    ax.set_ylabel("latency p95 (ms)")
    _legend_outside(ax)


def _plot_retransmits(ax: Axes, trial_dir: Path, shift: float) -> list[tuple[float, float]]:
    """The client's outgoing retransmissions (retransmits.csv) at (time, gap since the one
    before), by kind; returns the points for their labels."""
    rtx = [r for r in read_csv(trial_dir / "retransmits.csv")
           if r.get("kind") in ("tlp", "rto", "fast") and r.get("dir", "out") == "out"]
    pts_all: list[tuple[float, float]] = []
    for kind, marker in (("tlp", "^"), ("rto", "o"), ("fast", "x")):
        pts = [(float(r["t_s"]) - shift, gap) for r in rtx
               if r["kind"] == kind and (gap := to_float(r["gap_s"])) is not None and gap > 0]
        if pts:
            ax.scatter(*zip(*pts, strict=True), marker=marker, label=kind, s=22, zorder=3)
            pts_all += pts
    if pts_all:
        _plain_log_y(ax, [g for _, g in pts_all])
        top = max(g for _, g in pts_all)
        ax.set_ylim(min(g for _, g in pts_all) / 2, top * 3)  # room for the labels above
    else:
        _no_data(ax, "no retransmission captured")
    ax.set_ylabel("retransmission gap (s)")
    _legend_outside(ax)
    return sorted(pts_all)


def _label_gaps(ax: Axes, pts: list[tuple[float, float]]) -> None:
    """Each retransmission's gap beside it, raised where it would cover another label and
    left out where there is no room (the point and the axis still show it)."""
    if not pts:
        return
    fig = ax.get_figure()
    assert fig is not None
    to_pt = 72.0 / fig.dpi
    texts = [f"{gap:.2f}s" for _, gap in pts]
    at = [(x * to_pt, y * to_pt) for x, y in ax.transData.transform(pts)]
    markers = [(x - MARKER_PT, y - MARKER_PT, x + MARKER_PT, y + MARKER_PT) for x, y in at]
    height = LABEL_FONT * 1.25
    levels = place_labels([(x + 3, y + 3) for x, y in at],
                          [0.6 * LABEL_FONT * len(t) for t in texts], height, 3, markers)
    for (t, gap), text, level in zip(pts, texts, levels, strict=True):
        if level is not None:
            ax.annotate(text, (t, gap), fontsize=LABEL_FONT, xytext=(3, 3 + height * level),
                        textcoords="offset points")


def _socket_rows(trial_dir: Path) -> dict[str, list[Row]]:
    """sockets.csv per client connection (its local address), in time order."""
    by_conn: dict[str, list[Row]] = {}
    for r in read_csv(trial_dir / "sockets.csv"):
        if r.get("state") not in ("none", "", None) and r.get("local"):
            by_conn.setdefault(r["local"], []).append(r)
    return by_conn


def _plot_rto_state(ax: Axes, by_conn: dict[str, list[Row]], shift: float) -> None:
    """Per connection: its retransmit counter (left, a count) and, on the right in seconds,
    its RTO and the time left on the retransmission timer while it is armed ("on")."""
    right = ax.twinx()
    for i, (local, rows) in enumerate(by_conn.items()):
        color = f"C{i % 10}"
        t = [float(r["t_s"]) - shift for r in rows]
        ax.step(t, [to_float(r.get("retrans")) or 0 for r in rows], where="post", color=color,
                lw=1.4, label=f"{local} retrans")
        right.plot(t, [_seconds(r.get("rto_ms"), 1000) for r in rows], color=color, ls="--",
                   lw=0.8, label=f"{local} rto (s)")
        right.plot(t, [_timer_left(r, "on") for r in rows], color=color, ls=":", lw=1,
                   marker=".", ms=3, label=f"{local} RTO timer left (s)")
    if not by_conn:
        _no_data(ax, "no socket snapshots (capture off)")
    ax.set_ylabel("retransmits")
    top = max((to_float(r.get("retrans")) or 0 for rows in by_conn.values() for r in rows),
              default=0)
    ax.set_ylim(0, max(top, 1) * 1.15)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    right.set_ylim(bottom=0)
    right.set_ylabel("RTO timer (s)")
    _legend_outside(ax, right, offset=TWIN_LEGEND_X)


def _plot_keepalive(ax: Axes, by_conn: dict[str, list[Row]], shift: float) -> None:
    """Per connection: the time left on its keepalive timer (hours by default, so on its own
    scale) and the keepalive probes sent (right)."""
    right = ax.twinx()
    armed = False
    for i, (local, rows) in enumerate(by_conn.items()):
        color = f"C{i % 10}"
        t = [float(r["t_s"]) - shift for r in rows]
        left = [_timer_left(r, "keepalive") for r in rows]
        armed = armed or any(not math.isnan(v) for v in left)
        ax.plot(t, left, color=color, lw=1, marker=".", ms=3, label=f"{local} keepalive left")
        if any(r.get("timer") == "keepalive" and (to_float(r.get("probes")) or 0) for r in rows):
            right.step(t, [to_float(r.get("probes")) or 0 for r in rows], where="post",
                       color=color, ls="--", lw=1, label=f"{local} probes")
    if by_conn and not armed:
        _no_data(ax, "no keepalive timer armed")
    ax.set_ylabel("keepalive\ntimer left (s)")
    if right.get_legend_handles_labels()[0]:
        right.set_ylabel("keepalive probes")
        right.set_ylim(bottom=0)
    else:
        right.set_axis_off()  # no probe sent: no scale to read
    _legend_outside(ax, right, offset=TWIN_LEGEND_X)


def _timer_left(row: Row, timer: str) -> float:
    """timer_left_s while `timer` is the armed one, else NaN (a gap in the line)."""
    value = to_float(row.get("timer_left_s"))
    return value if row.get("timer") == timer and value is not None else math.nan


def _seconds(value: str | None, per_s: float) -> float:
    v = to_float(value)
    return math.nan if v is None else v / per_s


def _plain_log_y(ax: Axes, values: list[float]) -> None:
    """A log y axis labelled 0.2, 1, 10 (not 2 x 10^-1): gaps and latencies read as numbers;
    1-2-5 steps when the values span little more than a decade, else decades."""
    ax.set_yscale("log")
    narrow = max(values) < 30 * min(values)
    ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0) if narrow else (1.0,)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def _no_data(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", fontsize=8,
            color="gray")


def _legend_outside(ax: Axes, *more: Axes, offset: float = 1.01) -> None:
    """The legend right of the axes (it never covers the data); `more` twins' entries too."""
    handles, labels = ax.get_legend_handles_labels()
    for other in more:
        h, lab = other.get_legend_handles_labels()
        handles += h
        labels += lab
    if handles:
        ax.legend(handles, labels, fontsize=6.5, loc="upper left",
                  bbox_to_anchor=(offset, 1.0), borderaxespad=0, frameon=False)


# --- files -----------------------------------------------------------------------------------


def save_figure(fig: Figure, path: Path, dpi: int = 110,
                rect: tuple[float, float, float, float] | None = None) -> Path:
    """Lay the figure out (inside `rect`, leaving room for a figure legend), write it to `path`
    and free it (pyplot keeps every open figure)."""
    fig.set_dpi(dpi)  # lay out at the dpi it is written with (text widths differ)
    fig.tight_layout(rect=rect)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def _fmt_s(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f} s"
