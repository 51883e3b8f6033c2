"""Traffic-manager state: plans, sites, thresholds, shifts, and the state file that holds them.

A state file is TOML or JSON (chosen by the suffix) with the same structure:

    description = "optional text"

    [thresholds]               # defaults for every site; a site may override any of them
    max = 0.88                 # above this utilisation the site sheds traffic ...
    target = 0.85              # ... until it is down to this
    acceptable = 0.65          # below this it takes traffic back, or accepts other sites'

    [sites.A]
    utilisation = 0.84         # measured CPU utilisation now (0 < u <= 1), shifts applied
    cpu_ms_per_s = { free = 500, pro = 400, business = 200, enterprise = 1000 }
    thresholds = { max = 0.75, target = 0.44, acceptable = 0.4 }   # optional override

    [latency_ms]               # every pair of sites, once (it applies both ways)
    A = { B = 100, C = 110 }
    B = { C = 30 }

    [[shifts]]                 # active shifts: a fraction of a plan's traffic of `source`
    plan = "free"              # that is currently served by `destination`
    source = "A"
    destination = "B"
    fraction = 0.2

`cpu_ms_per_s` is each plan's CPU time (ms per second) of the site's *own* traffic: what
arrives at the site, before any shift. Shift fractions are fractions of exactly these numbers,
so they map onto per-plan load-balancer weights at the source. The load a site serves now is
its own traffic minus what it shifts out plus what others shift to it; dividing that load by
the measured utilisation gives the site's capacity (ms/s at 100 %), which is what makes load
scale linearly with utilisation. Plans missing from `cpu_ms_per_s` carry no traffic.

Numbers are read as the decimals written (0.9 is exactly 9/10), so results are exact.
Every error is one line naming the file, the field and the fix.
"""

from __future__ import annotations

import difflib
import json
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import IntEnum
from fractions import Fraction
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lab.errors import LabError


class Plan(IntEnum):
    """Customer plans; a higher value is a higher priority (shifted last, placed nearest)."""

    FREE = 0
    PRO = 1
    BUSINESS = 2
    ENTERPRISE = 3

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, text: str) -> Plan:
        return cls[text.upper()]


PLANS_LOW_FIRST: tuple[Plan, ...] = tuple(Plan)
PLANS_HIGH_FIRST: tuple[Plan, ...] = tuple(reversed(Plan))


@dataclass(frozen=True)
class Thresholds:
    """Utilisation thresholds; acceptable <= target < max gives the loop its hysteresis."""

    max: Fraction
    target: Fraction
    acceptable: Fraction


@dataclass(frozen=True)
class Site:
    name: str
    utilisation: Fraction
    cpu_ms_per_s: Mapping[Plan, Fraction]  # own traffic per plan, before any shift
    thresholds: Thresholds

    def own(self, plan: Plan) -> Fraction:
        return self.cpu_ms_per_s.get(plan, Fraction(0))


@dataclass(frozen=True, order=True)
class Shift:
    """`fraction` of `plan`'s own traffic at `source` is served by `destination`."""

    source: str
    plan: Plan
    destination: str
    fraction: Fraction


@dataclass(frozen=True)
class State:
    sites: Mapping[str, Site]
    latency: Mapping[frozenset[str], Fraction]  # ms, per unordered pair of sites
    shifts: tuple[Shift, ...] = ()
    description: str = ""

    def latency_ms(self, a: str, b: str) -> Fraction:
        return self.latency[frozenset((a, b))]

    def served_by_plan(self, name: str) -> dict[Plan, Fraction]:
        """CPU ms/s per plan that `name` serves now: own kept + shifted in."""
        site = self.sites[name]
        out = {plan: site.own(plan) for plan in Plan}
        for s in self.shifts:
            amount = s.fraction * self.sites[s.source].own(s.plan)
            if s.source == name:
                out[s.plan] -= amount
            if s.destination == name:
                out[s.plan] += amount
        return out

    def served(self, name: str) -> Fraction:
        return sum(self.served_by_plan(name).values(), Fraction(0))

    def capacity(self, name: str) -> Fraction:
        """CPU ms/s the site would serve at utilisation 1 (load scales linearly)."""
        return self.served(name) / self.sites[name].utilisation


# --- the file format, as pydantic models (strict: 0.5 but not "0.5", no unknown keys) ----------

PlanName = Literal["free", "pro", "business", "enterprise"]
Unit = Annotated[float, Field(gt=0, le=1)]
NonNeg = Annotated[float, Field(ge=0)]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class ThresholdsIn(_In):
    max: Unit | None = None
    target: Unit | None = None
    acceptable: Unit | None = None


class _SiteIn(_In):
    utilisation: Unit
    cpu_ms_per_s: dict[PlanName, NonNeg]
    thresholds: ThresholdsIn = ThresholdsIn()


class _ShiftIn(_In):
    plan: PlanName
    source: str
    destination: str
    fraction: Unit


