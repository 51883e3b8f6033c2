"""A live run's output: timelines, the numbers the bars are judged by, and one PNG.

results/<run>/<mode>/
    events.csv     t_s, event, detail: faults, health verdicts, every decision's reasons,
                   the shift table and the weights applied
    sites.csv      per control tick and site: health, report status, budget, utilisation
                   (since the last tick, and over the decision window), CPU ms/s, thresholds
    shifts.csv     per tick, the shift table in force: source, plan, destination, fraction
    traffic.csv    per second: home, plan, served_by (or "(error)"), requests
    connections.csv per second: home, plan, new connections opened by the clients
    gaps.csv       every client worker that went more than 1 s without a success
    summary.json   the numbers below; timeline.png
Times are seconds since the load started.
"""

from __future__ import annotations

import csv
import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from lab.tm.live.scenario import Scenario
from lab.tm.model import Plan

ERROR = "(error)"


def write_client_timelines(client_jsonl: Path, t0: float, out: Path) -> None:
    """traffic.csv and gaps.csv from the load generator's JSON lines."""
    traffic: list[list[Any]] = []
    gaps: list[list[Any]] = []
    connections: list[list[Any]] = []
    for line in client_jsonl.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # a line cut off by the stop
        if rec.get("kind") == "sample":
            t_s = f"{rec['t'] - t0:.3f}"
            for key, n in sorted(rec["ok"].items()):
                home, plan, site = key.split("/")
                traffic.append([t_s, home, plan, site, n])
            for key, n in sorted(rec["err"].items()):
                home, plan = key.split("/")
                traffic.append([t_s, home, plan, ERROR, n])
            for key, n in sorted(rec.get("conn", {}).items()):
                home, plan = key.split("/")
                connections.append([t_s, home, plan, n])
        elif rec.get("kind") == "gap":
            to_s = "" if rec["to_t"] is None else f"{rec['to_t'] - t0:.3f}"
            length = "" if rec["to_t"] is None else f"{rec['to_t'] - rec['from_t']:.3f}"
            gaps.append([rec["home"], rec["plan"], rec["worker"], f"{rec['from_t'] - t0:.3f}",
                         to_s, length, rec["site_before"], rec["site_after"], rec["errors"],
                         rec.get("last_error", "")])
    with open(out / "traffic.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["t_s", "home", "plan", "served_by", "requests"])
        w.writerows(traffic)
    with open(out / "connections.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["t_s", "home", "plan", "new_connections"])
        w.writerows(connections)
    with open(out / "gaps.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["home", "plan", "worker", "from_s", "to_s", "gap_s", "site_before",
                    "site_after", "errors", "last_error"])
        w.writerows(gaps)


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def tables(out: Path) -> dict[float, dict[tuple[str, str, str], float]]:
    """The shift table at every control tick (empty dict: no shifts)."""
    ticks: dict[float, dict[tuple[str, str, str], float]] = {
        float(r["t_s"]): {} for r in _rows(out / "sites.csv")
    }
    for r in _rows(out / "shifts.csv"):
        ticks.setdefault(float(r["t_s"]), {})[(r["source"], r["plan"], r["destination"])] = float(
            r["fraction"]
        )
    return dict(sorted(ticks.items()))


def utilisation(out: Path) -> dict[str, list[tuple[float, float]]]:
    """Per site, (t_s, utilisation since the previous tick) where measured."""
    series: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for r in _rows(out / "sites.csv"):
        if r["utilisation"]:
            series[r["site"]].append((float(r["t_s"]), float(r["utilisation"])))
    return series


def shifted(table: dict[tuple[str, str, str], float], source: str, plan: str) -> float:
    return sum(f for (s, p, _), f in table.items() if s == source and p == plan)


def _overloads(out: Path, scen: Scenario) -> list[dict[str, Any]]:
    """For each budget cut: when utilisation went over max and how soon it was back under."""
    result = []
    budget = {n: s.budget_ms_per_s for n, s in scen.sites.items()}
    series = utilisation(out)
    for i, e in enumerate(scen.events):
        if e.action != "budget" or e.budget_ms_per_s is None:
            continue
        before, budget[e.site] = budget[e.site], e.budget_ms_per_s
        if e.budget_ms_per_s >= before:
            continue
        until = next(
            (x.at_s for x in scen.events[i + 1 :] if x.site == e.site and x.action == "budget"),
            scen.duration_s,
        )
        mx = float(scen.sites[e.site].thresholds.max)
        points = [(t, u) for t, u in series[e.site] if e.at_s < t <= until]
        over = next((t for t, u in points if u > mx), None)
        back = next((t for t, u in points if over is not None and t > over and u <= mx), None)
        after = [u for t, u in points if back is not None and t >= back]
        result.append({
            "site": e.site, "at_s": e.at_s, "budget_ms_per_s": e.budget_ms_per_s,
            "max": mx, "over_max_at_s": over, "back_under_max_at_s": back,
            "over_max_for_s": None if over is None or back is None else round(back - over, 3),
            "intervals_over_max": None if over is None or back is None else round(
                (back - over) / scen.controller.interval_s),
            "ticks_over_max_after_back": sum(1 for u in after if u > mx),
            "ticks_after_back": len(after),
            "peak_utilisation_after_back": max(after) if after else None,
        })
    return result


def _priority(out: Path) -> dict[str, Any]:
    """Ticks where Enterprise was shifted while some Free stayed home (decisions), and
    seconds where Enterprise was served away while Free was served at home (traffic)."""
    decided = 0
    for table in tables(out).values():
        for source in {s for s, _, _ in table}:
            if shifted(table, source, "enterprise") > 0 and shifted(table, source, "free") < 1:
                decided += 1
    per_second: dict[tuple[str, str], dict[str, int]] = defaultdict(dict)
    for r in _rows(out / "traffic.csv"):
        if r["served_by"] == ERROR:
            continue
        where = "home" if r["served_by"] == r["home"] else "away"
        key = f"{r['plan']}-{where}"
        cell = per_second[(r["t_s"], r["home"])]
        cell[key] = cell.get(key, 0) + int(r["requests"])
    seen = sum(
        1 for c in per_second.values() if c.get("enterprise-away", 0) and c.get("free-home", 0)
    )
    enterprise_shifts = sum(
        1 for table in tables(out).values() for (_, p, _) in table if p == "enterprise"
    )
    return {
        "ticks_enterprise_shifted_while_free_home": decided,
        "seconds_enterprise_away_while_free_home": seen,
        "enterprise_shift_ticks": enterprise_shifts,
    }


def _reverted(out: Path, scen: Scenario) -> dict[str, Any]:
    ticks = tables(out)
    times = list(ticks)
    last_nonempty = max((t for t, table in ticks.items() if table), default=None)
    final = ticks[times[-1]] if times else {}
    away = total = 0
    tail = scen.duration_s - 3
    for r in _rows(out / "traffic.csv"):
        if float(r["t_s"]) >= tail and r["served_by"] != ERROR:
            total += int(r["requests"])
            away += int(r["requests"]) if r["served_by"] != r["home"] else 0
    return {
        "shifts_at_end": len(final),
        "last_shift_at_s": last_nonempty,
        "served_away_last_3s": round(away / total, 4) if total else None,
    }


def fault_times(out: Path, scen: Scenario) -> list[float]:
    """When each scenario event was really applied (events.csv), else when it was due."""
    applied: dict[str, list[float]] = defaultdict(list)
    for r in _rows(out / "events.csv"):
        if r["event"] == "fault":
            applied[r["detail"]].append(float(r["t_s"]))
    return [applied[e.describe()].pop(0) if applied[e.describe()] else e.at_s
            for e in scen.events]


def _outages(out: Path, scen: Scenario) -> list[dict[str, Any]]:
    """For each crash: how long the clients it cut off waited for their next success
    (from the moment the drop rule was in place to the worker's first success after)."""
    gaps = _rows(out / "gaps.csv")
    result = []
    for e, at in zip(scen.events, fault_times(out, scen), strict=True):
        if e.action != "crash":
            continue
        waits: list[float] = []
        never = 0
        sites_before: dict[str, int] = defaultdict(int)
        for g in gaps:
            start = float(g["from_s"])
            end = float(g["to_s"]) if g["to_s"] else None
            if start <= at and (end is None or end > at):
                sites_before[g["site_before"]] += 1
                if end is None:
                    never += 1
                else:
                    waits.append(end - at)
        result.append({
            "site": e.site, "at_s": round(at, 3), "workers_cut_off": len(waits) + never,
            "not_recovered": never,
            "max_outage_s": round(max(waits), 3) if waits else None,
            "median_outage_s": round(statistics.median(waits), 3) if waits else None,
            "connected_to": dict(sites_before),
        })
    return result


def _events(out: Path) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for r in _rows(out / "events.csv"):
        counts[r["event"]] += 1
    return dict(counts)


def summarise(out: Path, scen: Scenario) -> dict[str, Any]:
    return {
        "mode": scen.controller.mode,
        "overloads": _overloads(out, scen),
        "priority": _priority(out),
        "reverted": _reverted(out, scen),
        "outages": _outages(out, scen),
        "events": _events(out),
    }


Counts = dict[tuple[str, str], dict[float, list[int]]]  # (home, plan) -> second -> [all, away]
Away = dict[tuple[str, str], dict[float, int]]  # (home, served by) -> second -> requests


def plot(out: Path, scen: Scenario) -> Path:
    """timeline.png, one time axis: utilisation per site against its thresholds; per home
    site the share of each plan served elsewhere (solid: measured at the clients, dotted: the
    shift table in force); last, requests/s served away from home, per home -> site."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lab.experiment.figures import save_figure  # with matplotlib: only when plotting

    names = sorted(scen.sites)
    rows = len(names) + 2
    fig, axes = plt.subplots(rows, 1, figsize=(11, 2.4 * rows), sharex=True, squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    site_colour = {n: colours[i % len(colours)] for i, n in enumerate(names)}
    _plot_utilisation([row[0] for row in axes], out, scen, site_colour)
    counts, away = _served(out)
    ticks = tables(out)
    plan_colours = {p.label: colours[int(p) % len(colours)] for p in Plan}
    for k, home in enumerate(names, start=1):
        _plot_home(axes[k][0], home, [p.label for p in sorted(scen.plans)], counts, ticks,
                   plan_colours)
    _plot_away(axes[-1][0], names, counts, away, site_colour)
    axes[-1][0].set_xlabel("seconds since the load started")
    return save_figure(fig, out / "timeline.png", dpi=90)


def _plot_utilisation(axes: list[Any], out: Path, scen: Scenario,
                      site_colour: dict[str, str]) -> None:
    """The top panel (utilisation against thresholds); every panel gets the fault lines."""
    ax = axes[0]
    for site, points in sorted(utilisation(out).items()):
        ax.plot([t for t, _ in points], [u for _, u in points], label=site,
                color=site_colour[site])
        th = scen.sites[site].thresholds
        for value, style in ((th.max, "--"), (th.target, ":"), (th.acceptable, "-.")):
            ax.axhline(float(value), color=site_colour[site], linestyle=style, linewidth=0.7,
                       alpha=0.6)
    for i, (e, at) in enumerate(zip(scen.events, fault_times(out, scen), strict=True)):
        for row in axes:
            row.axvline(at, color="grey", linewidth=0.8, alpha=0.7)
        ax.annotate(e.short(), (at, 1.02 + 0.1 * (i % 2)), xycoords=("data", "axes fraction"),
                    fontsize=7)
    ax.set_ylabel("utilisation")
    ax.set_title(f"{scen.name}, controller {scen.controller.mode}: utilisation per second vs "
                 "thresholds (-- max, : target, -. acceptable)", fontsize=9, pad=22)
    ax.legend(loc="upper right", fontsize=8)


def _served(out: Path) -> tuple[Counts, Away]:
    """Requests served per second: per (home, plan) all and away from home; per home and
    the site that served them away from home."""
    counts: Counts = defaultdict(dict)
    away: Away = defaultdict(lambda: defaultdict(int))
    for r in _rows(out / "traffic.csv"):
        if r["served_by"] == ERROR:
            continue
        t, n = round(float(r["t_s"])), int(r["requests"])
        cell = counts[(r["home"], r["plan"])].setdefault(t, [0, 0])
        cell[0] += n
        if r["served_by"] != r["home"]:
            cell[1] += n
            away[(r["home"], r["served_by"])][t] += n
    return counts, away


def _plot_home(ax: Any, home: str, plans: list[str], counts: Counts,
               ticks: dict[float, dict[tuple[str, str, str], float]],
               plan_colours: dict[str, str]) -> None:
    """One home site's panel: % of each plan served away, measured and in the table."""
    for p in plans:
        series = sorted(counts[(home, p)].items())
        ax.plot([t for t, _ in series], [100 * a / n if n else 0 for _, (n, a) in series],
                label=p, color=plan_colours[p])
        ax.plot(list(ticks), [100 * shifted(tb, home, p) for tb in ticks.values()],
                color=plan_colours[p], linestyle=":", linewidth=1)
    ax.set_ylabel(f"home {home}:\n% served away")
    ax.set_ylim(-5, 105)
    ax.legend(loc="upper right", fontsize=7, ncol=len(plans))


def _plot_away(ax: Any, names: list[str], counts: Counts, away: Away,
               site_colour: dict[str, str]) -> None:
    """The bottom panel: requests/s served away from home, per home -> site."""
    seconds = sorted({t for c in counts.values() for t in c})
    for (home, site), per_second in sorted(away.items()):
        points = [(t, per_second.get(t, 0)) for t in seconds]
        ax.plot([t for t, _ in points], [n for _, n in points], label=f"{home} -> {site}",
                color=site_colour[site], linestyle=["-", "--", ":", "-."][names.index(home) % 4])
    ax.set_ylabel("requests/s served\naway from home")
    if away:
        ax.legend(loc="upper right", fontsize=7, ncol=min(4, len(away)))


def _s(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f} s"


def summary_lines(results: dict[str, dict[str, Any]]) -> list[str]:
    """What `lab tm live` prints: the bars' numbers, per controller mode."""
    lines = []
    for mode, summary in results.items():
        title = "with the traffic manager" if mode == "tm" else (
            "without the controller (withdrawal only, no reset: keepalived-style)")
        lines.append(f"[{mode}] {title}")
        for o in summary["overloads"]:
            line = (f"  {o['site']}: budget cut to {o['budget_ms_per_s']:g} CPU ms/s at "
                    f"{o['at_s']:g} s: ")
            if o["over_max_at_s"] is None:
                line += f"never over max {o['max']:g}"
            elif o["back_under_max_at_s"] is None:
                line += f"over max {o['max']:g} at {o['over_max_at_s']:g} s, never back under"
            else:
                line += (f"over max {o['max']:g} at {o['over_max_at_s']:g} s, back under at "
                         f"{o['back_under_max_at_s']:g} s ({o['intervals_over_max']} control "
                         f"intervals); after that over max in {o['ticks_over_max_after_back']} "
                         f"of {o['ticks_after_back']} one-second ticks "
                         f"(peak {o['peak_utilisation_after_back']})")
            lines.append(line)
        p = summary["priority"]
        if summary["overloads"]:
            lines.append(
                f"  Enterprise shifted while Free stayed home: "
                f"{p['ticks_enterprise_shifted_while_free_home']} ticks of decisions, "
                f"{p['seconds_enterprise_away_while_free_home']} s of traffic"
            )
        r = summary["reverted"]
        away = r["served_away_last_3s"]
        lines.append(
            f"  shifts in force at the end: {r['shifts_at_end']}; traffic served away from its "
            f"home in the last 3 s: {'-' if away is None else f'{100 * away:.1f} %'}"
        )
        for o in summary["outages"]:
            lines.append(
                f"  {o['site']} crashed at {o['at_s']:g} s: {o['workers_cut_off']} client "
                f"connections cut off, served again after at most {_s(o['max_outage_s'])} "
                f"(median {_s(o['median_outage_s'])}), never: {o['not_recovered']}"
            )
        ignored = summary["events"].get("report", 0)
        if ignored:
            lines.append(f"  site reports not acted on: {ignored} log lines (events.csv 'report')")
    return lines
