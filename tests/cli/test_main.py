"""`python -m lab.cli`: arguments, exit codes and the one error line, run as a user runs it.

Exit codes: 0 done, 1 a trial failed or a comparison regressed, 2 a usage or LabError (one
line on stderr, "lab: <problem> -- <fix>"), 3 a trial disagrees with the model. Nothing here
starts a trial: the commands that run are the ones that only read (keys, report, compare) on
files made here, or a `lab run` refused before it builds anything.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lab.cli.main import run_exit_code
from lab.config import scenario
from lab.experiment import rundir
from lab.experiment.matrix import MatrixRun
from lab.experiment.trial import verdict
from lab.model import Prediction

ROOT = Path(__file__).resolve().parents[2]
SUMMARY = ("trial", "lb", "fault", "predicted_outage_s", "predicted_mechanism",
           "measured_outage_s", "detect_s", "recover_s", "errors", "reconnects", "verdict")


def lab(*args: str | Path, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lab.cli", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The last stderr line; a LabError must be the only one."""
    lines = proc.stderr.strip().splitlines()
    assert lines, proc
    return lines[-1]


def lab_error(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 2, proc
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr  # no traceback
    return error_line(proc)


def make_run(root: Path, name: str, outage_s: float | None) -> Path:
    """A finished run of one trial as `lab run` leaves it: summary.csv and the trial's CSVs."""
    run_dir = root / name
    trial = run_dir / "switchover"
    trial.mkdir(parents=True)
    with (run_dir / "summary.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=SUMMARY)
        writer.writeheader()
        writer.writerow({
            "trial": "switchover", "lb": "nft", "fault": "switchover",
            "predicted_outage_s": 13.5, "predicted_mechanism": "retries2",
            "measured_outage_s": "" if outage_s is None else outage_s, "detect_s": 1.0,
            "recover_s": 0.5, "errors": 1, "reconnects": 1, "verdict": "ok"})
    (trial / "timeline.csv").write_text(
        "t_s,qps\n" + "".join(f"{t},{0 if 5 <= t < 19 else 100}\n" for t in range(25)))
    (trial / "events.csv").write_text("t_s,event\n5.0,fault\n")
    return run_dir


def test_help_lists_every_command() -> None:
    proc = lab("--help")
    assert proc.returncode == 0, proc
    assert proc.stdout.startswith("usage: lab ")
    for command in ("run", "report", "compare", "merge", "keys", "scenarios", "clean", "doctor",
                    "image", "completion", "tm", "vm"):
        assert f"    {command} " in proc.stdout, command


def test_no_command_and_an_unknown_command_are_usage_errors() -> None:
    proc = lab()
    assert proc.returncode == 2
    assert error_line(proc) == "lab: error: the following arguments are required: command"
    proc = lab("frobnicate")
    assert proc.returncode == 2
    assert error_line(proc).startswith(
        "lab: error: argument command: invalid choice: 'frobnicate'")


def test_run_of_a_missing_scenario_file(tmp_path: Path) -> None:
    missing = tmp_path / "nothere.toml"
    assert lab_error(lab("run", missing)) == (
        f"lab: scenario file {missing} not found -- give a path, or a name that "
        "'lab scenarios' lists")


def test_run_with_an_unknown_set_key(tmp_path: Path) -> None:
    scen = tmp_path / "one.toml"
    scen.write_text('[[trial]]\nname = "t1"\n')
    line = lab_error(lab("run", scen, "--set", "client.tcp_retries=5", "--out", tmp_path))
    assert line == (f"lab: {scen}: trial 't1': client.tcp_retries: unknown key (did you mean "
                    "client.tcp_retries2?) -- 'lab keys' lists the valid keys")
    assert lab_error(lab("run", scen, "--set", "client.tcp_retries2")) == (
        "lab: --set 'client.tcp_retries2' is not key=value -- "
        "write e.g. --set client.tcp_retries2=5")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.toml"]  # no run dir was made


def test_resume_of_a_missing_run_dir(tmp_path: Path) -> None:
    scen = tmp_path / "one.toml"
    scen.write_text('[[trial]]\nname = "t1"\n')
    missing = tmp_path / "run-x"
    assert lab_error(lab("run", scen, "--resume", missing)) == (
        f"lab: --resume {missing}: no such run directory (no run.json) -- give a "
        "results/<run> directory that 'lab run' made")


def test_resume_with_other_settings_is_refused_before_anything_runs(tmp_path: Path) -> None:
    path = tmp_path / "one.toml"
    path.write_text('[[trial]]\nname = "t1"\n')
    earlier = scenario.load(path, ["client.tcp_retries2=5"])
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "run.json").write_text(json.dumps(rundir.identity(earlier)))
    line = lab_error(lab("run", path, "--set", "client.tcp_retries2=6", "--resume", run_dir))
    assert line == (f"lab: --resume {run_dir}: it ran with --set ['client.tcp_retries2=5'], "
                    "this run has ['client.tcp_retries2=6'] -- resume with the same --set "
                    "values, or start a new run")
    assert sorted(p.name for p in run_dir.iterdir()) == ["run.json"]


def test_out_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "out").write_text("")
    line = lab_error(lab("run", ROOT / "scenarios" / "ci-short.toml", "--out", tmp_path / "out"))
    assert line == f"lab: --out {tmp_path / 'out'} is a file, not a directory -- give a " \
        "directory for results"


