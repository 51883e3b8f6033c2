"""report/index.html: the one page of a run an SRE opens and shares.

Made from the result files only (like the figures), so it works on any finished run, copied or
old. It is one offline page: CSS inline, no script, no URL but relative links to the run's own
files (the figures, each trial's CSVs), and every text from the files escaped, since a trial's
events carry server error messages verbatim.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime
from html import escape
from pathlib import Path
from typing import Any
from urllib.parse import quote

from lab import version
from lab.experiment.rundata import read_csv, run_facts

# summary.csv column -> the summary table's heading
SUMMARY_COLUMNS = {
    "trial": "trial", "lb": "lb", "fault": "fault", "predicted_outage_s": "predicted (s)",
    "predicted_mechanism": "mechanism", "measured_outage_s": "measured (s)",
    "detect_s": "detect (s)", "errors": "errors", "reconnects": "reconn",
    "retrans_count": "retrans", "tlp": "TLP", "first_rto_s": "first RTO (s)",
    "last_gap_s": "last gap (s)", "verdict": "verdict",
}
# run-level figures in report/, in reading order: the headline first
RUN_FIGURES = {
    "outages.png": "Outage per trial: measured (bar) and the model (diamond, tolerance band)",
    "predicted_vs_measured.png": "Measured outage against the model's",
    "timelines.png": "qps per trial, aligned on the fault; the outage shaded",
}
TRIAL_FILES = ("timeline.csv", "events.csv", "trial.json", "driver.log", "segments.csv",
               "retransmits.csv", "flows.csv", "sockets.csv", "lb_connections.csv",
               "evidence.json", "client.pcap", "error.txt")
KEY_EVENTS = ("fault", "first_error", "recovered", "deadline")  # the outage's edges: marked
MAX_EVENTS = 400  # a many-thread trial's events; the rest are in its events.csv

CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 1.5em auto; max-width: 100em;
       padding: 0 1em; color: #1a1a1a; }
h1 { font-size: 1.5em; } h2 { border-bottom: 1px solid #ccc; margin-top: 2em; }
table { border-collapse: collapse; margin: .6em 0; }
th, td { border: 1px solid #ccc; padding: .2em .5em; text-align: left; vertical-align: top; }
th { background: #f0f0f0; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.ok td.verdict, p.ok { color: #1a6b1a; } tr.bad td.verdict, p.bad { color: #b00020; }
p.ok, p.bad, td.verdict { font-weight: 600; }
td.detail { font-family: ui-monospace, monospace; font-size: 12px; word-break: break-word; }
#summary { font-size: 13px; } #summary td.detail { white-space: nowrap; }
#summary td.verdict { min-width: 11em; }
tr.key td { font-weight: 600; background: #fff6e0; } div.wide { overflow-x: auto; }
img { max-width: 100%; height: auto; border: 1px solid #ddd; }
figure { margin: 1em 0; } figcaption { color: #555; font-size: 13px; }
pre { background: #f6f6f6; padding: .6em; overflow-x: auto; font-size: 12px; }
section.trial { border-top: 2px solid #888; margin-top: 2.5em; }
.muted { color: #666; font-size: 13px; }
"""


def write_index(run_dir: Path, rows: list[dict[str, str]], out: Path) -> Path:
    """Write out/index.html for the run in run_dir (rows: its summary.csv)."""
    run = run_facts(run_dir)
    title = f"blackhole-lab report: {run_dir.name}"
    body = [
        f"<h1>{escape(title)}</h1>",
        _headline(run, rows),
        "<h2>Summary</h2>",
        '<p class="muted">Outage = from the fault to the first successful transaction '
        "started after it; detect = fault to the client's first error. Times in seconds.</p>",
        _summary_table(rows),
        _failures(run_dir, run),
        "<h2>Figures</h2>",
        *_run_figures(out),
        "<h2>Trials</h2>",
        *(_trial_section(run_dir, row, _differs(rows, row)) for row in rows),
        "<h2>Host</h2>",
        _host(run),
        f'<p class="muted">Written by lab report {escape(version.version())} at '
        f"{escape(datetime.now(UTC).isoformat(timespec='seconds'))} from the result files "
        f"in {escape(str(run_dir))}.</p>",
    ]
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title><style>{CSS}</style></head>\n<body>\n"
        + "\n".join(b for b in body if b) + "\n</body></html>\n"
    )
    path = out / "index.html"
    path.write_text(page, encoding="utf-8")
    return path


def _headline(run: dict[str, Any], rows: list[dict[str, str]]) -> str:
    """The run in two lines: what it was, and how many trials agreed with the model."""
    bad = sum(1 for r in rows if not _ok(r))
    failed = len(run.get("failures") or {})
    verdict = (f"{len(rows)} trial(s): {len(rows) - bad} agree with the model, {bad} disagree"
               + (f", {failed} failed to run" if failed else ""))
    scenario = run.get("scenario") or {}
    when = " to ".join(_when(run[k]) for k in ("started", "ended") if run.get(k))
    about = (f"Scenario {run.get('scenario_name', '?')}: {scenario.get('description', '')}"
             f" ({when})")
    css = "bad" if bad or failed else "ok"
    return f'<p>{escape(about)}</p>\n<p class="{css}">{escape(verdict)}</p>'


