"""Scenario files: TOML that expands into validated trials.

    description = "..."
    [defaults]                 # every trial starts from these (TrialSettings keys)
    deadline_s = 60
    client.tcp_retries2 = 5
    [[trial]]                  # explicit trials (each overrides defaults)
    name = "baseline"
    [matrix]                   # optional: the product of these lists, applied to every trial
    "client.tcp_retries2" = [3, 5]
    "lb.expire_nodest_conn" = [0, 1]

A scenario has at least one [[trial]] or a [matrix]. `--set key=value` overrides apply last,
to every trial. Whatever is wrong, in the file or in a --set, is one LabError line:
"<file>: trial '<name>': <key>: <problem> -- <fix>" (the trial where one applies), with the
closest valid key for a typo; so is a file that is missing, a directory, unreadable, not UTF-8
or not TOML (a --set that is not key=value: a line of the --set alone). Trial names are
directory names in the run dir: safe path components, none of RESERVED_TRIAL_NAMES.
"""

from __future__ import annotations

import difflib
import hashlib
import itertools
import math
import re
import reprlib
import stat
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from lab.config.settings import TrialSettings
from lab.errors import LabError

TOP_LEVEL = {"description", "defaults", "trial", "matrix"}
# What the experiment writes into a run dir beside the trial dirs (lab.experiment.results:
# run.json, summary.csv; lab.experiment.report: report/). No trial may be named so, compared
# case-insensitively (a run dir copied to a case-insensitive disk). The lock file, ".lock",
# is covered by the rule that a trial name does not start with ".".
RESERVED_TRIAL_NAMES = frozenset({"run.json", "summary.csv", "report"})
NAME_MAX = 120  # as TrialSettings.name's pattern
# a scenario is a few KB: a bigger file is the wrong file (and /dev/zero would never end)
MAX_FILE_BYTES = 1_000_000
# [[trial]]s x matrix combinations: 10 000 trials of a minute are a week of runs; more is a
# matrix typo, and expanding it would exhaust memory before the first trial
MAX_TRIALS = 10_000
KEYS_FIX = "'lab keys' lists the valid keys"
NAME_FIX = 'rename the trial, e.g. name = "retries2-5" (letters, digits and _ . , = + -)'
SET_FIX = "write e.g. --set client.tcp_retries2=5"
# the scenarios that ship with the lab (package data: a pip install has them too)
SHIPPED_DIR = Path(__file__).resolve().parents[1] / "scenarios"

# the sections of a trial (client, lb, ...) and every valid dotted key, in `lab keys` order
SECTIONS = frozenset(
    name for name, field in TrialSettings.model_fields.items()
    if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel))
_KEYS = dict.fromkeys(TrialSettings().flat())
_NOT_NAME_CHAR = re.compile(r"[^A-Za-z0-9_.,=+-]")
_LINE_BREAK = re.compile(r"[\r\n\x0b\x0c\x1c-\x1e\x85\u2028\u2029]")  # str.splitlines' breaks
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")  # breaks and the like
_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 60
_REPR.maxlevel = 3
# the fix for each pydantic error type (the rest: "fix the value")
_FIXES = {
    "int_type": "write a whole number, without quotes",
    "float_type": "write a number, without quotes",
    "bool_type": "write true or false, without quotes",
    "string_type": "write a quoted string",
    "finite_number": "write a finite number (not inf or nan)",
    "literal_error": "write one of the values listed",
    "string_pattern_mismatch": "write a value of that form",
    "value_error": "change the value as it says",
}
_BOUNDS = {"le": "<=", "lt": "<", "ge": ">=", "gt": ">"}  # pydantic's bound errors' ctx keys


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    trials: list[TrialSettings]
    source: dict[str, Any]
    digest: str = ""  # sha256 hex of the file's bytes (run.json; --resume compares it)
    overrides: tuple[str, ...] = ()  # the --set strings as given


def valid_keys() -> list[str]:
    return list(_KEYS)


@dataclass(frozen=True)
class Shipped:
    """A scenario that ships with the lab, as `lab scenarios` lists it."""

    name: str
    path: Path
    description: str
    trials: int  # [[trial]]s x matrix combinations