@pytest.mark.parametrize("option", [["--parallel", "0"], ["--parallel", "65"],
                                    ["--parallel", "two"], ["--every", "nan"],
                                    ["--every", "-1"]])
def test_run_options_out_of_range_are_usage_errors(tmp_path: Path, option: list[str]) -> None:
    proc = lab("run", ROOT / "scenarios" / "ci-short.toml", *option, "--out", tmp_path)
    assert proc.returncode == 2, proc
    assert error_line(proc).startswith(f"lab run: error: argument {option[0]}: ")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.root
def test_not_root_is_one_line_before_anything_is_built(tmp_path: Path) -> None:
    """As a user without root (setpriv drops to nobody): one line, exit 2, no run dir."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv (util-linux) not installed")
    out = tmp_path / "out"
    proc = subprocess.run(
        [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-m",
         "lab.cli", "run", str(ROOT / "scenarios" / "ci-short.toml"), "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, "HOME": "/tmp"})  # a user has a home; nobody has none
    assert lab_error(proc) == ("lab: the lab needs root (network namespaces, nftables) -- "
                               "run it with sudo")
    assert not out.exists()


def test_keys_lists_every_setting_with_its_default_as_toml() -> None:
    proc = lab("keys")
    assert proc.returncode == 0, proc
    lines = proc.stdout.splitlines()
    assert lines[2] == "[defaults]"
    # a key's line follows its two comment lines: the description, then the facts
    assigned = dict(line.removeprefix("# ").split(" = ", 1) for i, line in enumerate(lines)
                    if i > 2 and lines[i - 1].startswith("#   "))
    assert assigned["backend"] == '"mariadb"' and assigned["provider"] == '"process"'
    assert assigned["client.tcp_retries2"] == "..." and assigned["capture"] == "true"
    assert set(assigned) == set(scenario.valid_keys())
    at = lines.index("# client.tcp_user_timeout_ms = ...")
    assert lines[at - 2].startswith("# TCP_USER_TIMEOUT")
    assert lines[at - 1] == "#   integer, ms, 1..2147483647; default: unset"


def test_keys_json_and_schema() -> None:
    keys = json.loads(lab("keys", "--json").stdout)
    timeout = next(k for k in keys if k["key"] == "client.read_timeout_s")
    assert timeout["type"] == "number" and timeout["unit"] == "s"
    assert timeout["default"] is None and timeout["range"] == "> 0, <= 86400"
    schema = json.loads(lab("keys", "--schema").stdout)
    assert schema["$schema"].startswith("https://json-schema.org/")
    assert set(schema["properties"]) == {"description", "defaults", "trial", "matrix"}


def test_keys_stacks_says_what_each_key_becomes_in_each_library() -> None:
    rows = json.loads(lab("keys", "--stacks", "--json").stdout)
    java = next(r for r in rows if r["stack"] == "java-connectorj")
    assert java["keys"]["read_timeout_s"].startswith("socketTimeout")
    assert java["keys"]["tcp_user_timeout_ms"].startswith("cannot: the JDK")
    assert java["default_connect_timeout_s"] == 30.0
    proc = lab("keys", "--stacks")
    assert proc.returncode == 0 and "go-sql-driver" in proc.stdout, proc


def test_scenarios_lists_the_shipped_ones() -> None:
    proc = lab("scenarios")
    assert proc.returncode == 0, proc
    assert "seed-lvs-mysql" in proc.stdout and "the article's fixes" in proc.stdout
    listed = json.loads(lab("scenarios", "--json").stdout)
    seed = next(s for s in listed if s["name"] == "seed-lvs-mysql")
    assert seed["trials"] == 7 and Path(seed["path"]).is_file()


def test_version() -> None:
    proc = lab("--version")
    assert proc.returncode == 0, proc
    assert re.fullmatch(r"lab \d+\.\d+\.\d+\S*( \(commit [0-9a-f]{40}(\+dirty)?\))?\n",
                        proc.stdout), proc.stdout


def test_report_of_a_finished_run(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path, "run-a", 14.0)
    proc = lab("report", run_dir)
    assert proc.returncode == 0, proc
    assert "switchover" in proc.stdout  # the summary table
    wrote = [line.removeprefix("wrote ") for line in proc.stdout.splitlines()
             if line.startswith("wrote ")]
    assert {str(run_dir / "report" / "timelines.png"),
            str(run_dir / "report" / "predicted_vs_measured.png"),
            str(run_dir / "switchover" / "timeline.png")} <= set(wrote)
    for path in map(Path, wrote):
        assert path.is_file()
        if path.suffix == ".png":
            assert path.read_bytes().startswith(b"\x89PNG")
    data = json.loads(lab("report", run_dir, "--json").stdout)
    assert data["wrote"] == wrote
    (row,) = data["trials"]
    assert row["trial"] == "switchover" and row["measured_outage_s"] == 14.0
    assert row["errors"] == 1 and row["verdict"] == "ok"


def test_report_of_a_folder_that_is_no_run(tmp_path: Path) -> None:
    assert lab_error(lab("report", tmp_path)) == (
        f"lab: {tmp_path} has no summary.csv -- give a results/<run-id> directory of a "
        "finished run (or finish it with lab run --resume)")


@pytest.mark.parametrize(("outage_b", "rc", "verdict"), [
    (14.2, 0, "0 regression(s) in measured_outage_s"),  # within 10 % / 0.5 s
    (20.0, 1, "1 regression(s) in measured_outage_s"),
    (None, 1, "1 regression(s) in measured_outage_s"),  # B never recovered
])
def test_compare_exit_code_is_the_regression(
    tmp_path: Path, outage_b: float | None, rc: int, verdict: str
) -> None:
    a, b = make_run(tmp_path, "run-a", 14.0), make_run(tmp_path, "run-b", outage_b)
    proc = lab("compare", a, b)
    assert proc.returncode == rc, proc
    assert proc.stdout.strip().splitlines()[-1] == verdict
    assert ("REGRESSION" in proc.stdout) == (rc == 1)


def test_compare_of_runs_with_no_trial_in_common_is_bad_input(tmp_path: Path) -> None:
    a, b = make_run(tmp_path, "run-a", 14.0), make_run(tmp_path, "run-b", 14.0)
    (b / "switchover").rename(b / "other")
    summary = (b / "summary.csv").read_text().replace("\nswitchover,", "\nother,")
    (b / "summary.csv").write_text(summary)
    assert lab_error(lab("compare", a, b)) == (
        f"lab: {a} and {b} share no trial, so there is nothing to compare -- compare two "
        "runs of the same scenario")


def test_help_documents_the_exit_codes() -> None:
    proc = lab("--help")
    text = " ".join(proc.stdout.split())
    for code, meaning in [("0", "every trial ran and agrees with the model"),
                          ("1", "the lab failed"), ("2", "bad input"),
                          ("3", "a trial disagrees with the model"), ("130", "interrupted")]:
        assert f"{code} {meaning}" in text, code


def test_compare_arguments(tmp_path: Path) -> None:
    a = make_run(tmp_path, "run-a", 14.0)
    proc = lab("compare", a, a, "--metric", "qps")
    assert proc.returncode == 2
    assert error_line(proc).startswith(
        "lab compare: error: argument --metric: invalid choice: 'qps'")
    assert lab_error(lab("compare", a, tmp_path / "nothere")).startswith(
        f"lab: {tmp_path / 'nothere'} has no summary.csv -- ")


def _matrix(tmp_path: Path, failures: dict[str, str]) -> MatrixRun:
    path = tmp_path / "s.toml"
    path.write_text('[[trial]]\nname = "t1"\n')
    matrix = MatrixRun(scenario.load(path), tmp_path)
    matrix.failures.update(failures)
    return matrix


PREDICTED_14 = Prediction(14.0, "retries2", 1.0, "test")


@pytest.mark.parametrize(("measured", "failures", "code"), [
    (14.2, {}, 0),                          # within the tolerance of the model
    (20.0, {}, 3),                          # disagrees with the model
    (None, {}, 3),                          # did not recover when the model said it would
    (14.2, {"t2": "RuntimeError: x"}, 1),  # a trial could not run: that comes first
])
def test_run_exit_code(tmp_path: Path, measured: float | None, failures: dict[str, str],
                       code: int) -> None:
    rows = [{"trial": "t1", "verdict": verdict(PREDICTED_14, measured, deadline_s=30)}]
    assert run_exit_code(_matrix(tmp_path, failures), rows) == code


# --- lab run --dry-run, --json ------------------------------------------------------------

def test_dry_run_predicts_every_trial_and_builds_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = lab("run", "seed-lvs-mysql", "--dry-run", "--out", out)
    assert proc.returncode == 0, proc
    row = next(line for line in proc.stdout.splitlines() if "retries2-15" in line)
    assert "938.63s" in row and "retries2" in row and "1200s" in row
    assert "about 954 s" in " ".join(proc.stdout.split())
    data = json.loads(lab("run", "seed-lvs-mysql", "--dry-run", "--json").stdout)
    by_name = {t["trial"]: t for t in data["trials"]}
    assert by_name["expire-nodest-conn"]["mechanism"] == "lb_reset"
    assert by_name["retries2-5"]["predicted_outage_s"] == pytest.approx(13.43, abs=0.01)
    assert by_name["retries2-5"]["deadline_s"] == 1200
    assert not out.exists()


def test_dry_run_of_bad_input_is_one_line(tmp_path: Path) -> None:
    assert lab_error(lab("run", "ci-short", "--dry-run", "--set", "lb.engine=lvs")).startswith(
        f"lab: {ROOT / 'lab' / 'scenarios' / 'ci-short.toml'}: trial ")


@pytest.mark.root
def test_dry_run_needs_no_root(tmp_path: Path) -> None:
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv (util-linux) not installed")
    proc = subprocess.run(
        [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-m",
         "lab.cli", "run", "ci-short", "--dry-run"], cwd=ROOT, capture_output=True, text=True,
        timeout=120, env={**os.environ, "HOME": "/tmp"})
    assert proc.returncode == 0, proc
    assert "switchover-retries2-5" in proc.stdout and "13.43s" in proc.stdout


@pytest.mark.root
def test_run_json_is_the_summary_on_stdout_alone(tmp_path: Path) -> None:
    """A real (short) trial: stdout is one JSON document, the rest went to stderr."""
    scen = tmp_path / "one.toml"
    scen.write_text('[defaults]\ndeadline_s = 10\nafter_s = 1\ncapture = false\n'
                    '[defaults.fault]\nat_s = 2\n[defaults.lb]\nexpire_nodest_conn = 1\n'
                    '[[trial]]\nname = "reset"\n')
    proc = lab("run", scen, "--json", "--out", tmp_path / "out", "--parallel", "1")
    data = json.loads(proc.stdout)
    assert proc.returncode == data["exit_code"] == 0, proc.stderr
    (row,) = data["trials"]
    assert row["trial"] == "reset" and row["predicted_mechanism"] == "lb_reset"
    assert isinstance(row["measured_outage_s"], float) and row["verdict"].startswith("ok")
    assert row["client.tcp_retries2"] is None and row["capture"] is False
    assert "summary" in proc.stderr and Path(data["run_dir"], "summary.csv").is_file()


# --- doctor, completion, --version, help ------------------------------------------------------

def test_doctor_json_lists_the_checks() -> None:
    proc = lab("doctor", "--json")
    checks = json.loads(proc.stdout)
    assert proc.returncode == (0 if all(c["ok"] for c in checks if c["required"]) else 1)
    names = [c["name"] for c in checks]
    assert "root" in names and "engine auto" in names
    assert all(set(c) == {"name", "ok", "required", "detail", "fix"} for c in checks)
    assert all(c["fix"] is None for c in checks if c["ok"])


def test_doctor_shows_a_fix_only_where_a_check_fails() -> None:
    from rich.console import Console

    from lab.cli.views import doctor_table
    from lab.ops.doctor import Check
    checks = [Check("root", True, "euid 0", fix="use sudo"),
              Check("netem", False, "no sch_netem", required=False, fix="use the VM")]
    console = Console(width=200, record=True)
    console.print(doctor_table(checks))
    text = console.export_text()
    assert "fix: use the VM" in text and "use sudo" not in text
    console.print(doctor_table(checks[:1]))
    assert "fix" not in console.export_text()  # nothing fails: no fix shown


def test_bash_completion_offers_the_subcommands_and_options() -> None:
    """The script `lab completion bash` prints, sourced into bash, completes `lab <TAB>`."""
    bash = shutil.which("bash")
    lab_bin = Path(sys.executable).parent / "lab"
    if bash is None or not lab_bin.exists():
        pytest.skip("needs bash and the installed lab entry point")
    script = ('eval "$(lab completion bash)"; COMP_WORDS=($WORDS); COMP_CWORD=$CWORD; '
              'COMP_LINE="$LINE"; COMP_POINT=${#LINE}; _python_argcomplete lab; '
              'printf "%s\\n" "${COMPREPLY[@]}"')

    def complete(line: str) -> list[str]:
        words = line.split() + ([""] if line.endswith(" ") else [])
        env = {**os.environ, "PATH": f"{lab_bin.parent}:{os.environ['PATH']}",
               "WORDS": " ".join(words), "CWORD": str(len(words) - 1), "LINE": line}
        proc = subprocess.run([bash, "-c", script], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=60)
        assert proc.returncode == 0, proc
        return [w.strip() for w in proc.stdout.splitlines()]

    assert {"run", "report", "compare", "keys", "scenarios", "doctor", "tm", "vm",
            "completion"} <= set(complete("lab "))
    assert "--dry-run" in complete("lab run --d")
    assert "seed-lvs-mysql" in complete("lab run se")
    assert {"plan", "predict", "fit", "live"} <= set(complete("lab tm "))
    zsh = lab("completion", "zsh")
    assert zsh.returncode == 0 and zsh.stdout.startswith("#compdef lab")


def _all_parsers() -> list[tuple[str, argparse.ArgumentParser]]:
    from lab.cli.main import build_parser
    todo = [("lab", build_parser())]
    found = []
    while todo:
        name, parser = todo.pop()
        found.append((name, parser))
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                todo += [(f"{name} {n}", p) for n, p in action.choices.items()]
    return found


def test_help_texts_do_not_point_into_source_files() -> None:
    source = re.compile(r"\blab/[a-z_]+/|\w\.py\b|\blab\.[a-z_]+\.[a-z_]")
    for name, parser in _all_parsers():
        text = parser.format_help()
        assert not source.search(text), (name, source.search(text))


def test_lazy_commands_show_the_help_their_modules_give() -> None:
    """`lab --help` without importing tm and vm says what they say about themselves."""
    from lab.cli.main import LAZY_COMMANDS, build_parser
    assert build_parser(set()).format_help() == build_parser().format_help()
    assert set(LAZY_COMMANDS) == {"tm", "vm"}


def test_parser_constants_are_the_libraries() -> None:
    from lab.cli import main as cli
    from lab.experiment.matrix import DEFAULT_PARALLEL
    from lab.net.runtime import MAX_SLOTS
    assert (cli.DEFAULT_PARALLEL, cli.MAX_PARALLEL) == (DEFAULT_PARALLEL, MAX_SLOTS)


HEAVY = ("matplotlib", "scapy", "docker", "numpy", "rich.live", "lab.experiment.trial",
         "lab.backends", "lab.tm")
IMPORTED = """
import sys
from lab.cli import main
try:
    code = main(sys.argv[2:])
