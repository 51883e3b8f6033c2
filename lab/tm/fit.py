"""Fit a site's max threshold: the utilisation at which p95 latency reaches the SLO.

Samples are (CPU utilisation, p95 latency ms) pairs. Outliers are dropped first by a Hampel
filter: distance from the median of their neighbours in utilisation, in units of the
neighbours' median absolute deviation (MAD). Then only the samples whose p95 is at least
FIT_FROM of the SLO are kept, because the threshold depends on the curve near the SLO and a
quadratic fitted over the flat low-load part too misplaces a queueing curve's knee by several
points of utilisation. Samples far (in MADs) from a quadratic through those are dropped too,
and a quadratic and a straight line are fitted to the rest by least squares
(numpy.polyfit). The quadratic sets the threshold, because latency grows faster than
linearly as a site saturates; the line is reported next to it as a sanity check. A threshold
is refused rather than extrapolated: the samples must come near the SLO and the quadratic
must cross it going up.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike

from lab.errors import LabError

MIN_SAMPLES = 8
FIT_FROM = 0.4  # fit the samples whose p95 is at least this share of the SLO
NEAR = 0.8  # the samples must reach this share of the SLO ...
REACH = 0.05  # ... and the crossing may lie at most this far beyond the highest utilisation
MAD_CUTOFF = 3.5  # robust z-score above which a sample is an outlier
MAD_TO_SIGMA = 1.4826


@dataclass(frozen=True)
class Curve:
    name: str
    coefficients: tuple[float, ...]  # highest power first, as numpy.polyfit returns them
    crossing: float | None  # utilisation where the curve reaches the SLO rising; None: never
    rms_ms: float  # residuals over the samples kept
    max_abs_ms: float

    def latency_ms(self, utilisation: float) -> float:
        return float(np.polyval(self.coefficients, utilisation))


@dataclass(frozen=True)
class Fit:
    max_threshold: float  # the quadratic's crossing
    slo_ms: float
    quadratic: Curve
    linear: Curve
    samples: int  # fitted: not outliers, p95 >= fit_from_ms
    outliers: int  # dropped
    fit_from_ms: float


def _curve(name: str, u: np.ndarray, y: np.ndarray, degree: int, slo_ms: float) -> Curve:
    coefficients = np.polyfit(u, y, degree)
    residuals = y - np.polyval(coefficients, u)
    return Curve(
        name=name,
        coefficients=tuple(float(c) for c in coefficients),
        crossing=_first_rising_crossing(coefficients, float(u.min()), slo_ms),
        rms_ms=float(np.sqrt(np.mean(residuals**2))),
        max_abs_ms=float(np.max(np.abs(residuals))),
    )


def _first_rising_crossing(coefficients: np.ndarray, start: float, slo_ms: float) -> float | None:
    """The lowest utilisation >= start where the curve meets the SLO with a positive slope."""
    shifted = np.array(coefficients, dtype=float)
    shifted[-1] -= slo_ms
    slope = np.polyder(coefficients)
    found = []
    for root in np.roots(shifted):
        if abs(root.imag) > 1e-12:
            continue
        x = float(root.real)
        if x >= start and np.polyval(slope, x) > 0:
            found.append(x)
    return min(found) if found else None


def _scale(deviations: np.ndarray, resolution: float) -> float:
    """Robust standard deviation, 1.4826 x MAD, but never below the data's resolution: when
    most values tie (p95 in whole ms) the MAD is 0 and would make every step an outlier."""
    return MAD_TO_SIGMA * max(float(np.median(np.abs(deviations))), resolution)


def _resolution(y: np.ndarray) -> float:
    """The typical gap between distinct values: 1 for whole milliseconds (even with a few
    odd values among them), and about range / n for continuous data."""
    gaps = np.diff(np.unique(y))
    return float(np.median(gaps)) if len(gaps) else 1e-12


def _hampel(u: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Mask of samples within MAD_CUTOFF robust deviations of their neighbours' median.

    A Hampel filter: neighbours are the samples nearest in utilisation, so the test needs no
    model of the curve. A spike among flat samples stands out; a steep but steady rise
    widens its neighbours' spread and is kept (so a spike there may be kept too).
    """
    n = len(u)
    half = max(5, n // 20)
    order = np.argsort(u, kind="stable")
    keep = np.ones(n, dtype=bool)
    resolution = _resolution(y)
    for rank, i in enumerate(order):
        lo = min(max(0, rank - half), max(0, n - 2 * half - 1))
        window = y[order[lo : lo + 2 * half + 1]]
        centre = np.median(window)
        keep[i] = abs(y[i] - centre) <= MAD_CUTOFF * _scale(window - centre, resolution)
    return keep


def _close_to_quadratic(u: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Mask of samples within MAD_CUTOFF robust deviations of a quadratic fit, refitted
    without the rest until stable: catches the spikes the Hampel filter lets through on the
    steep part, where a quadratic fits well (it would not on the whole curve, and a lone
    spike at low utilisation would bend it towards itself)."""
    keep = np.ones(len(u), dtype=bool)
    resolution = _resolution(y)
    for _ in range(10):
        residuals = y - np.polyval(np.polyfit(u[keep], y[keep], 2), u)
        centre = np.median(residuals[keep])
        scale = _scale(residuals[keep] - centre, resolution)
        new = np.abs(residuals - centre) <= MAD_CUTOFF * scale
        if np.array_equal(new, keep) or new.sum() < MIN_SAMPLES or len(np.unique(u[new])) < 3:
            break
        keep = new
    return keep


def fit_threshold(utilisation: ArrayLike, p95_ms: ArrayLike, slo_ms: float = 20.0) -> Fit:
    """Max threshold = where the fitted p95 latency reaches `slo_ms`; LabError if unsound."""
    u = np.asarray(utilisation, dtype=float)
    y = np.asarray(p95_ms, dtype=float)
    if len(u) != len(y):
        raise ValueError("utilisation and p95_ms differ in length")
    if slo_ms <= 0:
        raise LabError(f"SLO {slo_ms} ms is not positive", "give --slo-ms > 0")
    if len(u) < MIN_SAMPLES:
        raise LabError(
            f"only {len(u)} sample(s): too few to fit a curve", f"collect at least {MIN_SAMPLES}"
        )
    if len(np.unique(u)) < 3:
        raise LabError(
            "the samples cover fewer than 3 distinct utilisations",
            "sample the site at several load levels",
        )
    keep = _hampel(u, y)
    outliers = int((~keep).sum())
    u, y = u[keep], y[keep]
    peak = float(y.max())
    if peak < NEAR * slo_ms:
        raise LabError(
            f"the samples peak at p95 {peak:.1f} ms ({outliers} outliers dropped), below "
            f"{NEAR:.0%} of the {slo_ms:g} ms SLO, so the threshold would be an extrapolation",
            "collect samples at higher utilisation, up to where p95 nears the SLO",
        )
    fit_from = FIT_FROM * slo_ms
    near = y >= fit_from
    u, y = u[near], y[near]
    if len(u) < MIN_SAMPLES or len(np.unique(u)) < 3:
        raise LabError(
            f"only {len(u)} samples (at {len(np.unique(u))} utilisations) have p95 >= "
            f"{fit_from:g} ms ({FIT_FROM:.0%} of the {slo_ms:g} ms SLO): too few to fit the "
            "curve where it approaches the SLO",
            f"collect at least {MIN_SAMPLES} samples at loads where p95 is "
            f"{fit_from:g}-{slo_ms:g} ms",
        )
    keep = _close_to_quadratic(u, y)
    outliers += int((~keep).sum())
    u, y = u[keep], y[keep]
    quadratic = _curve("quadratic", u, y, 2, slo_ms)
    linear = _curve("linear", u, y, 1, slo_ms)
    if quadratic.latency_ms(float(u.min())) >= slo_ms:
        raise LabError(
            f"the fitted p95 is already {quadratic.latency_ms(float(u.min())):.1f} ms at the "
            f"lowest utilisation fitted ({u.min():.3f}), at or above the {slo_ms:g} ms SLO",
            "check that latency is driven by CPU load, or raise --slo-ms",
        )
    limit = min(1.0, float(u.max()) + REACH)
    crossing = quadratic.crossing
    if crossing is None or crossing > limit:
        where = "never" if crossing is None else f"only at {crossing:.3f}"
        raise LabError(
            f"the quadratic fit is not increasing through the {slo_ms:g} ms SLO within the "
            f"samples (up to utilisation {limit:.3f}): it reaches it {where}",
            "collect samples at higher utilisation, up to where p95 nears the SLO",
        )
    return Fit(crossing, slo_ms, quadratic, linear, len(u), outliers, fit_from)


def load_samples(path: Path) -> tuple[list[float], list[float]]:
    """Read a CSV with a header holding `utilisation` and `p95_ms` (other columns ignored)."""
    if not path.is_file():
        raise LabError(f"samples file {path} not found", "give a CSV of utilisation,p95_ms")
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        header = reader.fieldnames or []
        for column in ("utilisation", "p95_ms"):
            if column not in header:
                raise LabError(
                    f"{path}: no {column!r} column (header: {','.join(header) or 'empty'})",
                    "start the file with the header line utilisation,p95_ms",
                )
        utilisation: list[float] = []
        p95: list[float] = []
        for row in reader:
            for column, out, top in (("utilisation", utilisation, 1.0), ("p95_ms", p95, math.inf)):
                text = row.get(column)
                try:
                    value = float(text or "")
                except ValueError:
                    value = math.nan
                if not 0 <= value <= top or value == math.inf:
                    raise LabError(
                        f"{path} line {reader.line_num}: {column} {text!r} is not a valid value",
                        "utilisation is 0-1, p95_ms a non-negative number; fix or drop the line",
                    )
                out.append(value)
    return utilisation, p95
