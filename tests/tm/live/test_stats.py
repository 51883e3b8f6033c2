"""Site reports: a broken reporter is described in one line and never raises into the loop."""

from __future__ import annotations

import json
import os
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

from lab.tm.live.site import Site
from lab.tm.live.stats import BadReport, SiteStats, parse_report
from lab.tm.model import Plan

SITES = frozenset({"A", "B"})


def report(t: float, seq: int, allowed: float, cpu: dict[str, float], budget: float = 100,
           site: str = "A") -> dict[str, Any]:
    return {"site": site, "t": t, "seq": seq, "budget_ms_per_s": budget, "allowed_ms": allowed,
            "cpu_ms": cpu, "requests": {k: 1 for k in cpu}}


def write(path: Path, doc: dict[str, Any] | str) -> None:
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))


def test_a_sound_report_parses() -> None:
    r = parse_report(json.dumps(report(5.0, 3, 100.0, {"A/free": 10, "B/pro": 2})), "A", SITES)
    assert r.cpu_ms == {("A", Plan.FREE): 10.0, ("B", Plan.PRO): 2.0}
    assert (r.t, r.seq, r.allowed_ms, r.budget_ms_per_s) == (5.0, 3, 100.0, 100.0)


def test_every_kind_of_garbage_the_site_writes_is_rejected(tmp_path: Path) -> None:
    """The real site's garbage mode, each of its four kinds."""
    site = Site({
        "name": "A", "costs": {"free": 1}, "budget_ms_per_s": 100,
        "stats": str(tmp_path / "s.json"), "control": str(tmp_path / "c.json"),
    })
    site.account("A/free", 3.0)
    site.report_mode = "garbage"
    reasons = set()
    for _ in range(4):
        text = site._report_text()
        assert text is not None
        with pytest.raises(BadReport) as err:
            parse_report(text, "A", SITES)
        reasons.add(str(err.value).split(" (")[0].split(" is ")[-1])
    assert len(reasons) == 4, reasons
    site.report_mode = "silent"
    assert site._report_text() is None


@pytest.mark.parametrize(
    ("doc", "reason"),
    [
        ("[1, 2]", "not a JSON object but list"),
        (report(1, 1, 1, {}, site="B"), "it names site 'B'"),
        ({**report(1, 1, 1, {}), "seq": "7"}, "seq is '7', not an integer"),
        ({**report(1, 1, 1, {}), "budget_ms_per_s": 0}, "budget_ms_per_s is 0"),
        ({**report(1, 1, 1, {}), "allowed_ms": True}, "allowed_ms is True, not a number"),
        (report(1, 1, 1, {"Z/free": 1}), "cpu_ms has an unknown key 'Z/free' (want HOME/PLAN)"),
        (report(1, 1, 1, {"A/gold": 1}), "cpu_ms has an unknown key 'A/gold' (want HOME/PLAN)"),
        ({**report(1, 1, 1, {}), "cpu_ms": [1]}, "cpu_ms is list, not a table"),
    ],
)
def test_malformed_reports(doc: dict[str, Any] | str, reason: str) -> None:
    with pytest.raises(BadReport, match=f"^{reason.replace('(', '.').replace(')', '.')}$"):
        parse_report(doc if isinstance(doc, str) else json.dumps(doc), "A", SITES)


def test_rates_over_the_window_and_across_a_budget_change(tmp_path: Path) -> None:
    path = tmp_path / "stats.json"
    st = SiteStats("A", path, SITES, stale_after_s=1.0, keep_s=10)
    assert st.poll(100.0) == "no report file"
    write(path, report(100.0, 1, 0.0, {"A/free": 0.0}))
    assert st.poll(100.0) == "not enough reports yet"
    write(path, report(101.0, 2, 100.0, {"A/free": 50.0, "B/pro": 10.0}))
    assert st.poll(101.0) is None
    m = st.measure(window_s=2.0)
    assert m is not None
    assert m.utilisation == Fraction(6, 10)
    assert m.cpu == {("A", Plan.FREE): 50, ("B", Plan.PRO): 10}
    assert m.budget_ms_per_s == 100
    # the budget is cut to 50: the window restarts where the new budget begins
    write(path, report(101.5, 3, 125.0, {"A/free": 80.0, "B/pro": 10.0}, budget=50))
    assert st.poll(101.5) is None
    assert st.measure(2.0) is None  # one report with the new budget: no rate yet
    write(path, report(102.5, 4, 175.0, {"A/free": 120.0, "B/pro": 15.0}, budget=50))
    assert st.poll(102.5) is None
    m = st.measure(2.0)
    assert m is not None and m.utilisation == Fraction(9, 10) and m.budget_ms_per_s == 50


def test_garbage_silence_and_backwards_counters_make_a_site_unmeasured(tmp_path: Path) -> None:
    path = tmp_path / "stats.json"
    st = SiteStats("A", path, SITES, stale_after_s=1.0, keep_s=10)
    write(path, report(10.0, 1, 0.0, {"A/free": 0.0}))
    st.poll(10.0)
    write(path, report(11.0, 2, 100.0, {"A/free": 50.0}))
    assert st.poll(11.0) is None
    write(path, '{"site": "A", "t": 1')
    assert st.poll(11.2) == (
        "report ignored: not JSON (Expecting ',' delimiter: line 1 column 21 (char 20))"
    )
    assert st.measure(2.0) is None and not st.history
    write(path, report(12.0, 3, 200.0, {"A/free": 90.0}))
    st.poll(12.0)
    write(path, report(13.0, 4, 300.0, {"A/free": 10.0}))
    assert st.poll(13.0) == "report ignored: a counter went backwards"
    write(path, report(14.0, 5, 400.0, {"A/free": 20.0}))
    st.poll(14.0)
    write(path, report(15.0, 4, 500.0, {"A/free": 30.0}))
    assert st.poll(15.0) == "report ignored: it went back in time"
    write(path, report(16.0, 6, 600.0, {"A/free": 40.0}))
    assert st.poll(19.0) == "no report for 3.0 s"  # by the report's own clock ...
    old = time.time() - 5
    os.utime(path, (old, old))
    assert str(st.poll(16.0)).startswith("no report for 5.")  # ... or by the file's age
