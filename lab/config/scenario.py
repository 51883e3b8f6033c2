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

`--set key=value` overrides apply last, to every trial. Every error names the file, the trial
and the key, and suggests the closest valid key for a typo.
"""

from __future__ import annotations

import difflib
import itertools
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from lab.config.settings import TrialSettings
from lab.errors import LabError

TOP_LEVEL = {"description", "defaults", "trial", "matrix"}


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    trials: list[TrialSettings]
    source: dict[str, Any]


def valid_keys() -> list[str]:
    return list(TrialSettings().flat())


def _set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    node = tree
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise LabError(f"{key}: {part} is a value, not a section", "check the key")
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
    anything that is not one is taken as a string."""
    if "=" not in text:
        raise LabError(f"--set {text!r} is not key=value", "write e.g. --set client.tcp_retries2=5")
    key, raw = (s.strip() for s in text.split("=", 1))
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key, value


def _describe_error(err: dict[str, Any]) -> str:
    loc = ".".join(str(p) for p in err["loc"])
    if err["type"] == "extra_forbidden":
        close = difflib.get_close_matches(loc, valid_keys(), n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]}?)" if close else ""
        return f"{loc}: unknown key{hint}"
    return f"{loc}: {err['msg']} (got {err.get('input')!r})"


def build_trial(data: dict[str, Any], where: str) -> TrialSettings:
    try:
        return TrialSettings.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        first = _describe_error(errors[0])
        more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
        fix = (
            "'lab keys' lists the valid keys"
            if errors[0]["type"] == "extra_forbidden"
            else f"fix the value in {where.split(':')[0]} or in --set"
        )
        raise LabError(f"{where}: {first}{more}", fix) from None


def _matrix_name(combo: dict[str, Any]) -> str:
    parts = []
    for key, value in combo.items():
        short = key.split(".")[-1]
        parts.append(f"{short}={value}")
    return ",".join(parts).replace(" ", "")


def _read(path: Path) -> dict[str, Any]:
    """The scenario file's TOML, with only the known top-level keys."""
    if not path.exists():
        raise LabError(f"scenario file {path} not found", "give a path such as scenarios/*.toml")
    try:
        doc = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise LabError(f"{path}: not valid TOML ({exc})", "fix the syntax at that line") from None
    unknown = set(doc) - TOP_LEVEL
    if unknown:
        key = sorted(unknown)[0]
        raise LabError(
            f"{path}: unknown top-level key {key!r}",
            f"use only {', '.join(sorted(TOP_LEVEL))} (trial settings go under [defaults] "
            "or [[trial]])",
        )
    return doc


def _combos(path: Path, matrix: dict[str, Any]) -> list[dict[str, Any]]:
    """The product of the [matrix] lists, one {key: value} per combination ([{}] without one)."""
    for key, values in matrix.items():
        if not isinstance(values, list) or not values:
            raise LabError(
                f"{path}: matrix key {key!r} must be a non-empty list",
                f'write e.g. "{key}" = [3, 5]',
            )
    return [dict(zip(matrix, vals, strict=True)) for vals in itertools.product(*matrix.values())]


def _trial_name(trial_doc: dict[str, Any], data: dict[str, Any], index: int,
                combo: dict[str, Any]) -> str:
    """The trial's own name; a matrix combination's values, appended to it if it has one."""
    base = str(trial_doc.get("name", data.get("name", f"trial{index + 1}")))
    if not combo:
        return base
    return _matrix_name(combo) if "name" not in trial_doc else f"{base}-{_matrix_name(combo)}"


def _expand(path: Path, doc: dict[str, Any], overrides: list[str]) -> list[TrialSettings]:
    """Every [[trial]] x every matrix combination: defaults, then the trial, the combination
    and the overrides, validated; names must be unique."""
    defaults = doc.get("defaults", {})
    explicit = doc.get("trial", [{}])
    if not isinstance(explicit, list):
        raise LabError(f"{path}: 'trial' must be an array of tables", "write [[trial]] sections")
    combos = _combos(path, doc.get("matrix", {}))
    parsed_overrides = [parse_override(o) for o in overrides]
    trials: list[TrialSettings] = []
    seen: set[str] = set()
    for index, trial_doc in enumerate(explicit):
        for combo in combos:
            data = _merge(defaults, trial_doc)
            for key, value in [*combo.items(), *parsed_overrides]:
                _set_dotted(data, key, value)
            data["name"] = name = _trial_name(trial_doc, data, index, combo)
            trial = build_trial(data, f"{path}: trial {name!r}")
            if trial.name in seen:
                raise LabError(f"{path}: two trials are named {trial.name!r}", "give each a name")
            seen.add(trial.name)
            trials.append(trial)
    return trials


def load(path: Path, overrides: list[str] | None = None) -> Scenario:
    """The scenario file at `path` as validated trials, `--set` overrides applied last."""
    doc = _read(path)
    trials = _expand(path, doc, overrides or [])
    return Scenario(path.stem, str(doc.get("description", "")), trials, doc)
