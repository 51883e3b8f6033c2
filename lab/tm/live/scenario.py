"""Live scenarios (scenarios/tm/live-*.toml): sites, plans, clients, controller, a timeline.

    description = "capacity drop at A"
    duration_s = 28

    [thresholds]                 # defaults for every site (a site may override them)
    max = 0.8
    target = 0.7
    acceptable = 0.6

    [plans]                      # CPU ms per request, and share of every home's requests
    free = { cost_ms = 1, share = 0.4 }
    pro = { cost_ms = 2, share = 0.3 }
    business = { cost_ms = 4, share = 0.2 }
    enterprise = { cost_ms = 6, share = 0.1 }

    [sites.A]
    budget_ms_per_s = 250        # CPU ms/s the site may spend (its capacity)
    requests_per_s = 50          # requests/s of the clients whose home is A
    # thresholds = { max = 0.9 }

    [latency_ms]                 # every pair once, both ways (a matrix: no netem here)
    A = { B = 10, C = 30 }
    B = { C = 20 }

    [clients]                    # optional, defaults shown in ClientsIn
    [controller]                 # optional, defaults shown in ControllerIn

    [[events]]
    at_s = 6
    site = "A"
    action = "budget"            # budget | crash | restore | report
    budget_ms_per_s = 150        # (budget) the new budget
    # report = "garbage"         # (report) garbage | silent | ok

Every error is one line naming the file, the field and the fix (LabError).
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from lab.errors import LabError
from lab.tm.model import (
    Plan,
    Thresholds,
    ThresholdsIn,
    exact,
    known_keys,
    latency_matrix,
    thresholds_from,
    unknown_site,
    validate_file,
)

SITE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9]{0,9}$")
RESERVED = ("lb", "client")
MAX_SITES = 7  # one /24 link per site in the run's slot (8 links, one is the client's)
MAX_TOTAL_RPS = 400  # keeps the lab's CPU cost modest on a small machine
MAX_BUDGET = 1000  # ms/s: one core

Pos = Annotated[float, Field(gt=0)]
Unit = Annotated[float, Field(gt=0, le=1)]
PlanName = Literal["free", "pro", "business", "enterprise"]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class PlanIn(_In):
    cost_ms: Annotated[float, Field(gt=0, le=50)]
    share: Unit


class SiteIn(_In):
    budget_ms_per_s: Annotated[float, Field(gt=0, le=MAX_BUDGET)]
    requests_per_s: Annotated[float, Field(ge=0)]
    thresholds: ThresholdsIn = ThresholdsIn()


class ClientsIn(_In):
    workers: Annotated[int, Field(ge=1, le=8)] = 2  # keep-alive connections per (home, plan)
    # a client closes its connection after this many requests (like a browser's or a pool's
    # recycling): lb weights only reach new connections, so this sets how fast a shift takes
    # effect (at 3, a 20 requests/s stream opens ~7 connections/s: a shift is in force
    # within a second) and how finely a fraction is realised per second
    requests_per_connection: Annotated[int, Field(ge=1, le=1000)] = 3
    tcp_retries2: Annotated[int, Field(ge=1, le=15)] = 5
    connect_timeout_s: Pos = 2.0
    # TCP keepalive: a connection waiting for an answer sends nothing, so only a keepalive
    # probe meets the lb's reset; 2 + 2 * 5 = 12 s, like tcp_retries2 = 5's ~12.6 s. 0: off
    keepalive_idle_s: Annotated[int, Field(ge=0, le=7200)] = 2
    keepalive_interval_s: Annotated[int, Field(ge=1, le=600)] = 2
    keepalive_probes: Annotated[int, Field(ge=1, le=20)] = 5


class ControllerIn(_In):
    mode: Literal["tm", "off"] = "tm"
    interval_s: Annotated[float, Field(ge=0.2, le=10)] = 1.0
    window_s: Annotated[float, Field(ge=0.5, le=30)] = 2.0
    settle_s: Annotated[float, Field(ge=0, le=30)] = 2.0
    ramp: Unit = 0.25
    canary: Unit = 0.25
    probe_interval_s: Annotated[float, Field(ge=0.05, le=5)] = 0.25
    probe_timeout_s: Annotated[float, Field(ge=0.05, le=5)] = 0.5
    fail_after: Annotated[int, Field(ge=1, le=20)] = 2
    recover_after: Annotated[int, Field(ge=1, le=50)] = 4
    stale_after_s: Annotated[float, Field(ge=0.2, le=30)] = 1.0
    weight_scale: Annotated[int, Field(ge=10, le=10000)] = 1000


class EventIn(_In):
    at_s: Annotated[float, Field(ge=0)]
    site: str
    action: Literal["budget", "crash", "restore", "report"]
    budget_ms_per_s: Annotated[float, Field(gt=0, le=MAX_BUDGET)] | None = None
    report: Literal["garbage", "silent", "ok"] | None = None


class ScenarioIn(_In):
    description: str = ""
    duration_s: Annotated[float, Field(ge=5, le=600)]
    compare_without_controller: bool = False
    thresholds: ThresholdsIn = ThresholdsIn()
    plans: dict[PlanName, PlanIn] = Field(min_length=1)
    sites: dict[str, SiteIn] = Field(min_length=2, max_length=MAX_SITES)
    latency_ms: dict[str, dict[str, Annotated[float, Field(ge=0)]]] = {}
    clients: ClientsIn = ClientsIn()
    controller: ControllerIn = ControllerIn()
    events: list[EventIn] = []


_KEYS = known_keys(ScenarioIn, thresholds=ThresholdsIn, plans=PlanIn, sites=SiteIn,
                   clients=ClientsIn, controller=ControllerIn, events=EventIn)


@dataclass(frozen=True)
class PlanSpec:
    cost_ms: float
    share: float


@dataclass(frozen=True)
class SiteSpec:
    name: str
    budget_ms_per_s: float
    requests_per_s: float
    thresholds: Thresholds


@dataclass(frozen=True)
class Event:
    at_s: float
    site: str
    action: str  # budget | crash | restore | report
    budget_ms_per_s: float | None = None
    report: str | None = None

    def describe(self) -> str:
        if self.action == "budget":
            return f"{self.site}: budget -> {self.budget_ms_per_s:g} CPU ms/s"
        if self.action == "crash":
            return f"{self.site}: crash (all packets on its link dropped)"
        if self.action == "restore":
            return f"{self.site}: restored (link back)"
        return f"{self.site}: reports {self.report}"

    def short(self) -> str:
        """A label for a plot: 'A budget 135', 'A crash'."""
        if self.action == "budget":
            return f"{self.site} budget {self.budget_ms_per_s:g}"
        if self.action == "report":
            return f"{self.site} reports {self.report}"
        return f"{self.site} {self.action}"


@dataclass(frozen=True)
class Scenario:
    path: Path
    description: str
    duration_s: float
    compare_without_controller: bool
    plans: dict[Plan, PlanSpec]
    sites: dict[str, SiteSpec]
    latency: dict[frozenset[str], Fraction]
    clients: ClientsIn
    controller: ControllerIn
    events: tuple[Event, ...]

    @property
    def name(self) -> str:
        return self.path.stem

    def latency_ms(self, a: str, b: str) -> Fraction:
        return self.latency[frozenset((a, b))]

    def with_mode(self, mode: Literal["tm", "off"]) -> Scenario:
        """The same scenario with another controller mode (the no-controller comparison)."""
        controller = self.controller.model_copy(update={"mode": mode})
        return Scenario(**{**self.__dict__, "controller": controller})


def _section(loc: tuple[int | str, ...]) -> str:
    """Which table an unknown key at `loc` sits in."""
    head = str(loc[0])
    if head in ("sites", "plans"):
        if head == "sites" and len(loc) == 4:
            return "thresholds"
        return head
    return head if head in _KEYS and len(loc) > 1 else ""


def _events(path: Path, raw: list[EventIn], names: list[str], duration: float) -> list[Event]:
    """The timeline, checked: known sites, in time order within the run, each action with its
    own field only, and crash / restore alternating per site."""
    out: list[Event] = []
    crashed: set[str] = set()
    last = 0.0
    for i, e in enumerate(raw):
        where = f"events[{i}]"
        if e.site not in names:
            raise unknown_site(path, f"{where}.site", e.site, names)
        _check_time(path, where, e.at_s, last, duration)
        last = e.at_s
        _check_fields(path, where, e)
        _check_crash_order(path, where, e, crashed)
        out.append(Event(e.at_s, e.site, e.action, e.budget_ms_per_s, e.report))
    return out


def _check_time(path: Path, where: str, at_s: float, last: float, duration: float) -> None:
    if at_s >= duration:
        raise LabError(
            f"{path}: {where}.at_s: {at_s:g} s is not before duration_s {duration:g} s",
            "move the event earlier or make the scenario longer",
        )
    if at_s < last:
        raise LabError(
            f"{path}: {where}.at_s: {at_s:g} s comes before the previous event ({last:g} s)",
            "list events in time order",
        )


def _check_fields(path: Path, where: str, e: EventIn) -> None:
    """budget needs budget_ms_per_s, report needs report; no action takes the other's."""
    wanted = {"budget": "budget_ms_per_s", "report": "report"}.get(e.action)
    for key in ("budget_ms_per_s", "report"):
        given = getattr(e, key) is not None
        if key == wanted and not given:
            raise LabError(
                f"{path}: {where}.{key}: missing for action {e.action!r}",
                f"add {key} to this event",
            )
        if key != wanted and given:
            raise LabError(
                f"{path}: {where}.{key}: not used by action {e.action!r}",
                f"remove {key} from this event",
            )


