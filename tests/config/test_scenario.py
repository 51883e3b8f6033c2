"""Scenario files expand into validated trials; every mistake is one precise line."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from pydantic import ValidationError

from lab.config import scenario
from lab.config.settings import TrialSettings
from lab.errors import LabError

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "s.toml"
    path.write_text(text)
    return path


def test_seed_scenario_loads() -> None:
    s = scenario.load(ROOT / "scenarios" / "seed-lvs-mysql.toml")
    by_name = {t.name: t for t in s.trials}
    assert list(by_name)[:2] == ["retries2-15", "retries2-5"]  # the article's pair first
    assert [t.client.tcp_retries2 for t in s.trials[:2]] == [15, 5]
    assert all(t.fault.kind == "switchover" for t in s.trials)
    # every fix the article names, each alone on top of the defaults
    assert by_name["user-timeout-5s"].client.tcp_user_timeout_ms == 5000
    assert by_name["read-timeout-10s"].client.read_timeout_s == 10
    assert by_name["idle-keepalive"].load.shape == "idle"
    assert by_name["idle-keepalive"].client.so_keepalive is True
    assert by_name["drain-10s"].lb.drain_timeout_s == 10
    assert [t.name for t in s.trials if t.lb.expire_nodest_conn == 1] == ["expire-nodest-conn"]


def test_every_scenario_file_loads() -> None:
    for path in sorted((ROOT / "scenarios").glob("*.toml")):
        assert scenario.load(path).trials, path


def test_matrix_expands_product_and_overrides_apply(tmp_path: Path) -> None:
    path = write(tmp_path, """
[defaults]
deadline_s = 30
[matrix]
"client.tcp_retries2" = [3, 5]
"lb.expire_nodest_conn" = [0, 1]
""")
    s = scenario.load(path, ["load.threads=2"])
    assert len(s.trials) == 4
    assert {(t.client.tcp_retries2, t.lb.expire_nodest_conn) for t in s.trials} == {
        (3, 0), (3, 1), (5, 0), (5, 1)}
    assert all(t.load.threads == 2 and t.deadline_s == 30 for t in s.trials)
    assert s.trials[0].name == "tcp_retries2=3,expire_nodest_conn=0"


@pytest.mark.parametrize(("text", "overrides", "message"), [
    ("[defaults]\nclient.tcp_retries = 5\n", [],
     "client.tcp_retries: unknown key (did you mean client.tcp_retries2?)"),
    ("[defaults]\nclient.tcp_retries2 = 300\n[[trial]]\n", [],
     "client.tcp_retries2: Input should be less"),
    ("[defaults]\nlb.engine = 'ipvz'\n[[trial]]\n", [],
     "lb.engine: Input should be 'auto', 'nft', 'ipvs' or 'proxy' (got 'ipvz')"),
    ("[default]\n", [], "unknown top-level key 'default'"),
    ("[defaults\n", [], "not valid TOML"),
    ("[matrix]\n'client.tcp_retries2' = 5\n", [], "must be a non-empty list"),
    ("[[trial]]\n", ["client.tcp_retries2"], "is not key=value"),
    ("[[trial]]\n", ["fault.at_s=-1"], "fault.at_s: Input should be greater than 0"),
    ("[[trial]]\nname='a'\n[[trial]]\nname='a'\n", [], "two trials are named 'a'"),
])
def test_bad_input_is_one_clear_line(
    tmp_path: Path, text: str, overrides: list[str], message: str
) -> None:
    with pytest.raises(LabError) as info:
        scenario.load(write(tmp_path, text), overrides)
    assert message in str(info.value)
    assert "\n" not in str(info.value)
    assert info.value.fix


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(LabError, match="not found"):
        scenario.load(tmp_path / "nope.toml")


def test_override_values_are_toml_literals() -> None:
    assert scenario.parse_override("client.so_keepalive=true") == ("client.so_keepalive", True)
    assert scenario.parse_override("lb.engine=nft") == ("lb.engine", "nft")
    assert scenario.parse_override("client.read_timeout_s = 2.5") == ("client.read_timeout_s", 2.5)


def test_scenario_records_the_file_digest_and_the_set_list(tmp_path: Path) -> None:
    path = write(tmp_path, '[[trial]]\nname = "a"\n')
    s = scenario.load(path, ["client.tcp_retries2=5", "lb.engine = nft"])
    assert s.digest == hashlib.sha256(path.read_bytes()).hexdigest()
    assert s.overrides == ("client.tcp_retries2=5", "lb.engine = nft")  # as given
    assert s.source == {"trial": [{"name": "a"}]}
    assert scenario.load(path).overrides == ()
    path.write_text('[[trial]]\nname = "a"  # a comment changes the bytes\n')
    assert scenario.load(path).digest != s.digest
    built = scenario.Scenario("x", "", s.trials, {})  # as tests/vm builds one
    assert (built.digest, built.overrides) == ("", ())


def test_strict_settings_from_python_too() -> None:
    with pytest.raises(ValidationError):
        TrialSettings.model_validate({"client": {"tcp_retries2": True}})
    with pytest.raises(ValidationError):
        TrialSettings.model_validate({"lb": {"expire_nodest_conn": True}})
    with pytest.raises(ValidationError):
        TrialSettings.model_validate({"name": ".hidden"})
    ok = TrialSettings.model_validate({"deadline_s": 60, "lb": {"expire_nodest_conn": 1}})
    assert ok.deadline_s == 60.0 and isinstance(ok.deadline_s, float)


def test_shipped_scenarios_are_package_data_with_descriptions() -> None:
    """lab/scenarios ships in the wheel (pyproject's package-data covers every file in it)
    and the repository's scenarios/ is the same folder."""
    import fnmatch
    import tomllib
    assert (ROOT / "scenarios").resolve() == scenario.SHIPPED_DIR
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())[
        "tool"]["setuptools"]["package-data"]["lab.scenarios"]
    files = [p.relative_to(scenario.SHIPPED_DIR).as_posix()
             for p in scenario.SHIPPED_DIR.rglob("*") if p.is_file()]
    assert files and all(any(fnmatch.fnmatch(f, g) for g in globs) for f in files), files
    shipped = {s.name: s for s in scenario.shipped()}
    assert {"seed-lvs-mysql", "ci-short", "mitigations-short"} <= set(shipped)
    assert all(s.description for s in shipped.values()), shipped
    assert shipped["seed-lvs-mysql"].trials == len(
        scenario.load(shipped["seed-lvs-mysql"].path).trials)
    assert shipped["mitigations-short"].trials == len(
        scenario.load(shipped["mitigations-short"].path).trials)


def test_a_scenario_by_name_is_the_shipped_one_unless_a_file_is_there(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seed = scenario.SHIPPED_DIR / "seed-lvs-mysql.toml"
    monkeypatch.chdir(tmp_path)
    assert scenario.resolve("seed-lvs-mysql") == seed
    assert scenario.resolve("seed-lvs-mysql.toml") == seed
    assert scenario.resolve("nothere") == Path("nothere")  # load then says it is missing
    assert scenario.resolve("sub/seed-lvs-mysql") == Path("sub/seed-lvs-mysql")  # a path
    (tmp_path / "seed-lvs-mysql.toml").write_text('[[trial]]\nname = "mine"\n')
    assert scenario.resolve("seed-lvs-mysql.toml") == Path("seed-lvs-mysql.toml")
