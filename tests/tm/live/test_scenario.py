"""Live scenario files: the shipped ones load, and every mistake is one precise line."""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path
from typing import Any

import pytest

from lab.errors import LabError
from lab.tm.live import scenario
from lab.tm.model import Plan

SCENARIOS = Path(__file__).resolve().parents[3] / "scenarios" / "tm"
BASE = tomllib.loads((SCENARIOS / "live-capacity.toml").read_text())


def test_shipped_live_scenarios_load() -> None:
    names = sorted(p.name for p in SCENARIOS.glob("live-*.toml"))
    assert names == [
        "live-capacity.toml", "live-failover.toml", "live-garbage.toml", "live-recovery.toml"
    ]
    for path in SCENARIOS.glob("live-*.toml"):
        scen = scenario.load(path)
        assert sorted(scen.sites) == ["A", "B", "C"]
        assert set(scen.plans) == set(Plan)
        assert scen.duration_s <= 30  # short enough for the test suite
    failover = scenario.load(SCENARIOS / "live-failover.toml")
    assert failover.compare_without_controller
    assert failover.with_mode("off").controller.mode == "off"
    assert failover.clients.tcp_retries2 == 5


def _set(doc: dict[str, Any], path: str, value: Any) -> None:
    *head, last = path.split(".")
    for key in head:
        doc = doc[int(key)] if key.isdigit() else doc.setdefault(key, {})  # type: ignore[index]
    if value is _DELETE:
        del doc[last]
    else:
        doc[last] = value


_DELETE = object()


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("duraton_s", 3, "duraton_s: unknown key -- did you mean 'duration_s'?"),
        ("plans.free.share", 0.5, "plans: shares add up to 1.1, not 1"),
        ("plans.gold", {"cost_ms": 1, "share": 0.1}, "plans.gold: unknown plan 'gold'"),
        ("sites.A.budget_ms_per_s", "250", "sites.A.budget_ms_per_s: input should be a valid "
                                           "number (got '250')"),
        ("sites.A.budget_ms_per_s", 5000, "sites.A.budget_ms_per_s: input should be less than "
                                          "or equal to 1000"),
        ("thresholds.target", 0.9, "sites.A.thresholds: need acceptable <= target < max, got "
                                   "acceptable 0.6, target 0.9, max 0.8"),
        ("latency_ms.B", _DELETE, "latency_ms: no latency between B and C"),
        ("events.0.site", "D", "events[0].site: unknown site 'D' -- sites are A, B, C"),
        ("events.0.budget_ms_per_s", _DELETE,
         "events[0].budget_ms_per_s: missing for action 'budget'"),
        ("events.0.report", "ok", "events[0].report: not used by action 'budget'"),
        ("events.1.at_s", 40, "events[1].at_s: 40 s is not before duration_s 30 s"),
        ("events.1.at_s", 2, "events[1].at_s: 2 s comes before the previous event (6 s)"),
        ("events.1.action", "restore", "events[1]: restore of A, which has not crashed"),
        ("controller.mode", "maybe", "controller.mode: input should be 'tm' or 'off'"),
        ("controller.window_s", 0.6, "controller.window_s: 0.6 s is shorter than interval_s 1 s"),
        ("clients.workerz", 2, "clients.workerz: unknown key -- did you mean 'workers'?"),
    ],
)
def test_mistakes_are_one_precise_line(path: str, value: Any, message: str) -> None:
    doc = copy.deepcopy(BASE)
    if path.startswith("events.1.action"):
        doc["events"][1].pop("budget_ms_per_s")
    _set(doc, path, value)
    with pytest.raises(LabError) as err:
        scenario.parse(doc, Path("x.toml"))
    text = str(err.value)
    assert "\n" not in text
    assert text.startswith(f"x.toml: {message}"), text


def test_site_names_and_sizes() -> None:
    doc = copy.deepcopy(BASE)
    doc["sites"]["lb"] = doc["sites"].pop("C")
    with pytest.raises(LabError, match=r"sites.lb: not a usable site name"):
        scenario.parse(doc, Path("x.toml"))
    doc = copy.deepcopy(BASE)
    doc["sites"]["A"]["requests_per_s"] = 390
    with pytest.raises(LabError, match=r"sites: 455 requests/s in all, more than 400"):
        scenario.parse(doc, Path("x.toml"))
    doc = copy.deepcopy(BASE)
    doc["events"] = [
        {"at_s": 1, "site": "A", "action": "crash"}, {"at_s": 2, "site": "A", "action": "crash"}
    ]
    with pytest.raises(LabError, match=r"events\[1\]: A crashes twice without a restore"):
        scenario.parse(doc, Path("x.toml"))


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(LabError, match=r"scenario .* not found"):
        scenario.load(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("duration_s = [")
    with pytest.raises(LabError, match=r"bad\.toml: not valid TOML"):
        scenario.load(bad)
