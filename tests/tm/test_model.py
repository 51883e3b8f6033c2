"""State files: TOML and JSON read alike, exactly, and every mistake is one precise line."""

from __future__ import annotations

import copy
import json
import tomllib
from fractions import Fraction as F
from pathlib import Path
from typing import Any

import pytest

from lab.errors import LabError
from lab.tm import model
from lab.tm.model import Plan, Shift

SCENARIOS = Path(__file__).resolve().parents[2] / "scenarios" / "tm"

BASE: dict[str, Any] = {
    "thresholds": {"max": 0.9, "target": 0.85, "acceptable": 0.65},
    "sites": {
        "A": {"utilisation": 0.8, "cpu_ms_per_s": {"free": 100, "pro": 50}},
        "B": {"utilisation": 0.3, "cpu_ms_per_s": {"enterprise": 10}},
    },
    "latency_ms": {"A": {"B": 12}},
    "shifts": [{"plan": "free", "source": "A", "destination": "B", "fraction": 0.25}],
}


def write_json(tmp_path: Path, doc: Any, name: str = "state.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(doc))
    return path


def test_worked_example_loads_exactly() -> None:
    state = model.load(SCENARIOS / "worked-example.toml")
    a = state.sites["A"]
    assert a.utilisation == F(21, 25)
    assert a.thresholds == model.Thresholds(F("0.75"), F("0.44"), F("0.4"))
    assert state.sites["B"].thresholds == model.Thresholds(F("0.9"), F("0.85"), F("0.65"))
    assert a.own(Plan.BUSINESS) == 200
    assert state.latency_ms("A", "C") == state.latency_ms("C", "A") == 110
    assert state.shifts == ()


def test_four_sites_json_loads_with_active_shifts() -> None:
    state = model.load(SCENARIOS / "four-sites.json")
    assert state.shifts == (
        Shift("fra", Plan.PRO, "cdg", F(1, 2)),
        Shift("fra", Plan.BUSINESS, "ams", F(1, 2)),
    )
    # served = own - shifted out + shifted in; capacity = served / utilisation
    assert state.served("fra") == 6000
    assert state.served("ams") == 6000
    assert state.served_by_plan("ams")[Plan.BUSINESS] == 2000
    assert state.capacity("ams") == 10000


def test_toml_and_json_give_the_same_state(tmp_path: Path) -> None:
    toml = """
        [thresholds]
        max = 0.9
        target = 0.85
        acceptable = 0.65
        [sites.A]
        utilisation = 0.8
        cpu_ms_per_s = { free = 100, pro = 50 }
        [sites.B]
        utilisation = 0.3
        cpu_ms_per_s = { enterprise = 10 }
        [latency_ms]
        B = { A = 12 }
        [[shifts]]
        plan = "free"
        source = "A"
        destination = "B"
        fraction = 0.25
    """
    (tmp_path / "s.toml").write_text(toml)
    assert tomllib.loads(toml)["sites"] == BASE["sites"]
    from_toml = model.load(tmp_path / "s.toml")
    from_json = model.load(write_json(tmp_path, BASE))
    assert from_toml == from_json
    assert from_json.served("A") == 125 and from_json.served("B") == 35


def test_site_thresholds_override_defaults_key_by_key(tmp_path: Path) -> None:
    doc = copy.deepcopy(BASE)
    doc["sites"]["A"]["thresholds"] = {"max": 0.95}
    state = model.load(write_json(tmp_path, doc))
    assert state.sites["A"].thresholds == model.Thresholds(F("0.95"), F("0.85"), F("0.65"))


def _set(doc: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node: Any = doc
    for key in keys[:-1]:
        node = node[int(key)] if key.isdigit() else node[key]
    if value is DELETE:
        del node[keys[-1]]
    else:
        node[int(keys[-1]) if keys[-1].isdigit() else keys[-1]] = value


DELETE = object()

BAD = [
    ("thresold", {"max": 0.9}, "thresold: unknown key", "did you mean 'thresholds'"),
    ("sites.A.utilisaton", 0.5, "sites.A.utilisaton: unknown key", "'utilisation'"),
    ("sites.A.thresholds", {"maxx": 0.9}, "sites.A.thresholds.maxx: unknown key", "'max'"),
    ("shifts.0.fractoin", 0.1, "shifts[0].fractoin: unknown key", "'fraction'"),
    ("sites.A.utilisation", DELETE, "sites.A.utilisation: missing", "add sites.A.utilisation"),
    (
        "sites.A.utilisation",
        1.5,
        "sites.A.utilisation: input should be less than or equal to 1",
        "correct sites.A.utilisation",
    ),
    (
        "sites.A.utilisation",
        "0.5",
        "sites.A.utilisation: input should be a valid number",
        "correct",
    ),
    (
        "sites.A.cpu_ms_per_s",
        {"freee": 1},
        "sites.A.cpu_ms_per_s.freee: unknown plan 'freee'",
        "plans are free, pro, business, enterprise",
    ),
    (
        "sites.A.cpu_ms_per_s",
        {"free": -1},
        "sites.A.cpu_ms_per_s.free: input should be greater",
        "correct",
    ),
    ("sites", {}, "sites: dictionary should have at least 1 item", "correct sites"),
    (
        "thresholds.acceptable",
        0.87,
        "sites.A.thresholds: need acceptable <= target < max",
        "reorder",
    ),
    (
        "thresholds",
        {"max": 0.9, "target": 0.85},
        "sites.A.thresholds.acceptable: missing and no default",
        "[sites.A.thresholds]",
    ),
    ("latency_ms", {}, "latency_ms: no latency between A and B", "add it"),
    ("latency_ms", {"A": {"C": 3}}, "latency_ms.A.C: unknown site 'C'", "sites are A, B"),
    (
        "latency_ms",
        {"A": {"B": 3}, "B": {"A": 4}},
        "latency_ms: B-A is given twice (3 and 4 ms)",
        "give each pair once",
    ),
    ("latency_ms", {"A": {"A": 0, "B": 3}}, "latency_ms.A.A: a site to itself", "remove it"),
    ("shifts.0.destination", "b", "shifts[0].destination: unknown site 'b'", "sites are A, B"),
    ("shifts.0.destination", "A", "shifts[0]: source and destination are both A", "remove"),
    ("shifts.0.plan", "gold", "shifts[0].plan: input should be 'free', 'pro'", "correct"),
    ("shifts.0.fraction", 0, "shifts[0].fraction: input should be greater than 0", "correct"),
]


@pytest.mark.parametrize(("key", "value", "problem", "fix"), BAD, ids=[b[2][:40] for b in BAD])
def test_bad_state_files_name_file_field_and_fix(
    tmp_path: Path, key: str, value: Any, problem: str, fix: str
) -> None:
    doc = copy.deepcopy(BASE)
    _set(doc, key, value)
    path = write_json(tmp_path, doc)
    with pytest.raises(LabError) as err:
        model.load(path)
    assert err.value.problem.startswith(f"{path}: ")
    assert problem in err.value.problem
    assert fix in err.value.fix
    assert "\n" not in str(err.value)


def test_shift_fractions_of_a_plan_may_not_exceed_one(tmp_path: Path) -> None:
    doc = copy.deepcopy(BASE)
    doc["sites"]["C"] = {"utilisation": 0.1, "cpu_ms_per_s": {}}
    doc["latency_ms"] = {"A": {"B": 1, "C": 2}, "B": {"C": 3}}
    doc["shifts"].append({"plan": "free", "source": "A", "destination": "C", "fraction": 0.8})
    with pytest.raises(LabError, match=r"shifts\[1\]: A shifts more than all of its free"):
        model.load(write_json(tmp_path, doc))
    doc["shifts"][1]["destination"] = "B"
    with pytest.raises(LabError, match=r"shifts\[1\]: a second free shift A -> B"):
        model.load(write_json(tmp_path, doc))


@pytest.mark.parametrize(
    ("name", "text", "problem"),
    [
        ("s.toml", "[sites\n", "not valid TOML"),
        ("s.json", '{"sites": ', "not valid JSON (Expecting value at line 1 column 11)"),
        ("s.json", "[]", "the top level must be a table/object"),
        ("s.yaml", "sites: {}", "unknown state file type '.yaml'"),
    ],
)
def test_unreadable_files(tmp_path: Path, name: str, text: str, problem: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(LabError) as err:
        model.load(path)
    assert problem in err.value.problem
    assert str(path) in err.value.problem
    assert "\n" not in str(err.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(LabError, match="not found"):
        model.load(tmp_path / "nope.toml")


def test_numbers_are_the_decimals_written() -> None:
    assert model.exact(0.9) == F(9, 10)
    assert model.exact(18000.0) == 18000
    assert model.fmt_ms(F(1000, 3)) == "333.3"
    assert model.fmt_pct(F(1, 2)) == "50%"
    assert model.fmt_u(F(455, 1000)) == "0.455"
