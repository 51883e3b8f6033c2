"""`lab run --dry-run`'s planning: the model's outage per trial and the run's length, with
nothing built (this test needs no root)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab.config import scenario
from lab.experiment import dryrun

SEED = Path(__file__).resolve().parents[2] / "scenarios" / "seed-lvs-mysql.toml"


def test_the_article_scenario_is_planned_from_the_model() -> None:
    plans = {p["trial"]: p for p in dryrun.plan(scenario.load(SEED))}
    assert plans["retries2-15"]["predicted_outage_s"] == pytest.approx(938.6, abs=0.1)
    assert plans["retries2-15"]["mechanism"] == "retries2"
    assert plans["retries2-5"]["predicted_outage_s"] == pytest.approx(13.43, abs=0.01)
    assert plans["drain-10s"]["predicted_outage_s"] == 0.0
    assert all(p["lb"] == "nft" and not p["note"] for p in plans.values())  # no IP_VS here
    # the load runs until the fault, the outage and after_s: the longest sets the run
    longest = plans["retries2-15"]["observed_s"]
    assert longest == pytest.approx(938.6 + 15 + 0.1, abs=1.0), longest


def test_wall_estimate_fills_the_slots_in_order() -> None:
    assert dryrun.wall_estimate([10, 10, 10, 10], parallel=2) == 20
    assert dryrun.wall_estimate([100, 1, 1, 1], parallel=8) == 100
    assert dryrun.wall_estimate([], parallel=4) == 0
