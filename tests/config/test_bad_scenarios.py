"""Every malformed scenario file or --set is one LabError line naming the file, the trial (where
one applies), the key and the fix; no other exception leaves scenario.load (issue 13, 1 and 9).

tests/config/bad/*.toml: one malformed scenario per file, its first line "# expect: <text>", a
part of the line it must give (with the key and the fix). Inputs that cannot be such a file
(binary, a directory, missing, unreadable, a --set) are built here.
"""

from __future__ import annotations

import math
import os
import typing
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from lab.config import scenario
from lab.config.settings import TrialSettings
from lab.errors import LabError

BAD = Path(__file__).resolve().parent / "bad"
FIXTURES = sorted(BAD.glob("*.toml"))
EXPECT = "# expect: "
ONE_TRIAL = '[[trial]]\nname = "a"\n'


def expected(path: Path) -> str:
    first = path.read_text().splitlines()[0] if path.read_text() else ""
    assert first.startswith(EXPECT), f"{path.name}: the first line must be '{EXPECT}...'"
    return first.removeprefix(EXPECT)


def refused(path: Path, overrides: list[str] | None = None) -> str:
    """The one line scenario.load gives for `path`: a LabError, one line, naming the file."""
    with pytest.raises(LabError) as info:
        scenario.load(path, overrides)
    line = str(info.value)
    assert len(line.splitlines()) == 1 and "\n" not in line, line
    assert info.value.fix, line
    assert str(path) in line, line
    return line


def write(tmp_path: Path, text: str | bytes, name: str = "s.toml") -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def test_there_are_enough_fixtures() -> None:
    assert len(FIXTURES) >= 40


@pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_bad_fixture_is_one_clear_line(path: Path) -> None:
    line = refused(path)
    assert expected(path) in line
    assert line.startswith(f"{path}: ")


# --- files that are not scenario text -------------------------------------------------------

@pytest.mark.parametrize(("content", "message"), [
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe",
     "not UTF-8 text (byte 0x89 on line 1, offset 0) -- a scenario is TOML text"),
    ("description = 'caf\u00e9'\n".encode("latin-1"),
     "not UTF-8 text (byte 0xe9 on line 1, offset 18)"),
    (b"\x00\x01\x02\x03", "not valid TOML (Invalid statement (at line 1, column 1)) -- fix the "
     "syntax at that line"),
    (b"a = " + b"[" * 50_000 + b"]" * 50_000, "not valid TOML (nested too deeply)"),
    (b"#" * (scenario.MAX_FILE_BYTES + 1), "larger than 1 MB, not a scenario -- give a scenario "
     "file such as scenarios/ci-short.toml"),
], ids=["binary", "latin-1", "nul-bytes", "nested-too-deeply", "too-big"])
def test_not_scenario_text(tmp_path: Path, content: bytes, message: str) -> None:
    assert message in refused(write(tmp_path, content))


def test_a_byte_order_mark_is_fine(tmp_path: Path) -> None:
    s = scenario.load(write(tmp_path, b"\xef\xbb\xbf" + ONE_TRIAL.encode()))
    assert [t.name for t in s.trials] == ["a"]


def test_a_directory(tmp_path: Path) -> None:
    assert f"{tmp_path}: is a directory, not a scenario file -- give a scenario file" in \
        refused(tmp_path)