except SystemExit as exc:
    code = exc.code
assert code == 0, code
heavy = sys.argv[1].split(",")
print(sorted({m for m in sys.modules for h in heavy if m == h or m.startswith(h + ".")}))
"""


@pytest.mark.parametrize(("argv", "also_not"), [
    (["--help"], ("pydantic", "rich")),
    (["keys"], ("rich",)),
    (["--version"], ("pydantic", "rich")),
    (["completion", "bash"], ("pydantic", "rich")),
])
def test_start_up_imports_only_what_the_command_uses(argv: list[str],
                                                     also_not: tuple[str, ...]) -> None:
    heavy = ",".join(HEAVY + also_not)
    proc = subprocess.run([sys.executable, "-c", IMPORTED, heavy, *argv], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc
    assert proc.stdout.strip().splitlines()[-1] == "[]", proc.stdout


BLOCK = """
import sys
class Missing:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == sys.argv[1]:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Missing())
from lab.cli import main
sys.exit(main(sys.argv[2:]))
"""


def test_a_missing_extra_is_one_line(tmp_path: Path) -> None:
    """Without matplotlib (the report extra) `lab report` says which extra to install."""
    run_dir = make_run(tmp_path, "run-a", 14.0)
    proc = subprocess.run([sys.executable, "-c", BLOCK, "matplotlib", "report", str(run_dir)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert lab_error(proc) == ("lab: the report needs matplotlib -- pip install "
                               "'blackhole-lab[report]'")
    proc = subprocess.run([sys.executable, "-c", BLOCK, "docker", "image", "build"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert lab_error(proc) == ("lab: lab image build needs docker -- pip install "
                               "'blackhole-lab[docker]'")


# --- the live view ------------------------------------------------------------------------

def test_live_view_shows_deadline_prediction_and_eta() -> None:
    from rich.console import Console

    from lab.cli.views import eta, progress_table
    from lab.experiment.trial import TrialStatus
    now = time.monotonic()
    st = TrialStatus("t1", phase="outage", started=now - 20, fault_t=now - 4, deadline_s=60,
                     predicted_s=13.4, mechanism="retries2")
    assert eta(st, now) == "~9s"
    assert eta(TrialStatus("t", fault_t=now - 20, deadline_s=60, predicted_s=13.4,
                           mechanism="retries2"), now) == "deadline in 40s"
    assert eta(TrialStatus("t", fault_t=now - 5, deadline_s=60, predicted_s=None,
                           mechanism="retries2"), now) == "deadline in 55s"
    assert eta(TrialStatus("t", fault_t=now - 5, recovered_t=now - 1, deadline_s=60), now) \
        == "recovered"
    assert eta(TrialStatus("t", deadline_s=60), now) == "-"
    console = Console(width=200, record=True)
    console.print(progress_table({"t1": st}))
    text = console.export_text()
    for header in ("predicted", "deadline", "ETA"):
        assert header in text
    assert "13.4s retries2" in text and "60s" in text and "~9s" in text


def test_every_preloaded_module_exists() -> None:
    """The entry point imports these before it arms the stop signals (a typo would leave a
    command's imports to after, where a Ctrl-C may interrupt one half-way)."""
    import importlib.util

    from lab.cli.main import PRELOAD
    commands = {n for n, _ in _all_parsers() if n.count(" ") == 1}
    assert {f"lab {c}" for c in PRELOAD} <= commands
    for modules in PRELOAD.values():
        for module in modules:
            assert importlib.util.find_spec(module) is not None, module
