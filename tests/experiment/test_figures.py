"""The report's figures: the helpers that place things (on their numbers), the PNGs drawn from
result files, and one real blackholed trial whose latency must grow with the outage."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lab import model
from lab.config import scenario
from lab.experiment import figures
from lab.experiment.figures import (
    in_band,
    log_floor,
    place_labels,
    shared_range,
    tolerance_band,
    tolerance_edges,
)
from lab.experiment.matrix import MatrixRun
from lab.experiment.rundata import fault_time, read_csv, read_run

# --- the helpers ------------------------------------------------------------------------------


def test_band_leaves_a_mismatch_outside_and_follows_the_verdict() -> None:
    band = tolerance_band(0.01, 100.0, 0.01)
    assert not in_band(band, 13.43, 30.0)  # the MISMATCH the old two-point band covered
    assert in_band(band, 13.43, 13.6)
    xs, lower, upper = band
    assert len(xs) >= 100 and np.all(lower <= xs) and np.all(xs <= upper)
    assert np.interp(13.43, xs, lower) == pytest.approx(13.43 - 0.6715, abs=0.01)  # x - tol
    assert np.interp(13.43, xs, upper) == pytest.approx(13.43 + 0.6715, abs=0.01)
    assert np.all(lower[xs < 0.5] == 0.01)  # x - 0.5 s is below the floor: clipped there
    # the drawn band says what the verdict says, except within 1 % of its edge
    for p in np.geomspace(0.02, 90.0, 40):
        tol = model.tolerance(float(p))
        for m in np.geomspace(0.01, 100.0, 60):
            if abs(abs(m - p) - tol) > 0.01 * tol:
                assert in_band(band, float(p), float(m)) == (abs(m - p) <= tol), (p, m)


def test_a_zero_prediction_sits_on_the_floor_with_its_half_second() -> None:
    floor = log_floor([0.0, 0.05, 13.43, None])
    assert floor == 0.01  # a power of ten, half a decade or more below 0.05
    assert log_floor([]) == log_floor([0.0]) == 0.01
    for smallest in (0.003, 0.3, 2.0, 40.0):
        f = log_floor([smallest, 100.0])
        assert f <= smallest / 10**0.5 and f > smallest / 100
        assert np.log10(f) == round(np.log10(f))
    assert tolerance_edges(0.0, floor) == (floor, 0.5)
    band = tolerance_band(floor, 50.0, floor)
    assert in_band(band, 0.0, 0.3) and not in_band(band, 0.0, 0.8)


def test_labels_that_would_overlap_are_raised_or_left_out() -> None:
    # two gaps at one instant, one far away, three more at one instant with two levels
    anchors = [(100.0, 50.0), (100.0, 50.0), (400.0, 50.0), (10.0, 0.0), (12.0, 0.0),
               (14.0, 0.0)]
    levels = place_labels(anchors, [30.0] * 6, 8.0, levels=2)
    assert levels == [0, 1, 0, 0, 1, None]
    assert place_labels([(0.0, 0.0), (31.0, 0.0)], [30.0, 30.0], 8.0) == [0, 0]  # side by side
    assert place_labels([(0.0, 0.0), (0.0, 9.0)], [30.0, 30.0], 8.0) == [0, 0]  # one above
    assert place_labels([], [], 8.0) == []
    # a point in the way (the next marker) pushes a label up too
    assert place_labels([(0.0, 0.0)], [30.0], 8.0, blocked=[(20.0, 2.0, 26.0, 8.0)]) == [1]


def test_one_x_range_for_every_trial() -> None:
    assert shared_range([(-5.0, 18.0), (-4.5, 4.2), (-6.0, 9.0)]) == (-6.0, 18.0)
    assert shared_range([]) == (-1.0, 1.0)
    assert shared_range([(2.0, 2.0)]) == (1.5, 2.5)


def test_the_verdict_label_names_a_mismatch_and_a_trial_that_did_not_recover() -> None:
    bad = {"measured_outage_s": "30.0", "predicted_outage_s": "13.428",
           "verdict": "MISMATCH: measured 30.00s vs model 13.43s"}
    assert figures._verdict_label(bad) == "30.00 s vs model 13.43 ± 0.67 s   MISMATCH"
    stuck = {"measured_outage_s": "", "predicted_outage_s": "", "deadline_s": "40.0",
             "verdict": "ok: not recovered by the deadline, as predicted"}
    assert figures._verdict_label(stuck) == "not recovered in 40 s vs model never   ok"


# --- the PNGs from result files -------------------------------------------------------------------

SUMMARY = ["trial", "lb", "fault", "deadline_s", "predicted_outage_s", "predicted_mechanism",
           "measured_outage_s", "verdict"]
TRIALS = [  # trial, predicted, mechanism, measured, verdict
    ("retries2", "13.428", "retries2", "13.622", "ok: within 0.67s of the model"),
    ("retries2-slow", "13.428", "retries2", "30.0", "MISMATCH: measured 30.00s vs model 13.43s"),
    ("drain", "0.0", "drain_reset", "0.31", "ok: within 0.50s of the model"),
    ("keepalive", "", "never", "", "ok: not recovered by the deadline, as predicted"),
    ("user-timeout", "3.2", "user_timeout", "",
     "MISMATCH: not recovered within 40s, model said 3.20s"),
]


def write_rows(path: Path, header: list[str], rows: list[list[object]]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def write_trial_files(trial_dir: Path, fault: float, outage: float) -> None:
    """timeline, events, sockets and retransmits of a blackhole of `outage` s at `fault`."""
    trial_dir.mkdir(parents=True)
    seconds = [fault - 4 + 0.36 + k for k in range(int(outage) + 9)]
    write_rows(trial_dir / "timeline.csv", ["t_s", "qps", "lat_p95_ms"], [
        [t, 0.0 if fault < t < fault + outage else 4000.0,
         1000 * (t - fault) if fault < t < fault + outage else 7.5] for t in seconds])
    write_rows(trial_dir / "events.csv", ["t_s", "event", "detail"],
               [[0.06, "load_start", ""], [fault, "fault", "switchover"]])
    gaps = [0.208, 0.208, 0.444, 0.828, 1.664, 3.488]
    times = np.cumsum(gaps) + fault
    write_rows(trial_dir / "retransmits.csv", ["flow", "seq", "t_s", "kind", "gap_s", "dir"], [
        ["a>b", 1, t, "tlp" if i == 0 else "rto", g, "out"]
        for i, (t, g) in enumerate(zip(times, gaps, strict=True))])
    socks = []
    for k in range(int(2 * (outage + 8))):
        t = fault - 4 + 0.5 * k
        stuck = fault < t < fault + outage
        socks.append([t, "10.0.0.1:5000", "10.0.0.2:3306", "ESTAB",
                      "on" if stuck else "keepalive", 1.5 if stuck else 7140,
                      int(t - fault) if stuck else 0, 0, 204 * 2 ** min(int(t - fault), 5)])
    write_rows(trial_dir / "sockets.csv", ["t_s", "local", "peer", "state", "timer",
                                           "timer_left_s", "retrans", "probes", "rto_ms"], socks)


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    rows = []
    for name, predicted, mechanism, measured, verdict in TRIALS:
        rows.append([name, "nft", "switchover", "40.0", predicted, mechanism, measured, verdict])
        write_trial_files(tmp_path / name, 5.02, float(measured or 40.0))
    write_rows(tmp_path / "summary.csv", SUMMARY, rows)
    return tmp_path


def assert_png(path: Path, min_size: tuple[int, int] = (400, 250)) -> None:
    assert path.exists()
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        assert img.format == "PNG", img.format
        assert img.size[0] >= min_size[0] and img.size[1] >= min_size[1], img.size
        pixels = np.asarray(img.convert("RGB")).reshape(-1, 3)
        assert len(np.unique(pixels, axis=0)) > 10  # something drawn on it


def test_every_figure_renders_from_result_files(run_dir: Path) -> None:
    rows = read_run(run_dir)
    out = run_dir / "report"
    out.mkdir()
    assert_png(figures.plot_outages(rows, out))
    assert_png(figures.plot_predicted_vs_measured(rows, out))
    assert_png(figures.plot_timelines(run_dir, rows, out))
    for row in rows:
        assert_png(figures.plot_trial(run_dir / row["trial"], row), (1000, 1000))


def test_figures_of_an_empty_or_captureless_trial_still_render(tmp_path: Path) -> None:
    trial = tmp_path / "bare"
    trial.mkdir()
    write_rows(trial / "timeline.csv", ["t_s", "qps", "lat_p95_ms"], [[1.0, 10.0, 0.0]])
    row = {"trial": "bare", "predicted_outage_s": "", "measured_outage_s": "",
           "verdict": "no fault injected"}
    assert_png(figures.plot_trial(trial, row))
    assert_png(figures.plot_outages([row], tmp_path))
    assert_png(figures.plot_outages([], tmp_path))
    assert_png(figures.plot_predicted_vs_measured([row], tmp_path))
    assert_png(figures.plot_timelines(tmp_path, [row], tmp_path))


# --- a real blackhole: the in-flight request's age is the latency ----------------------------

SHORT_BLACKHOLE = """
description = "one switchover blackhole with tcp_retries2=4 (outage ~6.8 s)"
[defaults]
deadline_s = 20
after_s = 1.5
fault.kind = "switchover"
fault.at_s = 2
client.tcp_retries2 = 4
[[trial]]
name = "retries2-4"
"""


@pytest.mark.root
def test_a_real_outage_shows_as_growing_latency_and_its_figures_render(tmp_path: Path) -> None:
    path = tmp_path / "short.toml"
    path.write_text(SHORT_BLACKHOLE)
    run_dir = tmp_path / "run"
    (row,) = MatrixRun(scenario.load(path), run_dir).run()
    trial_dir = run_dir / "retries2-4"
    fault, outage = fault_time(trial_dir), float(row["measured_outage_s"])
    assert fault is not None and outage > 4
    inside = [(float(s["t_s"]) - fault, float(s["lat_p95_ms"]) / 1000)
              for s in read_csv(trial_dir / "timeline.csv")
              if fault + 1 < float(s["t_s"]) < fault + outage]
    print(f"\noutage {outage:.2f} s; (seconds since the fault, lat_p95 s): "
          f"{[(round(a, 2), round(b, 2)) for a, b in inside]}")
    assert len(inside) >= 3
    assert all(abs(lat - since) < 0.3 for since, lat in inside), inside  # 1 s, 2 s, ...
    out = run_dir / "report"
    out.mkdir()
    rows = read_run(run_dir)
    for png in (figures.plot_outages(rows, out), figures.plot_predicted_vs_measured(rows, out),
                figures.plot_timelines(run_dir, rows, out), figures.plot_trial(trial_dir, row)):
        assert_png(png)