def test_missing_file_keeps_its_line(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    assert refused(missing) == (
        f"scenario file {missing} not found -- give a path, or a name that 'lab scenarios' "
        "lists")


def test_a_path_under_a_file_is_not_found(tmp_path: Path) -> None:
    under = write(tmp_path, ONE_TRIAL) / "x.toml"  # ENOTDIR
    assert "not found" in refused(under)


def test_not_a_regular_file(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)  # reading it would block for ever
    assert "is not a regular file" in refused(fifo)
    assert "is not a regular file" in refused(Path("/dev/null"))


def test_a_path_with_a_nul_byte_is_one_line() -> None:
    path = Path("bad\0name\n.toml")
    with pytest.raises(LabError) as info:
        scenario.load(path)
    assert str(info.value) == ("bad\\x00name\\n.toml: cannot be read (embedded null byte) -- "
                               "give a scenario file such as scenarios/ci-short.toml")


def test_unreadable_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Root reads every file whatever its mode, so the refusal is simulated here; the real
    chmod 000 case runs below when the tests do not run as root."""
    path = write(tmp_path, ONE_TRIAL)

    def denied(*args: Any, **kwargs: Any) -> Any:
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(Path, "open", denied)
    assert f"{path}: not readable (permission denied) -- make it readable" in refused(path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a file of mode 000")
def test_unreadable_file_for_real(tmp_path: Path) -> None:
    path = write(tmp_path, ONE_TRIAL)
    path.chmod(0)
    assert "not readable (permission denied)" in refused(path)


# --- --set ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("overrides", "message"), [
    (["client=5"], "trial 'a': client: is a section, not a value (got 5) -- set the keys in it"),
    (["deadline_s.x=1"], "trial 'a': deadline_s: is a value, not a section (got {'x': 1}) -- "
     "write deadline_s = <value>"),
    (['client.tcp_retries2="5"'], "trial 'a': client.tcp_retries2: Input should be a valid "
     "integer (got '5') -- write a whole number, without quotes"),
    (["client.tcp_retries2=true"], "client.tcp_retries2: Input should be a valid integer"),
    (["client.tcp_retries2="], "client.tcp_retries2: Input should be a valid integer (got '')"),
    (["client.so_keepalive=1"], "client.so_keepalive: Input should be a valid boolean (got 1)"),
    (["lb.expire_nodest_conn=true"],
     "lb.expire_nodest_conn: not an integer, write 0 or 1 (got True)"),
    (["fault.at_s=inf"], "fault.at_s: Input should be a finite number (got inf)"),
    (["fault.at_s=nan"], "fault.at_s: Input should be a finite number (got nan)"),
    (["fault.at_s=1e9"], "fault.at_s: Input should be less than or equal to 3600"),
    (["client.tcp_retries=5"], "trial 'a': client.tcp_retries: unknown key (did you mean "
     "client.tcp_retries2?) -- 'lab keys' lists the valid keys"),
    (["clinet.tcp_retries2=5"], "clinet.tcp_retries2: unknown key (did you mean "
     "client.tcp_retries2?)"),
    (["name=../x"], "name: '../x' has '/'"),
    (["name=run.json"], "name: 'run.json' is taken"),
    (["lb.engine=ipvz"], "lb.engine: Input should be 'auto', 'nft', 'ipvs' or 'proxy' (got "
     "'ipvz')"),
], ids=lambda v: v[0] if isinstance(v, list) else None)
def test_bad_set_names_file_trial_key(tmp_path: Path, overrides: list[str],
                                      message: str) -> None:
    assert message in refused(write(tmp_path, ONE_TRIAL), overrides)


def test_set_into_a_value_the_file_gives(tmp_path: Path) -> None:
    path = write(tmp_path, ONE_TRIAL + "deadline_s = 30\n")
    assert "trial 'a': deadline_s.x: deadline_s is a value, not a section -- write " \
        "deadline_s=<value>" in refused(path, ["deadline_s.x=1"])


def test_set_name_on_several_trials_is_a_duplicate(tmp_path: Path) -> None:
    path = write(tmp_path, '[[trial]]\nname = "a"\n[[trial]]\nname = "b"\n')
    assert "two trials are named 'x' -- give each trial its own name (a --set name=... names " \
        "every trial)" in refused(path, ["name=x"])
    one = write(tmp_path, ONE_TRIAL, "one.toml")
    assert [t.name for t in scenario.load(one, ["name=x"]).trials] == ["x"]


@pytest.mark.parametrize(("text", "message"), [
    ("client.tcp_retries2", "--set 'client.tcp_retries2' is not key=value -- write e.g. --set "
     "client.tcp_retries2=5"),
    ("=5", "--set '=5' has no key before '=' -- write e.g. --set client.tcp_retries2=5"),
    ("client.tcp_retries2=5\ndeadline_s=1", "--set 'client.tcp_retries2=5\\ndeadline_s=1': the "
     "value spans lines -- give a value on one line"),
])
def test_set_that_is_not_key_value(tmp_path: Path, text: str, message: str) -> None:
    """A --set's own syntax is about the command line, not the file: the line is the --set's
    (tests/cli/test_main.py holds it exactly so)."""
    with pytest.raises(LabError) as info:
        scenario.load(write(tmp_path, ONE_TRIAL), [text])
    assert str(info.value) == message


# --- every field of its kind ----------------------------------------------------------------

def kinds(annotation: Any) -> set[type]:
    """The scalar types an annotation admits (through Optional, Annotated, Literal)."""
    if annotation in (int, float, bool, str):
        return {annotation}
    if typing.get_origin(annotation) is typing.Literal:
        return {type(a) for a in typing.get_args(annotation)}
    return set().union(*(kinds(a) for a in typing.get_args(annotation)))


def fields() -> dict[str, set[type]]:
    """Every dotted key -> the scalar types it admits."""
    out = {}
    for name, field in TrialSettings.model_fields.items():
        model = field.annotation
        if isinstance(model, type) and issubclass(model, BaseModel):
            out.update({f"{name}.{sub}": kinds(f.annotation)
                        for sub, f in model.model_fields.items()})
        else:
            out[name] = kinds(field.annotation)
    return out


FIELDS = fields()
FLOATS = sorted(k for k, v in FIELDS.items() if float in v)
INTS = sorted(k for k, v in FIELDS.items() if int in v)
BOOLS = sorted(k for k, v in FIELDS.items() if bool in v)


def test_the_kinds_are_found() -> None:
    assert {"deadline_s", "fault.at_s", "load.idle_s", "client.read_timeout_s"} <= set(FLOATS)
    assert {"client.tcp_retries2", "lb.expire_nodest_conn", "lb.port"} <= set(INTS)
    assert {"client.so_keepalive", "capture"} <= set(BOOLS)
    assert set(FIELDS) == set(scenario.valid_keys())


@pytest.mark.parametrize("key", FLOATS)
@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "1e300", "true", '"5"'])
def test_every_float_is_finite_bounded_and_a_number(tmp_path: Path, key: str, value: str) -> None:
    line = refused(write(tmp_path, f"{ONE_TRIAL}{key} = {value}\n"))
    assert f"trial 'a': {key}: " in line


@pytest.mark.parametrize("key", FLOATS)
def test_every_float_takes_an_integer(tmp_path: Path, key: str) -> None:
    value = 80 if key == "latency_ms" else 2
    extra = 'lb.engine = "proxy"\n' if key.startswith("lb.proxy") else ""
    trial = scenario.load(write(tmp_path, f"{ONE_TRIAL}{extra}{key} = {value}\n")).trials[0]
    assert trial.flat()[key] == value and isinstance(trial.flat()[key], float)


@pytest.mark.parametrize("key", INTS)
@pytest.mark.parametrize("value", ["true", "false", '"1"', "1.0"])
def test_every_int_is_an_integer(tmp_path: Path, key: str, value: str) -> None:
    assert f"trial 'a': {key}: " in refused(write(tmp_path, f"{ONE_TRIAL}{key} = {value}\n"))


@pytest.mark.parametrize("key", BOOLS)
@pytest.mark.parametrize("value", ["1", "0", '"true"'])
def test_every_bool_is_a_boolean(tmp_path: Path, key: str, value: str) -> None:
    assert f"trial 'a': {key}: Input should be a valid boolean" in refused(
        write(tmp_path, f"{ONE_TRIAL}{key} = {value}\n"))


def test_the_baseline_deadline_fits(tmp_path: Path) -> None:
    trial = scenario.load(write(tmp_path, ONE_TRIAL + "deadline_s = 940\n")).trials[0]
    assert trial.deadline_s == 940


# --- names ----------------------------------------------------------------------------------

def test_reserved_names_are_the_run_dirs_own() -> None:
    assert {"run.json", "summary.csv", "report"} <= scenario.RESERVED_TRIAL_NAMES
    assert all(n == n.lower() for n in scenario.RESERVED_TRIAL_NAMES)


def test_matrix_names_are_safe_directory_names(tmp_path: Path) -> None:
    path = write(tmp_path, "[matrix]\n'images.mariadb' = ['mysql:8.4', 'library/mariadb']\n")
    trials = scenario.load(path).trials
    assert [t.name for t in trials] == ["mariadb=mysql_8.4", "mariadb=library_mariadb"]
    assert [t.images.mariadb for t in trials] == ["mysql:8.4", "library/mariadb"]  # kept as is


# --- nothing but LabError, whatever the input -----------------------------------------------

def toml(value: Any) -> str:
    """A TOML literal (inline) for a decoded value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") \
            if math.isinf(value) else repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(toml(v) for v in value) + "]"
    return "{" + ", ".join(f"{k} = {toml(v)}" for k, v in value.items()) + "}"