class _StateIn(_In):
    description: str = ""
    thresholds: ThresholdsIn = ThresholdsIn()
    sites: dict[str, _SiteIn] = Field(min_length=1)
    latency_ms: dict[str, dict[str, NonNeg]] = {}
    shifts: list[_ShiftIn] = []


def known_keys(top: type[BaseModel], **tables: type[BaseModel]) -> dict[str, list[str]]:
    """The valid keys of a file's top level ("") and of each of its tables, by table name
    (pydantic_error's 'did you mean' and 'valid keys here')."""
    return {"": list(top.model_fields), **{n: list(m.model_fields) for n, m in tables.items()}}


_KEYS = known_keys(_StateIn, thresholds=ThresholdsIn, sites=_SiteIn, shifts=_ShiftIn)


def exact(x: float) -> Fraction:
    """The decimal as written: 0.9 -> 9/10, not the nearest binary float."""
    return Fraction(repr(x))


def where(loc: tuple[int | str, ...]) -> str:
    """A pydantic error location as the user writes it: sites.A.thresholds.max, events[2]."""
    out = ""
    for part in loc:
        if part == "[key]":
            continue
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _section(loc: tuple[int | str, ...]) -> str:
    """Which table an unknown key at `loc` sits in (sites.X.thresholds is a thresholds table)."""
    if loc[0] == "sites":
        return "thresholds" if len(loc) == 4 else "sites"
    if loc[0] in ("thresholds", "shifts"):
        return str(loc[0])
    return ""


def pydantic_error(
    path: Path,
    exc: ValidationError,
    keys: Mapping[str, list[str]],
    section: Callable[[tuple[int | str, ...]], str],
    format_doc: str,
) -> LabError:
    """The first validation error of a state or scenario file as one line with its fix.

    keys: the valid keys per table (section(loc) names the table an unknown key sits in);
    format_doc: where the file format is described.
    """
    err = exc.errors()[0]
    # a union (e.g. `float | None`) reports each branch; keep the loc without the branch name
    loc = tuple(p for p in err["loc"] if p not in ("float", "constrained-float", "none"))
    at = where(loc)
    more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    kind = err["type"]
    if kind == "extra_forbidden":
        name = str(loc[-1])
        valid = keys[section(loc)]
        close = difflib.get_close_matches(name, valid, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}? " if close else ""
        return LabError(
            f"{path}: {at}: unknown key{more}",
            f"{hint}valid keys here: {', '.join(valid)}",
        )
    if kind == "missing":
        return LabError(f"{path}: {at}: missing{more}", f"add {at} (format: {format_doc})")
    if kind == "literal_error" and "[key]" in loc:
        return LabError(
            f"{path}: {at}: unknown plan {[x for x in loc if x != '[key]'][-1]!r}{more}",
            "plans are free, pro, business, enterprise",
        )
    return LabError(
        f"{path}: {at}: {err['msg'].lower()} (got {err.get('input')!r}){more}",
        f"correct {at} in {path.name}",
    )


M = TypeVar("M", bound=BaseModel)


def validate_file(doc: Any, path: Path, model: type[M], keys: Mapping[str, list[str]],
                  section: Callable[[tuple[int | str, ...]], str], format_doc: str,
                  top_level: str = "table") -> M:
    """A decoded state or scenario file as `model`, or its first error as one LabError line
    (pydantic_error's arguments; top_level: what the file's top level must be called)."""
    if not isinstance(doc, dict):
        raise LabError(f"{path}: the top level must be a {top_level}", f"see {format_doc}")
    try:
        return model.model_validate(doc)
    except ValidationError as exc:
        raise pydantic_error(path, exc, keys, section, format_doc) from None


def _read(path: Path) -> Any:
    if not path.is_file():
        raise LabError(f"state file {path} not found", "give a path such as scenarios/tm/*.toml")
    text = path.read_text()
    if path.suffix == ".toml":
        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise LabError(f"{path}: not valid TOML ({exc})", "fix the syntax there") from None
    if path.suffix == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise LabError(
                f"{path}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})",
                "fix the syntax there",
            ) from None
    raise LabError(f"{path}: unknown state file type {path.suffix!r}", "name it *.toml or *.json")


def thresholds_from(path: Path, name: str, own: ThresholdsIn, default: ThresholdsIn) -> Thresholds:
    """A site's thresholds: its own values over the file's defaults, in a valid order."""
    values: dict[str, Fraction] = {}
    for key in ("max", "target", "acceptable"):
        value = getattr(own, key)
        value = getattr(default, key) if value is None else value
        if value is None:
            raise LabError(
                f"{path}: sites.{name}.thresholds.{key}: missing and no default",
                f"set {key} under [thresholds] (all sites) or [sites.{name}.thresholds]",
            )
        values[key] = exact(value)
    t = Thresholds(**values)
    if not t.acceptable <= t.target < t.max:
        raise LabError(
            f"{path}: sites.{name}.thresholds: need acceptable <= target < max, got "
            f"acceptable {float(t.acceptable):g}, target {float(t.target):g}, max {float(t.max):g}",
            "reorder the three values (acceptable is the lowest, max the highest)",
        )
    return t


