"""The key reference (`lab keys`) and the JSON Schema of a scenario file (`lab keys --schema`).

Both are read off the settings model (its fields' types, bounds, defaults, descriptions and
units, through pydantic's JSON Schema), so neither can drift from what a scenario may say. TOML
has no null: a key whose default is None is "unset" (the kernel's or the library's default
applies), and the schema describes it by its value's type alone.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import asdict, dataclass
from typing import Any

from lab.config.settings import TrialSettings

SCHEMA_DRAFT = "https://json-schema.org/draft/2020-12/schema"
_BOUNDS = (("exclusiveMinimum", ">"), ("minimum", ">="), ("exclusiveMaximum", "<"),
           ("maximum", "<="))
# the parts of a scenario file around the trial settings (lab.config.scenario)
_TOP = {
    "description": "one line: what the scenario shows ('lab scenarios' lists it)",
    "defaults": "settings every trial starts from",
    "trial": "the trials, each a table of settings over [defaults]",
    "matrix": "lists of values for dotted keys; every combination is applied to every trial",
}


@dataclass(frozen=True)
class Key:
    """One scenario key as `lab keys` shows it; default None = unset."""

    key: str
    type: str
    unit: str | None
    range: str
    default: Any
    description: str
    choices: list[Any] | None = None
    pattern: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _without_null(prop: dict[str, Any]) -> dict[str, Any]:
    """An `X | None` field as X (TOML has no null: such a key is left out), no titles."""
    out = {k: v for k, v in prop.items() if k != "title"}
    branches = out.pop("anyOf", None)
    if branches is not None:
        kept = [b for b in branches if b.get("type") != "null"]
        if len(kept) != 1:
            raise ValueError(f"a setting of two types cannot be described: {prop}")
        out = {**kept[0], **out}
    if out.get("default", 0) is None or "$ref" in out:  # a section's default: its keys'
        out.pop("default", None)
    return out


@functools.cache
def _model_schema() -> dict[str, Any]:
    """TrialSettings' JSON Schema with the nulls taken out of every field."""
    schema = TrialSettings.model_json_schema()
    for model in [schema, *schema["$defs"].values()]:
        model.pop("title", None)
        model["properties"] = {
            name: _without_null(prop) for name, prop in model["properties"].items()}
    return schema


def _sections() -> list[tuple[str, str, dict[str, Any]]]:
    """(prefix, description, properties) of the trial's top level ("") and of each section."""
    schema = _model_schema()
    top = {n: p for n, p in schema["properties"].items() if "$ref" not in p}
    out = [("", str(schema.get("description", "")), top)]
    for name, prop in schema["properties"].items():
        if "$ref" in prop:
            model = schema["$defs"][prop["$ref"].rsplit("/", 1)[-1]]
            out.append((name, str(model.get("description", "")), model["properties"]))
    return out


def _range(prop: dict[str, Any]) -> str:
    if "enum" in prop:
        return " | ".join(toml_value(v) for v in prop["enum"])
    bounds = {op: prop[k] for k, op in _BOUNDS if k in prop}
    if set(bounds) == {">=", "<="}:
        return f"{toml_value(bounds['>='])}..{toml_value(bounds['<='])}"
    return ", ".join(f"{op} {toml_value(v)}" for op, v in bounds.items())


def toml_value(value: Any) -> str:
    """A value as TOML writes it: true, 5, 2.5, "auto" (never Python's True or None)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and math.isfinite(value):
        return repr(value)
    if isinstance(value, int | str):
        return json.dumps(value)
    raise ValueError(f"no TOML literal for {value!r}")


def _type(prop: dict[str, Any]) -> str:
    """JSON Schema's type, an array by its items' ("array of string": load.command)."""
    kind = prop.get("type", "?")
    return f"array of {prop.get('items', {}).get('type', '?')}" if kind == "array" else kind


def all_keys() -> list[Key]:
    """Every scenario key, in the order of the settings model."""
    out = []
    for prefix, _, props in _sections():
        for name, prop in props.items():
            out.append(Key(
                key=f"{prefix}.{name}" if prefix else name, type=_type(prop),
                unit=prop.get("unit"), range=_range(prop), default=prop.get("default"),
                description=prop.get("description", ""), choices=prop.get("enum"),
                pattern=prop.get("pattern")))
    return out


def _comments(k: Key) -> list[str]:
    facts = ", ".join(x for x in (k.type, k.unit, k.range) if x)
    default = "unset" if k.default is None else toml_value(k.default)
    return [f"# {k.description}", f"#   {facts}; default: {default}"]


def _line(k: Key) -> str:
    """The key's line: its default, or commented out when unset (and for name, which each
    trial sets: a name in [defaults] would name every trial alike)."""
    if k.default is None:
        return f"# {k.key} = ..."
    line = f"{k.key} = {toml_value(k.default)}"
    return f"# {line}" if k.key == "name" else line


def toml() -> str:
    """Every key under [defaults] with its description, type, unit, range and default: TOML
    to paste into a scenario (each line also fits a [[trial]], or a --set without spaces)."""
    lines = ["# blackhole-lab scenario keys: paste what you need into a scenario's [defaults]",
             "# or a [[trial]]. A commented-out key is unset (the kernel's or library's default).",
             "[defaults]"]
    by_key = {k.key: k for k in all_keys()}
    for prefix, description, props in _sections():
        title = f"{prefix}: {description}" if prefix else "the trial"
        lines += ["", f"# --- {title.splitlines()[0]}"]
        for name in props:
            k = by_key[f"{prefix}.{name}" if prefix else name]
            lines += [*_comments(k), _line(k)]
    return "\n".join(lines) + "\n"


def _matrix_schema() -> dict[str, Any]:
    """[matrix]: a non-empty list of values for any dotted key but name."""
    props: dict[str, Any] = {}
    for prefix, _, fields in _sections():
        for name, prop in fields.items():
            dotted = f"{prefix}.{name}" if prefix else name
            if dotted != "name":
                item = {k: v for k, v in prop.items() if k not in ("default", "description")}
                props[dotted] = {"type": "array", "minItems": 1, "items": item,
                                 "description": prop.get("description", "")}
    return {"type": "object", "description": _TOP["matrix"], "additionalProperties": False,
            "properties": props}


def scenario_schema() -> dict[str, Any]:
    """A JSON Schema of a scenario file, for editors (taplo, Even Better TOML): completion,
    hover text and checks of every key while the file is written."""
    model = _model_schema()
    trial = {k: v for k, v in model.items() if k != "$defs"}
    return {
        "$schema": SCHEMA_DRAFT,
        "title": "blackhole-lab scenario",
        "description": "A blackhole-lab scenario: [defaults], [[trial]] tables and a [matrix]",
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "description": {"type": "string", "description": _TOP["description"]},
            "defaults": {"$ref": "#/$defs/Trial", "description": _TOP["defaults"]},
            "trial": {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/Trial"},
                      "description": _TOP["trial"]},
            "matrix": _matrix_schema(),
        },
        "anyOf": [{"required": ["trial"]}, {"required": ["matrix"]}],
        "$defs": {**model["$defs"], "Trial": trial},
    }
