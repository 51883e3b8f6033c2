"""`lab tm ...` through a parser built the way the main CLI builds it."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest

from lab.cli import tm as cli
from lab.errors import LabError

SCENARIOS = Path(__file__).resolve().parents[2] / "scenarios" / "tm"


@pytest.fixture(autouse=True)
def wide(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # rich tables on one line each


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="lab")
    cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    return int(args.func(args))


def test_plan_prints_sites_shifts_and_reasons(capsys: pytest.CaptureFixture[str]) -> None:
    assert run("tm", "plan", str(SCENARIOS / "worked-example.toml")) == 0
    out = capsys.readouterr().out
    assert "Sites (CPU time in ms/s)" in out
    assert "0.75/0.44/0.4" in out
    for row in (("business", "B", "50%"), ("free", "D", "80%"), ("free", "C", "20%")):
        assert any(all(cell in line for cell in row) for line in out.splitlines())
    assert "A: utilisation 0.84 > max 0.75: shift 1000 of 2100 ms/s" in out


def test_plan_shows_reverted_shifts(capsys: pytest.CaptureFixture[str]) -> None:
    assert run("tm", "plan", str(SCENARIOS / "four-sites.json")) == 0
    out = capsys.readouterr().out
    business = next(line for line in out.splitlines() if "fra" in line and "business" in line)
    assert "50%" in business and "0%" in business
    assert "fra: takes back business 50% (1000 ms/s) from ams" in out


def test_predict_flags_thundering_herd(capsys: pytest.CaptureFixture[str]) -> None:
    assert run("tm", "predict", str(SCENARIOS / "worked-example.toml"), "--nearby-ms", "30") == 0
    out = capsys.readouterr().out
    a_row = next(line for line in out.splitlines() if "│ A " in line)
    assert "B 800 -> 0.9" in a_row and "absorbed" in a_row
    withdrawn = [line.split("│")[1].strip() for line in out.splitlines() if "│" in line]
    assert withdrawn == ["A", "B", "C", "D", "B+C", "C+D"]  # only pairs <= 30 ms apart
    assert "Thundering-herd risk: losing B+C, C+D pushes survivors over max." in out


def test_fit_prints_both_curves_and_the_threshold(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = np.random.default_rng(7)
    u = rng.uniform(0.05, 0.9, 200)
    y = 3 + 25 * u**2 + rng.normal(0, 0.5, 200)
    path = tmp_path / "samples.csv"
    path.write_text(
        "utilisation,p95_ms\n" + "".join(f"{a},{b}\n" for a, b in zip(u, y, strict=True))
    )
    assert run("tm", "fit", str(path)) == 0
    out = capsys.readouterr().out
    assert "quadratic" in out and "linear" in out and "SLO 20 ms" in out
    assert "max threshold = 0.82" in out
    assert run("tm", "fit", str(path), "--slo-ms", "15") == 0
    assert "max threshold = 0.69" in capsys.readouterr().out  # sqrt(12/25)


@pytest.mark.parametrize("command", ["plan", "predict"])
def test_bad_state_file_is_one_clear_line(tmp_path: Path, command: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[sites.A]\nutilisation = 2\ncpu_ms_per_s = {}\n")
    with pytest.raises(LabError) as err:
        run("tm", command, str(path))
    text = str(err.value)
    assert "\n" not in text
    assert text.startswith(f"{path}: sites.A.utilisation: input should be less than or equal")
    assert "-- correct sites.A.utilisation in bad.toml" in text


def test_fit_refusal_is_one_clear_line(tmp_path: Path) -> None:
    path = tmp_path / "low.csv"
    path.write_text("utilisation,p95_ms\n" + "".join(f"0.{i},{i}\n" for i in range(1, 10)))
    with pytest.raises(LabError) as err:
        run("tm", "fit", str(path))
    assert "\n" not in str(err.value) and "below 80% of the 20 ms SLO" in str(err.value)


def test_tm_needs_a_sub_command() -> None:
    with pytest.raises(SystemExit):
        run("tm")