def unknown_site(path: Path, at: str, name: str, sites: Iterable[str]) -> LabError:
    sites = list(sites)
    close = difflib.get_close_matches(name, sites, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return LabError(
        f"{path}: {at}: unknown site {name!r}",
        f"{hint}sites are {', '.join(sorted(sites))}",
    )


def latency_matrix(
    path: Path, raw: dict[str, dict[str, float]], names: list[str]
) -> dict[frozenset[str], Fraction]:
    """[latency_ms] as written (each pair once, both ways) -> ms per unordered pair; every
    pair of sites must have one."""
    out: dict[frozenset[str], Fraction] = {}
    for a, row in raw.items():
        if a not in names:
            raise unknown_site(path, f"latency_ms.{a}", a, names)
        for b, ms in row.items():
            if b not in names:
                raise unknown_site(path, f"latency_ms.{a}.{b}", b, names)
            if a == b:
                raise LabError(f"{path}: latency_ms.{a}.{b}: a site to itself", "remove it")
            pair = frozenset((a, b))
            value = exact(ms)
            if pair in out and out[pair] != value:
                raise LabError(
                    f"{path}: latency_ms: {a}-{b} is given twice ({float(out[pair]):g} and "
                    f"{float(value):g} ms)",
                    "give each pair once (it applies both ways)",
                )
            out[pair] = value
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            if frozenset((a, b)) not in out:
                raise LabError(
                    f"{path}: latency_ms: no latency between {a} and {b}",
                    f"add it, e.g. [latency_ms] {a} = {{ {b} = 20 }}",
                )
    return out


def _shifts(path: Path, raw: list[_ShiftIn], sites: Mapping[str, Site]) -> tuple[Shift, ...]:
    seen: set[tuple[str, Plan, str]] = set()
    total: dict[tuple[str, Plan], Fraction] = {}
    out: list[Shift] = []
    for i, s in enumerate(raw):
        where = f"shifts[{i}]"
        for key in ("source", "destination"):
            name = getattr(s, key)
            if name not in sites:
                raise unknown_site(path, f"{where}.{key}", name, sites)
        if s.source == s.destination:
            raise LabError(
                f"{path}: {where}: source and destination are both {s.source}", "remove this shift"
            )
        plan = Plan.parse(s.plan)
        key3 = (s.source, plan, s.destination)
        if key3 in seen:
            raise LabError(
                f"{path}: {where}: a second {s.plan} shift {s.source} -> {s.destination}",
                "merge the two into one fraction",
            )
        seen.add(key3)
        shift = Shift(s.source, plan, s.destination, exact(s.fraction))
        total[(s.source, plan)] = total.get((s.source, plan), Fraction(0)) + shift.fraction
        if total[(s.source, plan)] > 1:
            raise LabError(
                f"{path}: {where}: {s.source} shifts more than all of its {s.plan} traffic "
                f"(fractions add up to {float(total[(s.source, plan)]):g})",
                f"make the {s.plan} fractions of {s.source} add up to at most 1",
            )
        out.append(shift)
    return tuple(sorted(out))


def parse(doc: Any, path: Path) -> State:
    """Validate an already-decoded document; `path` is only used in error messages."""
    raw = validate_file(doc, path, _StateIn, _KEYS, _section, "lab/tm/model.py", "table/object")
    sites: dict[str, Site] = {}
    for name, s in raw.sites.items():
        sites[name] = Site(
            name=name,
            utilisation=exact(s.utilisation),
            cpu_ms_per_s={Plan.parse(p): exact(v) for p, v in s.cpu_ms_per_s.items()},
            thresholds=thresholds_from(path, name, s.thresholds, raw.thresholds),
        )
    latency = latency_matrix(path, raw.latency_ms, sorted(sites))
    shifts = _shifts(path, raw.shifts, sites)
    return State(sites, latency, shifts, raw.description)


def load(path: Path) -> State:
    """Read and validate a TOML or JSON state file."""
    return parse(_read(path), path)


# --- numbers as the reasons and tables print them -----------------------------------------------


def _trim(text: str) -> str:
    return text.rstrip("0").rstrip(".") if "." in text else text


def fmt_ms(x: Fraction) -> str:
    """CPU time or latency: 1000, 333.3."""
    return _trim(f"{float(x):.1f}")


def fmt_u(x: Fraction) -> str:
    """A utilisation or threshold: 0.85, 0.842."""
    return _trim(f"{float(x):.3f}")


def fmt_pct(x: Fraction) -> str:
    """A fraction as a percentage: 50%, 33.3%."""
    return _trim(f"{float(x) * 100:.1f}") + "%"