def _trial_count(doc: dict[str, Any]) -> int:
    explicit = doc.get("trial", [{}])
    matrix = doc.get("matrix", {})
    sizes = [len(v) for v in matrix.values() if isinstance(v, list)]
    return (len(explicit) if isinstance(explicit, list) else 1) * math.prod(sizes)


def shipped(folder: Path = SHIPPED_DIR) -> list[Shipped]:
    """The shipped scenarios by name, read as TOML only (listing them validates nothing)."""
    out = []
    for path in sorted(folder.glob("*.toml")):
        doc = _parse(path, _read_bytes(path))
        out.append(Shipped(path.stem, path, str(doc.get("description", "")),
                           _trial_count(doc)))
    return out


def resolve(text: str) -> Path:
    """A scenario argument as a path: the file it names, else the shipped scenario of that
    name ("seed-lvs-mysql" or "seed-lvs-mysql.toml"), else the path as given (which then
    fails to load with the one line saying so)."""
    path = Path(text)
    if path.exists() or "/" in text:
        return path
    candidate = SHIPPED_DIR / (text if text.endswith(".toml") else f"{text}.toml")
    return candidate if candidate.is_file() else path


def _show(value: Any) -> str:
    """A value for an error line: its repr, shortened."""
    return _REPR.repr(value)


def _error(problem: str, fix: str) -> LabError:
    """A LabError that is one line whatever the file held (keys and paths may hold breaks)."""
    def flat(text: str) -> str:
        return _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)
    return LabError(flat(problem), flat(fix))


