"""`lab compare` and `lab report` on real runs (issue 3, bars 3 and 4).

Three real runs of scenarios/compare-short.toml go side by side: A and B with the same
settings, C with a worse TCP_USER_TIMEOUT. Comparing A with B must find no regression (exit 0);
A with C must name the regressed trial and exit 1, so a user can gate a change on it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from lab.cli.main import main as lab_main
from lab.config import scenario
from lab.errors import LabError
from lab.experiment import compare, report
from lab.experiment.matrix import MatrixRun

ROOT = Path(__file__).resolve().parents[2]
SCENARIO = ROOT / "scenarios" / "compare-short.toml"
WORSE = ["client.tcp_user_timeout_ms=6000"]  # 3 s -> 6 s: the outage doubles


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    root = tmp_path_factory.mktemp("compare")
    plan = {"a": [], "b": [], "c": WORSE}
    dirs = {k: root / k for k in plan}
    failures: list[BaseException] = []

    def one(key: str) -> None:
        try:
            MatrixRun(scenario.load(SCENARIO, plan[key]), dirs[key], parallel=2).run()
        except BaseException as exc:  # re-raised below, in the test's thread
            failures.append(exc)

    threads = [threading.Thread(target=one, args=(k,)) for k in plan]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        raise failures[0]
    yield dirs


@pytest.mark.root
def test_same_settings_compare_clean(
    runs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert lab_main(["compare", str(runs["a"]), str(runs["b"])]) == 0
    out = capsys.readouterr().out
    print(out)
    assert "0 regression(s) in measured_outage_s" in out
    c = compare.compare_runs(runs["a"], runs["b"])
    changes, notes = c.changes, c.notes
    assert not notes and not any(c.regression for c in changes)
    assert {c.trial for c in changes} == {"user-timeout", "expire-nodest-conn"}


@pytest.mark.root
def test_worse_setting_is_a_regression_and_fails(
    runs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert lab_main(["compare", str(runs["a"]), str(runs["c"])]) == 1
    out = capsys.readouterr().out
    print(out)
    assert "1 regression(s) in measured_outage_s" in out and "REGRESSION" in out
    changes = compare.compare_runs(runs["a"], runs["c"]).changes
    (bad,) = [c for c in changes if c.regression]
    assert bad.trial == "user-timeout" and bad.a is not None and bad.b is not None
    assert bad.b - bad.a > 2.5  # 3 s -> 6 s of TCP_USER_TIMEOUT
    # the gate follows the chosen metric: errors did not regress
    assert lab_main(["compare", str(runs["a"]), str(runs["c"]), "--metric", "errors"]) == 0


@pytest.mark.root
def test_report_writes_the_timeline_plots(runs: dict[str, Path]) -> None:
    paths = report.make_report(runs["c"])
    names = [p.name for p in paths]
    # the page to open first, then the figures in its order: the outages lead
    assert names[:4] == ["index.html", "outages.png", "predicted_vs_measured.png",
                         "timelines.png"], names
    assert names[4:] == ["timeline.png"] * 2  # each trial's
    assert all(p.parent == runs["c"] / "report" for p in paths[:4])
    for p in paths[1:]:
        with Image.open(p) as img:
            assert img.width >= 600 and img.height >= 300
            # a plot, not an empty canvas: many distinct colours
            assert len(img.convert("RGB").getcolors(maxcolors=1 << 16) or ()) > 20


def test_compare_rejects_an_unknown_metric(tmp_path: Path) -> None:
    with pytest.raises(LabError, match="unknown metric"):
        compare.compare_runs(tmp_path, tmp_path, metric="qps")