KEY = st.sampled_from([*scenario.valid_keys(), *scenario.SECTIONS, "clinet", "x", "name",
                       "client.x", "deadline_s.x", '"a.b"'])
SCALAR = st.one_of(
    st.booleans(), st.integers(-2**40, 2**40), st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["5", "..", ".lock", "run.json", "a/b", "auto", "ipvs", "idle", "nginx",
                     "sysbench", "crash", "", "x" * 130]),
    st.text(max_size=8))
VALUE = st.recursive(SCALAR, lambda inner: st.lists(inner, max_size=3)
                     | st.dictionaries(KEY, inner, max_size=3), max_leaves=8)
TABLE = st.dictionaries(KEY, VALUE, max_size=5)
DOC = st.fixed_dictionaries({}, optional={
    "description": VALUE, "defaults": st.one_of(TABLE, VALUE),
    "trial": st.one_of(st.lists(st.one_of(TABLE, SCALAR), max_size=3), VALUE),
    "matrix": st.one_of(st.dictionaries(KEY, st.one_of(st.lists(SCALAR, max_size=3), VALUE),
                                        max_size=3), VALUE),
    "junk": VALUE,
})
SET = st.one_of(st.text(max_size=20), st.tuples(KEY, st.one_of(SCALAR.map(toml), st.text(
    max_size=6))).map("=".join))


