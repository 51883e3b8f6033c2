"""report/index.html, rendered by a real headless browser (Chromium) from a real run.

The page is what an SRE opens and shares, so the checks are the browser's: every figure loaded
(naturalWidth > 0, as wide as the PNG), the summary table shows each trial in order, each
trial's events are on the page, and nothing was fetched but the run's own files. The browser
check runs on a copy of the page with a small script appended (the page itself has none).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from html import unescape
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import pytest
from PIL import Image

from lab.config import scenario
from lab.experiment import html, report, results
from lab.experiment.matrix import MatrixRun
from lab.experiment.rundata import read_csv
from tests.experiment.test_results import blackholed_result

ROOT = Path(__file__).resolve().parents[2]
SCENARIO = ROOT / "scenarios" / "compare-short.toml"
BROWSERS = ("chromium-headless-shell", "chromium")  # Debian's; make setup installs the first
# appended to a copy of index.html: what the browser rendered, as JSON in <pre id="check">
CHECK = """<script>
window.addEventListener("load", () => {
  const shown = (el) => el.getBoundingClientRect().width > 0;
  const out = {
    images: [...document.images].map((i) => ({src: i.getAttribute("src"),
      url: i.currentSrc, complete: i.complete, natural: i.naturalWidth, shown: shown(i)})),
    summary: [...document.querySelectorAll("#summary tbody tr")].map(
      (tr) => tr.cells[0].textContent),
    summaryShown: shown(document.querySelector("#summary")),
    events: Object.fromEntries([...document.querySelectorAll("section.trial")].map(
      (s) => [s.querySelector("h3").textContent, s.querySelectorAll("table.events tbody tr")
        .length])),
    text: document.body.innerText,
  };
  const pre = document.createElement("pre");
  pre.id = "check";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


def browser() -> str:
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    pytest.skip(f"no headless browser ({' or '.join(BROWSERS)}; `make apt` installs it)")


def render(page: Path) -> tuple[dict[str, Any], float]:
    """What the browser shows of `page` (a copy with CHECK appended), and its time."""
    checked = page.with_name("check.html")
    checked.write_text(page.read_text().replace("</body>", CHECK + "</body>"))
    argv = [browser(), "--headless", "--disable-gpu", "--dump-dom",
            "--virtual-time-budget=10000", checked.as_uri()]
    if os.geteuid() == 0:
        argv.insert(1, "--no-sandbox")  # Chromium's sandbox refuses to run as root
    started = time.monotonic()
    try:
        dom = subprocess.run(argv, capture_output=True, text=True, timeout=90, check=True).stdout
    finally:
        checked.unlink()
    found = re.search(r'<pre id="check">(.*?)</pre>', dom, re.S)
    assert found, f"the page did not finish loading in the browser: {dom[-2000:]}"
    data: dict[str, Any] = json.loads(unescape(found.group(1)))
    return data, time.monotonic() - started


class Refs(HTMLParser):
    """Every src and href of a page, and its script tags."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []
        self.scripts = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.scripts += tag == "script"
        self.refs += [v for k, v in attrs if k in ("src", "href") and v]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A real run of compare-short (two short switchovers, ~10 s) with the capture on, so the
    per-trial figures and the evidence have something to show; then `lab report` on it."""
    out = tmp_path_factory.mktemp("html") / "run"
    MatrixRun(scenario.load(SCENARIO, ["capture=true"]), out, parallel=2).run()
    report.make_report(out)
    yield out


@pytest.mark.root
def test_the_browser_shows_every_figure_and_trial(run_dir: Path) -> None:
    page = run_dir / "report" / "index.html"
    rows = read_csv(run_dir / "summary.csv")
    shown, took = render(page)
    print(f"\nbrowser check of {page}: {took:.2f} s")
    trials = [r["trial"] for r in rows]
    expected = [*html.RUN_FIGURES, *(f"../{t}/timeline.png" for t in trials)]
    assert [i["src"] for i in shown["images"]] == expected  # the outages first
    for img in shown["images"]:
        assert img["complete"] and img["natural"] > 0 and img["shown"], img
        assert img["url"].startswith(page.parent.parent.as_uri()), img  # the run's own file
        with Image.open(page.parent / img["src"]) as png:
            assert img["natural"] == png.width
            png.load()  # the whole file decodes (the browser sizes a truncated PNG too)
    assert shown["summary"] == trials and shown["summaryShown"]
    for t in trials:
        assert shown["events"][t] == len(read_csv(run_dir / t / "events.csv")) > 5
    # the model's reasoning and the host facts are on the page
    run = json.loads((run_dir / "run.json").read_text())
    for t in trials:
        prediction = json.loads((run_dir / t / "trial.json").read_text())["prediction"]
        head = prediction["reasoning"].removesuffix(prediction["detail"]).rstrip(": ")
        assert f"Model: {head}" in shown["text"]
    for fact in (run["host"]["kernel"], run["host"]["lab"]["commit"], run["scenario_sha256"]):
        assert fact in shown["text"]


@pytest.mark.root
def test_the_page_is_offline_and_its_links_resolve(run_dir: Path) -> None:
    """No URL out of the run, no script, CSS inline; every link is a file of the run."""
    page = run_dir / "report" / "index.html"
    text = page.read_text()
    assert not re.search(r"https?://|//cdn|@import|<link", text, re.I)
    refs = Refs()
    refs.feed(text)
    assert refs.scripts == 0 and "<style>" in text
    files = [r for r in refs.refs if not r.startswith("#")]
    assert len(files) > 10
    for ref in files:
        assert not urlparse(ref).scheme, ref
        assert (page.parent / unquote(ref)).resolve().is_file(), ref
    anchors = [r[1:] for r in refs.refs if r.startswith("#")]
    assert anchors and all(f'id="{a}"' in text for a in anchors)


def test_text_from_the_files_is_escaped(tmp_path: Path) -> None:
    """A server's error message is written into events.csv verbatim: on the page it is text,
    as is a failed trial's traceback."""
    result = blackholed_result()
    result.event("error", "thread 0: 1064 near '<img src=x onerror=alert(1)>' & \"quoted\"",
                 result.t0 + 6.0)
    row = results.write_trial(result, tmp_path / "crash-r5")
    results.write_summary(tmp_path, [row])
    results.write_run(tmp_path, {"description": "<b>bold</b>"},
                      {"scenario_name": "s", "failures": {"broken": "RuntimeError: <boom>"},
                       "host": results.host_facts()})
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "error.txt").write_text("Traceback ...\nRuntimeError: <boom>\n")
    (tmp_path / "report").mkdir()
    text = html.write_index(tmp_path, read_csv(tmp_path / "summary.csv"),
                            tmp_path / "report").read_text()
    assert "&lt;img src=x onerror=alert(1)&gt;" in text and "<img src=x" not in text
    assert "&lt;b&gt;bold&lt;/b&gt;" in text and "RuntimeError: &lt;boom&gt;" in text
    assert "Failed trials" in text and "disagree, 1 failed to run" in text
    # the figures that are not there are not referenced
    assert "<img" not in text