def _when(iso: Any) -> str:
    """An ISO time of run.json to the second, in UTC."""
    try:
        return datetime.fromisoformat(str(iso)).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except ValueError:
        return str(iso)


def _ok(row: dict[str, str]) -> bool:
    return row.get("verdict", "").startswith("ok")


def _summary_table(rows: list[dict[str, str]]) -> str:
    head = ["trial", "differs in", *list(SUMMARY_COLUMNS)[1:]]
    labels = [SUMMARY_COLUMNS.get(h, h) for h in head]
    lines = ['<div class="wide"><table id="summary"><thead><tr>'
             + "".join(f"<th>{escape(x)}</th>" for x in labels) + "</tr></thead><tbody>"]
    for row in rows:
        name = row.get("trial", "")
        cells = [f'<td><a href="#{_anchor(name)}">{escape(name)}</a></td>',
                 '<td class="detail">' + "<br>".join(
                     escape(f"{k}={v}") for k, v in _differs(rows, row).items()) + "</td>"]
        for col in head[2:]:
            value = row.get(col, "")
            css = "verdict" if col == "verdict" else ("num" if _is_number(value) else "")
            cells.append(f'<td class="{css}">{escape(value or "-")}</td>')
        lines.append(f'<tr class="{"ok" if _ok(row) else "bad"}">{"".join(cells)}</tr>')
    lines.append("</tbody></table></div>")
    return "\n".join(lines)


def _setting_columns(rows: list[dict[str, str]]) -> list[str]:
    """The settings in summary.csv: backend, driver, then every column between fault and
    predicted_outage_s (results.summary_row's order)."""
    columns = list(rows[0]) if rows else []
    if "fault" not in columns or "predicted_outage_s" not in columns:
        return []
    middle = columns[columns.index("fault") + 1: columns.index("predicted_outage_s")]
    return [c for c in ("backend", "driver") if c in columns] + middle


def _differs(rows: list[dict[str, str]], row: dict[str, str]) -> dict[str, str]:
    """This trial's value of every setting that is not the same in all trials of the run."""
    varying = [c for c in _setting_columns(rows) if len({r.get(c, "") for r in rows}) > 1]
    return {c: row.get(c, "") or "unset" for c in varying}


def _kv(pairs: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in pairs.items())