def loads_or_refuses(path: Path, overrides: list[str]) -> None:
    try:
        s = scenario.load(path, overrides)
    except LabError as exc:
        assert len(str(exc).splitlines()) == 1, str(exc)
        return
    assert s.trials and all(isinstance(t, TrialSettings) for t in s.trials)
    names = [t.name.lower() for t in s.trials]
    assert len(set(names)) == len(names)
    assert not any(n.startswith(".") or n in scenario.RESERVED_TRIAL_NAMES for n in names)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(doc=DOC, overrides=st.lists(SET, max_size=2))
def test_any_document_loads_or_is_one_line(tmp_path: Path, doc: dict[str, Any],
                                           overrides: list[str]) -> None:
    text = "".join(f"{k} = {toml(v)}\n" for k, v in doc.items())
    loads_or_refuses(write(tmp_path, text), overrides)


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=st.binary(max_size=64))
def test_any_bytes_load_or_are_one_line(tmp_path: Path, content: bytes) -> None:
    loads_or_refuses(write(tmp_path, content), [])


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(overrides=st.lists(SET, min_size=1, max_size=3))
def test_any_set_loads_or_is_one_line(tmp_path: Path, overrides: list[str]) -> None:
    loads_or_refuses(write(tmp_path, ONE_TRIAL), overrides)