def _check_crash_order(path: Path, where: str, e: EventIn, crashed: set[str]) -> None:
    """A site crashes only while up and is restored only while crashed (updates `crashed`)."""
    if e.action == "crash":
        if e.site in crashed:
            raise LabError(
                f"{path}: {where}: {e.site} crashes twice without a restore in between",
                f"add a restore event for {e.site} first",
            )
        crashed.add(e.site)
    if e.action == "restore":
        if e.site not in crashed:
            raise LabError(
                f"{path}: {where}: restore of {e.site}, which has not crashed",
                f"add a crash event for {e.site} before it, or remove this one",
            )
        crashed.discard(e.site)


def parse(doc: Any, path: Path) -> Scenario:
    """Validate an already-decoded document; `path` is only used in error messages."""
    raw = validate_file(doc, path, ScenarioIn, _KEYS, _section, "lab/tm/live/scenario.py")
    names = sorted(raw.sites)
    for name in names:
        if not SITE_NAME.match(name) or name in RESERVED:
            raise LabError(
                f"{path}: sites.{name}: not a usable site name",
                "use a letter then up to 9 letters or digits, not 'lb' or 'client'",
            )
    total_share = sum((exact(p.share) for p in raw.plans.values()), Fraction(0))
    if total_share != 1:
        shares = ", ".join(f"{k} {v.share:g}" for k, v in raw.plans.items())
        raise LabError(
            f"{path}: plans: shares add up to {float(total_share):g}, not 1 ({shares})",
            "make the plans' shares of requests add up to 1",
        )
    total_rps = sum(s.requests_per_s for s in raw.sites.values())
    if total_rps > MAX_TOTAL_RPS:
        raise LabError(
            f"{path}: sites: {total_rps:g} requests/s in all, more than {MAX_TOTAL_RPS}",
            "lower requests_per_s (the lab's processes share a small machine)",
        )
    c = raw.controller
    if c.window_s < c.interval_s:
        raise LabError(
            f"{path}: controller.window_s: {c.window_s:g} s is shorter than interval_s "
            f"{c.interval_s:g} s",
            "make the measurement window at least one control interval",
        )
    sites = {
        name: SiteSpec(
            name,
            s.budget_ms_per_s,
            s.requests_per_s,
            thresholds_from(path, name, s.thresholds, raw.thresholds),
        )
        for name, s in sorted(raw.sites.items())
    }
    return Scenario(
        path=path,
        description=raw.description,
        duration_s=raw.duration_s,
        compare_without_controller=raw.compare_without_controller,
        plans={Plan.parse(k): PlanSpec(v.cost_ms, v.share) for k, v in raw.plans.items()},
        sites=sites,
        latency=latency_matrix(path, raw.latency_ms, names),
        clients=raw.clients,
        controller=raw.controller,
        events=tuple(_events(path, raw.events, names, raw.duration_s)),
    )


def load(path: Path) -> Scenario:
    """Read and validate a live scenario file."""
    if not path.is_file():
        raise LabError(f"scenario {path} not found", "give a path such as scenarios/tm/live-*.toml")
    if path.suffix != ".toml":
        raise LabError(f"{path}: a live scenario is a .toml file", "name it live-<what>.toml")
    try:
        doc = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise LabError(f"{path}: not valid TOML ({exc})", "fix the syntax there") from None
    return parse(doc, path)
