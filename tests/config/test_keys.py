"""The key reference and the scenario JSON Schema come from the settings model: every key is
described, the TOML pastes into a scenario as it is, and the schema accepts every shipped
scenario and refuses what scenario.load refuses."""

from __future__ import annotations

import copy
import re
import tomllib
from pathlib import Path

import jsonschema
import pytest

from lab.config import keys, scenario
from lab.config.settings import TrialSettings

ROOT = Path(__file__).resolve().parents[2]
SOURCE_PATH = re.compile(r"\blab/\w|\w\.py\b|\blab\.[a-z_]+\.")


def test_every_key_has_a_one_line_description() -> None:
    reference = keys.all_keys()
    assert sorted(k.key for k in reference) == sorted(scenario.valid_keys())
    missing = [k.key for k in reference if not k.description.strip()]
    assert not missing, f"keys without a description (settings.key(..., description)): {missing}"
    for k in reference:
        assert "\n" not in k.description and len(k.description) <= 140, k.key
        assert not SOURCE_PATH.search(k.description), f"{k.key} points into the source"


def test_every_key_has_a_type_and_each_duration_a_unit() -> None:
    for k in keys.all_keys():
        assert k.type in {"integer", "number", "boolean", "string", "array of string"}, k
        if k.key.endswith("_s"):
            assert k.unit == "s", k.key
        if k.key.endswith("_ms"):
            assert k.unit == "ms", k.key


def test_range_default_and_type_as_toml_writes_them() -> None:
    by_key = {k.key: k for k in keys.all_keys()}
    assert by_key["client.tcp_retries2"].range == "1..255"
    assert by_key["client.tcp_retries2"].default is None
    assert by_key["deadline_s"].range == "> 0, <= 86400"
    assert by_key["lb.engine"].range == '"auto" | "nft" | "ipvs" | "proxy"'
    assert by_key["lb.expire_nodest_conn"].choices == [0, 1]
    assert keys.toml_value(True) == "true" and keys.toml_value(2.0) == "2.0"
    assert keys.toml_value("auto") == '"auto"'
    with pytest.raises(ValueError):
        keys.toml_value(None)


def test_the_toml_pastes_into_a_scenario_and_gives_the_defaults(tmp_path: Path) -> None:
    text = keys.toml()
    assert "None" not in text and "True" not in text and "False" not in text
    assert "# client.tcp_retries2 = ...\n" in text  # unset: commented out
    assert "\nclient.connect_timeout_s = 10.0\n" in text
    assert "\n# name = " in text  # each trial names itself
    path = tmp_path / "pasted.toml"
    path.write_text(text + '\n[[trial]]\nname = "t"\n')
    (trial,) = scenario.load(path).trials
    assert trial == TrialSettings(name="t")


def test_a_line_uncommented_and_filled_in_is_a_valid_key(tmp_path: Path) -> None:
    text = keys.toml().replace("# client.tcp_retries2 = ...", "client.tcp_retries2 = 5")
    path = tmp_path / "s.toml"
    path.write_text(text + '\n[[trial]]\nname = "t"\n')
    assert scenario.load(path).trials[0].client.tcp_retries2 == 5


def _validator() -> jsonschema.protocols.Validator:
    schema = keys.scenario_schema()
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def test_the_schema_accepts_every_shipped_scenario() -> None:
    validator = _validator()
    for path in sorted((ROOT / "scenarios").glob("*.toml")):
        doc = tomllib.loads(path.read_text())
        errors = [e.message for e in validator.iter_errors(doc)]
        assert not errors, (path.name, errors)


@pytest.mark.parametrize("change", [
    lambda d: d["defaults"].update(deadline_s=0),                      # out of range
    lambda d: d["defaults"]["client"].update(tcp_retries=5),           # a typo
    lambda d: d["defaults"]["lb"].update(engine="lvs"),                # not a choice
    lambda d: d["defaults"].update(capture="yes"),                     # a string for a bool
    lambda d: d.update(matrix={"client.tcp_retries2": []}),            # an empty list
    lambda d: d.update(matrix={"client.tcp_retries2": [0]}),           # out of range
    lambda d: d.update(trials=[]),                                     # an unknown top key
    lambda d: d.pop("trial"),                                          # no trial, no matrix
])
def test_the_schema_refuses_what_the_lab_refuses(change: object, tmp_path: Path) -> None:
    doc = {"defaults": {"deadline_s": 30, "client": {"tcp_retries2": 5}, "lb": {}},
           "trial": [{"name": "a"}]}
    assert not list(_validator().iter_errors(doc))
    bad = copy.deepcopy(doc)
    change(bad)  # type: ignore[operator]
    assert list(_validator().iter_errors(bad)), bad


def test_the_schema_describes_each_key_for_an_editor_hover() -> None:
    schema = keys.scenario_schema()
    client = schema["$defs"]["ClientSettings"]["properties"]
    assert client["tcp_user_timeout_ms"]["unit"] == "ms"
    assert client["tcp_user_timeout_ms"]["description"].startswith("TCP_USER_TIMEOUT")
    assert "null" not in str(schema).lower().replace("nullable", "")
    matrix = schema["properties"]["matrix"]["properties"]
    assert "name" not in matrix and matrix["lb.expire_nodest_conn"]["items"]["enum"] == [0, 1]