def _unknown(key: str) -> str:
    close = difflib.get_close_matches(key[:200], list(_KEYS), n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return f"unknown key{hint}"


def _example(section: str) -> str:
    """The first key of a section, for a fix that shows one."""
    return next(k for k in _KEYS if k.startswith(f"{section}."))


# --- the file -------------------------------------------------------------------------------

def _reason(exc: OSError | ValueError) -> str:
    return (exc.strerror if isinstance(exc, OSError) else None) or str(exc)


def _read_bytes(path: Path) -> bytes:
    """The file's bytes: a regular file, readable, at most MAX_FILE_BYTES."""
    fix = "give a scenario file such as scenarios/ci-short.toml"
    try:
        mode = path.stat().st_mode
    except (FileNotFoundError, NotADirectoryError):
        raise _error(f"scenario file {path} not found",
                     "give a path, or a name that 'lab scenarios' lists") from None
    except (OSError, ValueError) as exc:
        raise _error(f"{path}: cannot be read ({_reason(exc)})", fix) from None
    if stat.S_ISDIR(mode):
        raise _error(f"{path}: is a directory, not a scenario file", fix)
    if not stat.S_ISREG(mode):
        raise _error(f"{path}: is not a regular file", fix)
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except PermissionError:
        raise _error(f"{path}: not readable (permission denied)",
                     "make it readable (chmod a+r) or run lab as a user who can read it") from None
    except OSError as exc:
        raise _error(f"{path}: cannot be read ({_reason(exc)})", fix) from None
    if len(raw) > MAX_FILE_BYTES:
        raise _error(f"{path}: larger than {MAX_FILE_BYTES // 1_000_000} MB, not a scenario", fix)
    return raw


def _parse(path: Path, raw: bytes) -> dict[str, Any]:
    """The file's TOML document (UTF-8, a BOM allowed)."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise _error(f"{path}: not UTF-8 text (byte 0x{raw[exc.start]:02x} on line {line}, "
                     f"offset {exc.start})", "a scenario is TOML text: is this the right file?"
                     ) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise _error(f"{path}: not valid TOML ({exc})", "fix the syntax at that line") from None
    except RecursionError:
        raise _error(f"{path}: not valid TOML (nested too deeply)",
                     "a scenario nests two levels at most, e.g. client.tcp_retries2 = 5") from None


def _check_top(path: Path, doc: dict[str, Any]) -> None:
    """Only the known top-level keys, each of its kind; [defaults] of the trials' shape."""
    unknown = set(doc) - TOP_LEVEL
    if unknown:
        key = sorted(unknown)[0]
        raise _error(
            f"{path}: unknown top-level key {key!r}",
            f"use only {', '.join(sorted(TOP_LEVEL))} (trial settings go under [defaults] "
            "or [[trial]])",
        )
    description = doc.get("description", "")
    if not isinstance(description, str):
        raise _error(f"{path}: description: must be a string (got {_show(description)})",
                     'write description = "what the scenario shows"')
    defaults = doc.get("defaults", {})
    if not isinstance(defaults, dict):
        raise _error(f"{path}: defaults: must be a table (got {_show(defaults)})",
                     "write a [defaults] section, with key = value lines under it")
    _check_shape(f"{path}: [defaults]", defaults)


# --- the shape of a trial's table -------------------------------------------------------------

def _section_problem(key: str, value: Any) -> tuple[str, str, str] | None:
    if not isinstance(value, dict):
        return (key, f"is a section, not a value (got {_show(value)})",
                f"set the keys in it, e.g. {_example(key)} = ...")
    for sub, v in value.items():
        full = f"{key}.{sub}"
        if full not in _KEYS:
            return full, _unknown(full), KEYS_FIX
        if isinstance(v, dict):
            return full, f"is a value, not a section (got {_show(v)})", f"write {full} = <value>"
    return None


def _shape_problem(table: dict[str, Any]) -> tuple[str, str, str] | None:
    """(key, problem, fix) of the first key that is unknown, or a section given a value, or a
    value given keys; None if the table has the shape of TrialSettings."""
    for key, value in table.items():
        if key in SECTIONS:
            found = _section_problem(key, value)
        elif key in _KEYS:
            found = (key, f"is a value, not a section (got {_show(value)})",
                     f"write {key} = <value>") if isinstance(value, dict) else None
        else:
            sub = next(iter(value), None) if isinstance(value, dict) else None
            full = key if sub is None else f"{key}.{sub}"
            found = full, _unknown(full), KEYS_FIX
        if found:
            return found
    return None


def _check_shape(where: str, table: dict[str, Any]) -> None:
    found = _shape_problem(table)
    if found:
        key, problem, fix = found
        raise _error(f"{where}: {key[:200]}: {problem}", fix)


# --- trials and the matrix ------------------------------------------------------------------

def _label(trial_doc: dict[str, Any], index: int) -> str:
    """A trial in an error line before its final name is known."""
    name = trial_doc.get("name")
    return f"trial {name!r}" if _name_problem(name) is None else f"trial #{index + 1}"


def _no_trials(path: Path) -> LabError:
    return _error(f"{path}: no trials",
                  'add a [[trial]] section (e.g. name = "baseline") or a [matrix] of values')


def _explicit_trials(path: Path, doc: dict[str, Any], matrix: bool) -> list[dict[str, Any]]:
    """The [[trial]] tables ([{}] if there are none but a matrix)."""
    if "trial" not in doc:
        if not matrix:
            raise _no_trials(path)
        return [{}]
    explicit = doc["trial"]
    if not isinstance(explicit, list):
        raise _error(f"{path}: trial: must be an array of tables (got {_show(explicit)})",
                     "write each trial as a [[trial]] section")
    if not explicit:
        raise _no_trials(path)
    for index, trial_doc in enumerate(explicit):
        if not isinstance(trial_doc, dict):
            raise _error(f"{path}: trial #{index + 1}: must be a table (got {_show(trial_doc)})",
                         "write each trial as a [[trial]] section, with key = value lines")
        _check_shape(f"{path}: {_label(trial_doc, index)}", trial_doc)
    return explicit


def _check_matrix_key(path: Path, key: str, values: Any) -> None:
    at = f"{path}: matrix: {key[:200]}"
    if key in SECTIONS:
        raise _error(f"{at}: is a section, not a key",
                     f'write the full key in quotes, e.g. "{_example(key)}" = [..., ...]')
    if key not in _KEYS:
        raise _error(f"{at}: {_unknown(key)}", KEYS_FIX)
    if key == "name":
        raise _error(f"{at}: trial names are made from the matrix values",
                     "remove name from [matrix]; name the [[trial]]s instead")
    if not isinstance(values, list) or not values:
        raise _error(f"{at}: must be a non-empty list (got {_show(values)})",
                     f'write e.g. "{key}" = [3, 5]')
    for value in values:
        if isinstance(value, dict | list):
            raise _error(f"{at}: {_show(value)} is not a plain value",
                         f'list numbers, strings or booleans, e.g. "{key}" = [3, 5]')


def _matrix(path: Path, doc: dict[str, Any]) -> dict[str, list[Any]]:
    """The [matrix] table, checked: valid full keys, each with a non-empty list of values."""
    matrix = doc.get("matrix", {})
    if not isinstance(matrix, dict):
        raise _error(f"{path}: matrix: must be a table of lists (got {_show(matrix)})",
                     'write [matrix] and under it e.g. "client.tcp_retries2" = [3, 5]')
    for key, values in matrix.items():
        _check_matrix_key(path, key, values)
    return matrix


def _combos(path: Path, matrix: dict[str, list[Any]], explicit: int) -> list[dict[str, Any]]:
    """The product of the [matrix] lists, one {key: value} per combination ([{}] without one)."""
    count = explicit * math.prod(len(values) for values in matrix.values())
    if count > MAX_TRIALS:
        raise _error(f"{path}: {count} trials ([[trial]]s x matrix combinations), more than "
                     f"{MAX_TRIALS}", "use fewer matrix values, or split the scenario")
    return [dict(zip(matrix, vals, strict=True)) for vals in itertools.product(*matrix.values())]


def _name_problem(name: Any) -> str | None:
    """Why `name` cannot be a trial's directory in the run dir (None: it can)."""
    if not isinstance(name, str):
        return f"must be a string (got {_show(name)})"
    if not name:
        return "is empty"
    if len(name) > NAME_MAX:
        return f"is {len(name)} characters, more than {NAME_MAX}"
    bad = _NOT_NAME_CHAR.search(name)
    if bad:
        return (f"{_show(name)} has {bad.group()!r}, but a trial name is a directory name: "
                "only letters, digits and _ . , = + -")
    if name.startswith("."):
        return f"{name!r} starts with '.' (a hidden file, or the directory itself or its parent)"
    if name.lower() in RESERVED_TRIAL_NAMES:
        return f"{name!r} is taken: the run directory holds its own {name.lower()}"
    return None


def _matrix_name(combo: dict[str, Any]) -> str:
    """key=value,... of a combination; characters a name cannot hold become _."""
    parts = [f"{key.split('.')[-1]}={value}" for key, value in combo.items()]
    return _NOT_NAME_CHAR.sub("_", ",".join(parts).replace(" ", ""))


def _trial_name(where: str, trial_doc: dict[str, Any], data: dict[str, Any], index: int,
                combo: dict[str, Any], named_by_set: bool) -> str:
    """The trial's own name (--set name, else its name, else [defaults]'s, else trialN); with a
    matrix, the combination's values, appended to the trial's own name if it has one."""
    own = data.get("name", f"trial{index + 1}")
    problem = _name_problem(own)
    if problem:
        raise _error(f"{where}: name: {problem}", NAME_FIX)
    if not combo:
        return own
    named = "name" in trial_doc or named_by_set
    name = f"{own}-{_matrix_name(combo)}" if named else _matrix_name(combo)
    problem = _name_problem(name)
    if problem:
        raise _error(f"{where}: name, with the matrix values: {problem}",
                     "use a shorter trial name, or fewer [matrix] keys")
    return name


# --- overrides and expansion ----------------------------------------------------------------

def _set_dotted(tree: dict[str, Any], key: str, value: Any, where: str = "--set") -> None:
    node = tree
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise _error(f"{where}: {key[:200]}: {part[:200]} is a value, not a section",
                         f"write {part[:200]}=<value>, or a key such as {_example('client')}")
        node = child
    node[parts[-1]] = value


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_override(text: str) -> tuple[str, Any]:
    """'client.tcp_retries2=5' -> ('client.tcp_retries2', 5); values are TOML literals,
    anything that is not one is taken as a string ('5' is an int, '"5"' a string)."""
    if "=" not in text:
        raise _error(f"--set {text!r} is not key=value", SET_FIX)
    key, raw = (s.strip() for s in text.split("=", 1))
    if not key:
        raise _error(f"--set {text!r} has no key before '='", SET_FIX)
    if _LINE_BREAK.search(raw):
        raise _error(f"--set {text!r}: the value spans lines", "give a value on one line")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except (tomllib.TOMLDecodeError, RecursionError):
        value = raw
    return key, value


def _describe_error(err: Any) -> str:
    loc = ".".join(str(p) for p in err["loc"])
    if err["type"] == "extra_forbidden":
        return f"{loc}: {_unknown(loc)}"
    msg = " ".join(str(err["msg"]).split()).removeprefix("Value error, ")
    if not loc:  # a check of the whole trial: its input is the trial's table
        return msg
    return f"{loc}: {msg} (got {_show(err.get('input'))})"


def build_trial(data: dict[str, Any], where: str) -> TrialSettings:
    try:
        return TrialSettings.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        first = _describe_error(errors[0])
        more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
        raise _error(f"{where}: {first}{more}", _fix(errors[0], where)) from None


def _number(value: Any) -> str:
    """3600.0 -> '3600', 0.5 -> '0.5'."""
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def _fix(err: Any, where: str) -> str:
    """What to do about a pydantic error, in the file or the --set it came from."""
    if err["type"] == "extra_forbidden":
        return KEYS_FIX
    ctx = err.get("ctx", {})
    bound = [f"{op} {_number(ctx[key])}" for key, op in _BOUNDS.items() if key in ctx]
    what = f"write a value {bound[0]}" if bound else _FIXES.get(err["type"], "fix the value")
    return f"{what}, in {where.rsplit(': trial ', 1)[0]} or in --set"


def _one_trial(path: Path, defaults: dict[str, Any], trial_doc: dict[str, Any], index: int,
               combo: dict[str, Any], overrides: list[tuple[str, Any]]) -> TrialSettings:
    """[defaults], then the [[trial]], the matrix combination and the --set values."""
    data = _merge(defaults, trial_doc)
    where = f"{path}: {_label(trial_doc, index)}"
    for key, value in [*combo.items(), *overrides]:
        _set_dotted(data, key, value, where)
    named_by_set = any(key == "name" for key, _ in overrides)
    data["name"] = name = _trial_name(where, trial_doc, data, index, combo, named_by_set)
    where = f"{path}: trial {name!r}"
    _check_shape(where, data)
    return build_trial(data, where)


def _duplicate(path: Path, first: str, second: str) -> LabError:
    fix = "give each trial its own name (a --set name=... names every trial)"
    if first == second:
        return _error(f"{path}: two trials are named {first!r}", fix)
    return _error(f"{path}: trials {first!r} and {second!r} differ only in case (one directory "
                  "on a case-insensitive disk)", fix)


def _expand(path: Path, defaults: dict[str, Any], explicit: list[dict[str, Any]],
            combos: list[dict[str, Any]], overrides: list[tuple[str, Any]]) -> list[TrialSettings]:
    """Every [[trial]] x every matrix combination, validated; names unique (in any case)."""
    trials: list[TrialSettings] = []
    seen: dict[str, str] = {}
    for index, trial_doc in enumerate(explicit):
        for combo in combos:
            trial = _one_trial(path, defaults, trial_doc, index, combo, overrides)
            if trial.name.lower() in seen:
                raise _duplicate(path, seen[trial.name.lower()], trial.name)
            seen[trial.name.lower()] = trial.name
            trials.append(trial)
    return trials


def load(path: Path, overrides: list[str] | None = None) -> Scenario:
    """The scenario file at `path` as validated trials, `--set` overrides applied last."""
    path = Path(path)
    given = tuple(overrides or ())
    raw = _read_bytes(path)
    doc = _parse(path, raw)
    _check_top(path, doc)
    matrix = _matrix(path, doc)
    explicit = _explicit_trials(path, doc, bool(matrix))
    combos = _combos(path, matrix, len(explicit))
    parsed = [parse_override(o) for o in given]
    trials = _expand(path, doc.get("defaults", {}), explicit, combos, parsed)
    return Scenario(path.stem, doc.get("description", ""), trials, doc,
                    hashlib.sha256(raw).hexdigest(), given)