def _is_number(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


def _anchor(name: str) -> str:
    return escape("trial-" + quote(name, safe=""))


def _img(src: str, alt: str, caption: str) -> str:
    return (f'<figure><img src="{escape(src)}" alt="{escape(alt)}">'
            f"<figcaption>{escape(caption)}</figcaption></figure>")


def _run_figures(out: Path) -> list[str]:
    return [_img(quote(name), name, caption) for name, caption in RUN_FIGURES.items()
            if (out / name).exists()]


def _trial_section(run_dir: Path, row: dict[str, str], differs: dict[str, str]) -> str:
    """One trial: verdict, the model's reasoning, the measurement, its figure, its events."""
    name = row.get("trial", "")
    trial_dir = run_dir / name
    record = _trial_json(trial_dir)
    parts = [
        f'<section class="trial" id="{_anchor(name)}"><h3>{escape(name)}</h3>',
        f'<p class="{"ok" if _ok(row) else "bad"}">{escape(row.get("verdict", ""))}</p>',
        _table(_trial_facts(row, record, differs)),
        "<h4>The model's reasoning</h4>",
        _reasoning(record.get("prediction") or {}),
    ]
    if (trial_dir / "timeline.png").exists():
        parts.append(_img(quote(f"../{name}/timeline.png"), f"{name} timeline",
                          "qps; the blackholed segment's retransmissions and their gaps; the "
                          "client socket's retransmit counter and timer (ss -o)"))
    parts += [f"<h4>Events</h4>{_events(trial_dir)}", _evidence(record.get("evidence") or {}),
              _files(trial_dir, name), "</section>"]
    return "\n".join(parts)


def _trial_json(trial_dir: Path) -> dict[str, Any]:
    try:
        record: dict[str, Any] = json.loads((trial_dir / "trial.json").read_text())
    except (OSError, ValueError):
        return {}
    return record


def _trial_facts(row: dict[str, str], record: dict[str, Any], differs: dict[str, str]
                 ) -> dict[str, str]:
    def s(key: str) -> str:
        value = row.get(key, "")
        return f"{value} s" if value else "-"

    facts = {
        "measured outage": s("measured_outage_s"), "model's outage": s("predicted_outage_s"),
        "mechanism (model)": row.get("predicted_mechanism", ""),
        "detect (first error)": s("detect_s"),
        "errors / reconnects": f"{row.get('errors', '')} / {row.get('reconnects', '')}",
        "lb engine": f"{record.get('engine', row.get('lb', ''))} ({record.get('engine_why', '')})",
        "fault": f"at {record.get('fault_t_s', '?')} s: {record.get('fault_detail', '')}",
    }
    if differs:
        facts["differs in"] = _kv(differs)
    if "wall_s" in (record.get("facts") or {}):
        facts["trial wall time"] = f"{record['facts']['wall_s']} s (build to torn down)"
    return facts


def _reasoning(prediction: dict[str, Any]) -> str:
    """The model's one line (trial.json's reasoning; a run older than it: built from detail)."""
    detail = str(prediction.get("detail", ""))
    line = str(prediction.get("reasoning") or (
        f"{prediction.get('outage_s')} s via {prediction.get('mechanism')}: {detail}"))
    line = line.removesuffix(detail).rstrip(": ")  # the detail follows, one step a line
    tolerance = prediction.get("tolerance_s")
    extra = "" if tolerance is None else (
        f'<p class="muted">The verdict is ok when the measured outage is within '
        f"{escape(str(tolerance))} s of the model's outage.</p>")
    steps = "".join(f"<li>{escape(step.strip())}</li>"
                    for step in detail.split(";") if step.strip())
    return f"<p>Model: {escape(line)}</p><ol>{steps}</ol>{extra}"


def _table(pairs: dict[str, Any]) -> str:
    rows = "".join(f"<tr><th>{escape(str(k))}</th><td>{escape(str(v))}</td></tr>"
                   for k, v in pairs.items())
    return f'<table class="kv">{rows}</table>'


def _events(trial_dir: Path) -> str:
    events = read_csv(trial_dir / "events.csv")
    rows = "".join(
        f'<tr class="{"key" if e.get("event") in KEY_EVENTS else ""}">'
        f'<td class="num">{escape(e.get("t_s", ""))}</td><td>{escape(e.get("event", ""))}'
        f'</td><td class="detail">{escape(e.get("detail", ""))}</td></tr>'
        for e in events[:MAX_EVENTS])
    more = (f'<p class="muted">{len(events) - MAX_EVENTS} more in events.csv</p>'
            if len(events) > MAX_EVENTS else "")
    return ('<table class="events"><thead><tr><th>t (s)</th><th>event</th><th>detail</th>'
            f"</tr></thead><tbody>{rows}</tbody></table>{more}")


def _evidence(evidence: dict[str, Any]) -> str:
    if not evidence:
        return '<p class="muted">No capture (capture = false).</p>'
    return ("<details><summary>Capture evidence: the pcap's flows and retransmissions, the "
            f"kernel's counters (evidence.json)</summary>{_table(evidence)}</details>")


def _files(trial_dir: Path, name: str) -> str:
    links = [f'<a href="{escape(quote(f"../{name}/{f}"))}">{escape(f)}</a>'
             for f in TRIAL_FILES if (trial_dir / f).exists()]
    return f'<p class="muted">Files: {" · ".join(links)}</p>'


def _failures(run_dir: Path, run: dict[str, Any]) -> str:
    """Trials that could not run: their error and the traceback's tail (error.txt)."""
    failures: dict[str, str] = run.get("failures") or {}
    parts = []
    for name, error in failures.items():
        try:
            tail = "\n".join((run_dir / name / "error.txt").read_text().splitlines()[-25:])
        except OSError:
            tail = ""
        parts.append(f"<h3>{escape(name)}</h3><p class=\"bad\">{escape(error)}</p>"
                     f"<pre>{escape(tail)}</pre>")
    return "<h2>Failed trials</h2>" + "".join(parts) if parts else ""


def _flatten(data: dict[str, Any], prefix: str = "") -> Iterable[tuple[str, Any]]:
    for key, value in data.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _host(run: dict[str, Any]) -> str:
    """The host and lab the run ran on (run.json), and the scenario as it was read."""
    facts = dict(_flatten(run.get("host") or {}))
    for key in ("scenario_name", "scenario_sha256", "overrides", "resumed", "started",
                "ended"):
        if key in run:
            facts[key] = run[key]
    for shard in run.get("shards") or []:  # a merged run (lab merge): where each shard ran
        facts[f"shard {shard.get('shard')}"] = (
            f"{shard.get('hostname') or '?'}, kernel {shard.get('kernel') or '?'}, "
            f"{len(shard.get('trials') or [])} trial(s), from {shard.get('run_dir')}")
    scenario = json.dumps(run.get("scenario") or {}, indent=2)
    return (f"{_table(facts)}<details><summary>Scenario (run.json)</summary>"
            f"<pre>{escape(scenario)}</pre></details>")
