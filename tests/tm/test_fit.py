"""The max-threshold fit: recovers known curves, drops outliers, refuses to extrapolate."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from lab.errors import LabError
from lab.tm import fit


def noisy(
    seed: int,
    curve: Callable[[np.ndarray], np.ndarray],
    lo: float,
    hi: float,
    sd: float,
    n: int = 200,
    spikes: int = 10,
) -> tuple[np.ndarray, np.ndarray]:
    """n samples of `curve` on [lo, hi] with gaussian noise and `spikes` +15..40 ms outliers."""
    rng = np.random.default_rng(seed)
    u = rng.uniform(lo, hi, n)
    y = curve(u) + rng.normal(0, sd, n)
    y[rng.choice(n, spikes, replace=False)] += rng.uniform(15, 40, spikes)
    return u, y


@pytest.mark.parametrize("seed", range(10))
def test_recovers_a_quadratic_threshold_within_one_percent(seed: int) -> None:
    u, y = noisy(seed, lambda u: 3 + 25 * u**2, 0.05, 0.9, sd=0.5)
    result = fit.fit_threshold(u, y, slo_ms=20)
    assert abs(result.max_threshold - math.sqrt(17 / 25)) < 0.01  # 3 + 25 u^2 = 20
    assert 10 <= result.outliers <= 20  # the spikes, and not much else


@pytest.mark.parametrize("seed", range(10))
def test_recovers_a_queueing_knee_within_one_percent(seed: int) -> None:
    # M/M/1-like: 2 ms service time / (1 - u) reaches 20 ms at u = 0.9
    u, y = noisy(seed, lambda u: 2 / (1 - u), 0.3, 0.92, sd=0.3)
    assert abs(fit.fit_threshold(u, y).max_threshold - 0.9) < 0.01


def test_reports_both_fits_and_their_residuals() -> None:
    u, y = noisy(1, lambda u: 3 + 25 * u**2, 0.05, 0.9, sd=0.5)
    result = fit.fit_threshold(u, y)
    q, lin = result.quadratic, result.linear
    assert len(q.coefficients) == 3 and len(lin.coefficients) == 2
    assert q.coefficients[0] == pytest.approx(25, rel=0.2)
    assert lin.crossing is not None and lin.coefficients[0] > 0
    assert 0.3 < q.rms_ms < 0.8  # about the noise
    assert q.rms_ms <= lin.rms_ms  # nested least squares on the same samples
    assert q.max_abs_ms >= q.rms_ms
    assert q.latency_ms(result.max_threshold) == pytest.approx(20)
    assert result.fit_from_ms == 8 and result.samples < 200 - result.outliers


def test_exact_data_give_the_exact_root() -> None:
    u = np.linspace(0.1, 0.9, 50)
    result = fit.fit_threshold(u, 3 + 25 * u**2)
    assert result.max_threshold == pytest.approx(math.sqrt(17 / 25), abs=1e-9)
    assert result.outliers == 0


def test_refuses_data_that_never_approach_the_slo() -> None:
    u, y = noisy(2, lambda u: 3 + 25 * u**2, 0.05, 0.6, sd=0.5)  # peaks near 12 ms
    with pytest.raises(
        LabError, match=r"the samples peak at p95 1\d\.\d ms \(\d+ outliers dropped\), below 80% of"
    ):
        fit.fit_threshold(u, y, slo_ms=20)


def test_refuses_latency_that_falls_with_load() -> None:
    u, y = noisy(3, lambda u: 30 - 25 * u, 0.05, 0.9, sd=0.5, spikes=0)
    with pytest.raises(LabError, match=r"already .* ms at the lowest utilisation fitted"):
        fit.fit_threshold(u, y)


def test_refuses_a_crossing_beyond_the_samples() -> None:
    # a gentle line from 8 to 17 ms: the SLO would be reached only well past u = 0.5
    u = np.linspace(0.1, 0.5, 40)
    with pytest.raises(LabError, match=r"not increasing through the 20 ms SLO .* only at 0\.6"):
        fit.fit_threshold(u, 8 + 22.5 * (u - 0.1))


@pytest.mark.parametrize(
    ("u", "y", "message"),
    [
        ([0.1, 0.5, 0.9], [1, 5, 25], "only 3 sample\\(s\\): too few to fit a curve"),
        ([0.5] * 10 + [0.9] * 10, [5] * 10 + [25] * 10, "fewer than 3 distinct utilisations"),
        # reaches 16.9 ms, but only the top 6 samples are above 8 ms (40 % of the SLO)
        (
            list(np.linspace(0.1, 0.9, 30)),
            list(0.5 + 25 * np.linspace(0.1, 0.9, 30) ** 4),
            "only 6 samples .* have p95 >= 8 ms",
        ),
    ],
)
def test_refuses_thin_data(u: list[float], y: list[float], message: str) -> None:
    with pytest.raises(LabError, match=message):
        fit.fit_threshold(u, y)


def test_load_samples_reads_the_two_columns(tmp_path: Path) -> None:
    path = tmp_path / "s.csv"
    path.write_text("t,utilisation,p95_ms\n0,0.5,4.5\n1,0.9,21\n")
    assert fit.load_samples(path) == ([0.5, 0.9], [4.5, 21.0])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("u,p95_ms\n0.5,1\n", "no 'utilisation' column"),
        ("", "no 'utilisation' column (header: empty)"),
        ("utilisation,p95_ms\n0.5,1\n0.6,abc\n", "line 3: p95_ms 'abc' is not a valid value"),
        ("utilisation,p95_ms\n1.5,1\n", "line 2: utilisation '1.5' is not a valid value"),
        ("utilisation,p95_ms\n0.5\n", "line 2: p95_ms None is not a valid value"),
    ],
)
def test_load_samples_errors_name_the_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "s.csv"
    path.write_text(text)
    with pytest.raises(LabError) as err:
        fit.load_samples(path)
    assert message in err.value.problem and str(path) in err.value.problem
