"""`lab`: the command line, thin over the library.

    lab run SCENARIO [--set key=value ...] [--out DIR] [--resume RUN_DIR]
    lab report RUN_DIR       table + plots of a run
    lab compare RUN_A RUN_B  what changed, trial by trial; exit 1 on a regression
    lab keys                 every scenario key with its default
    lab clean [--all]        remove what killed runs left behind
    lab doctor               what this host can run (also: is Docker usable, which images)
    lab image build          the docker provider's offline image (idempotent)
    lab tm plan|predict|fit  the traffic manager's logic on a state file
    lab vm build|test|run    the lab inside a VM with real IPVS (make vm-test)

Exit codes (a CI can gate on them):
    0  every trial ran and agrees with the model (lab compare: no regression)
    1  the lab failed: a trial could not be built or run (see its error.txt);
       lab compare: a regression
    2  bad input: a scenario, a --set, an option, or a host that cannot run it (one line)
    3  a trial disagrees with the model, or did not recover when it should have
  130  interrupted (Ctrl-C, SIGTERM): everything the run created was removed
"""

from __future__ import annotations

import argparse
import math
import threading
import time
from pathlib import Path
from typing import Any

from rich.live import Live
from rich.table import Table

from lab.cli.output import PlainPrinter, console, emit, say, warn
from lab.config import scenario
from lab.errors import LabError
from lab.experiment import compare, preflight, report, rundata, rundir
from lab.experiment.matrix import DEFAULT_PARALLEL, MatrixRun
from lab.experiment.trial import TrialStatus
from lab.net.runtime import MAX_SLOTS
from lab.ops import cleanup, doctor

OK, LAB_FAILED, BAD_INPUT, MISMATCH, INTERRUPTED = 0, 1, 2, 3, 130


def _fmt(x: Any, unit: str = "s") -> str:
    if x in (None, ""):
        return "-"
    try:
        return f"{float(x):.2f}{unit}"
    except (TypeError, ValueError):
        return str(x)


def progress_table(statuses: dict[str, TrialStatus]) -> Table:
    table = Table(title="blackhole-lab", expand=False)
    for col in ("trial", "phase", "elapsed", "qps", "outage clock", "last report"):
        table.add_column(col)
    now = time.monotonic()
    for st in statuses.values():
        elapsed = now - st.started if st.started else 0.0
        if st.fault_t is None:
            clock = "-"
        elif st.recovered_t is not None:
            clock = f"{st.recovered_t - st.fault_t:.2f}s (recovered)"
        else:
            clock = f"{now - st.fault_t:.1f}s"
        table.add_row(st.name, st.phase, f"{elapsed:.0f}s", f"{st.qps:.0f}", clock,
                      st.last_line[:70])
    return table


def summary_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(title="summary (outage = fault -> first successful transaction after it)")
    for col in ("trial", "lb", "fault", "predicted", "mechanism", "measured", "detect", "errors",
                "reconn", "verdict"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r["trial"], r["lb"], r["fault"], _fmt(r["predicted_outage_s"]),
            str(r["predicted_mechanism"]), _fmt(r["measured_outage_s"]), _fmt(r["detect_s"]),
            str(r["errors"]), str(r["reconnects"]), str(r["verdict"]),
        )
    return table


def _run_dir(args: argparse.Namespace, scen: scenario.Scenario) -> Path:
    """The run's results folder: a new one under --out, or the --resume one, which must be a
    run of this same scenario and settings (checked again under its lock by MatrixRun)."""
    if not args.resume:
        return rundir.new_run_dir(Path(args.out), scen.name)
    run_dir = Path(args.resume)
    if not run_dir.is_dir() or rundir.recorded(run_dir) is None:
        raise LabError(f"--resume {run_dir}: no such run directory (no run.json)",
                       "give a results/<run> directory that 'lab run' made")
    rundir.check_resume(run_dir, scen)
    return run_dir


def _run_live(matrix: MatrixRun) -> list[dict[str, Any]]:
    """matrix.run() under a live progress table, redrawn 4 times a second."""
    with Live(progress_table(matrix.statuses), console=console, refresh_per_second=4) as live:
        done = threading.Event()

        def refresh() -> None:
            while not done.wait(0.25):
                live.update(progress_table(matrix.statuses))

        t = threading.Thread(target=refresh, daemon=True)
        t.start()
        try:
            return matrix.run()
        finally:
            done.set()
            t.join()
            live.update(progress_table(matrix.statuses))


def cmd_run(args: argparse.Namespace) -> int:
    scen = scenario.load(Path(args.scenario), args.set)
    preflight.check(scen.trials)  # once per run, before anything is built
    run_dir = _run_dir(args, scen)
    interactive = console.is_terminal and not args.plain
    printer = None if interactive else PlainPrinter(args.every)
    matrix = MatrixRun(scen, run_dir, parallel=args.parallel, on_line=printer)
    say(f"run {run_dir} ({len(scen.trials)} trial(s), up to {args.parallel} side by side)")
    try:
        rows = _run_live(matrix) if interactive else matrix.run()
    finally:
        if printer is not None:
            printer.close()
    _print_outcome(matrix, rows)
    return run_exit_code(matrix, rows)


def _print_outcome(matrix: MatrixRun, rows: list[dict[str, Any]]) -> None:
    run_dir = matrix.run_dir
    say(summary_table(rows))
    if (run_dir / "summary.csv").exists():
        say(f"results: {run_dir}/summary.csv")
    else:
        warn(f"lab: no trial finished, so {run_dir} has no summary.csv")
    for name, err in matrix.failures.items():
        warn(f"lab: trial {name} failed: {err} (see {run_dir / name / 'error.txt'})")


def run_exit_code(matrix: MatrixRun, rows: list[dict[str, Any]]) -> int:
    """1 when a trial failed to run, else 3 when one disagrees with the model, else 0."""
    if matrix.failures:
        return LAB_FAILED
    if any(str(r.get("verdict", "")).startswith("MISMATCH") for r in rows):
        return MISMATCH
    return OK


def cmd_report(args: argparse.Namespace) -> int:
    run_dir = Path(args.run_dir)
    rows = rundata.read_run(run_dir)
    say(summary_table(rows))
    for path in report.make_report(run_dir):
        say(f"wrote {path}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    a, b = Path(args.run_a), Path(args.run_b)
    changes, notes = compare.compare(a, b, args.metric, args.rel_tol, args.abs_tol)
    table = Table(title=f"{a.name} -> {b.name} (regression: {args.metric} worse by more than "
                        f"{100 * args.rel_tol:.0f} % and {args.abs_tol:g})")
    for col in ("trial", "metric", "A", "B", "delta", ""):
        table.add_column(col)
    for c in changes:
        table.add_row(c.trial, c.metric, _fmt(c.a, ""), _fmt(c.b, ""), _fmt(c.delta, ""),
                      "[red]REGRESSION[/red]" if c.regression else "")
    say(table)
    for note in notes:
        say(note)
    bad = [c for c in changes if c.regression]
    say(f"{len(bad)} regression(s) in {args.metric}")
    return LAB_FAILED if bad else OK


def cmd_keys(args: argparse.Namespace) -> int:
    from lab.config.settings import TrialSettings
    for key, value in TrialSettings().flat().items():
        emit(f"{key} = {value!r}")
    return 0


def cmd_clean(args: argparse.Namespace) -> int:
    removed = cleanup.clean(include_live=args.all)
    for line in removed:
        emit(line)
    emit(f"lab clean: removed {len(removed)} leftover(s)")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    checks = doctor.run_checks()
    table = Table(title="lab doctor")
    for col in ("check", "status", "detail"):
        table.add_column(col)
    for c in checks:
        table.add_row(c.name, "ok" if c.ok else ("missing" if c.required else "no"), c.detail)
    say(table)
    return OK if all(c.ok for c in checks if c.required) else LAB_FAILED


def cmd_image_build(args: argparse.Namespace) -> int:
    """Build the lab's offline backend image (once per machine: skipped when present)."""
    from lab.backends.docker import engine as docker_engine
    from lab.images import docker as docker_image
    with docker_engine.engine() as eng:
        report_ = docker_image.build(eng.client, mirror=args.mirror)
    emit(report_.line())
    return 0


def _parallel(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 1 <= value <= MAX_SLOTS:
        raise argparse.ArgumentTypeError(f"{value} is not in 1..{MAX_SLOTS} (one address "
                                         "slot per trial)")
    return value


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text} is not a finite number >= 0")
    return value


def _add_run(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    run = sub.add_parser("run", help="run one trial or a whole matrix")
    run.add_argument("scenario")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override a setting in every trial (see 'lab keys')")
    run.add_argument("--out", default="results", help="results root (default: results)")
    run.add_argument("--resume", metavar="RUN_DIR", help="finish an interrupted run")
    run.add_argument("--parallel", type=_parallel, default=DEFAULT_PARALLEL,
                     help=f"trials side by side (1-{MAX_SLOTS})")
    run.add_argument("--plain", action="store_true", help="no live view; print report lines")
    run.add_argument("--every", type=_non_negative, default=1.0,
                     help="with --plain: seconds between report lines per trial")
    run.set_defaults(func=cmd_run)


def _add_results(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`lab report` and `lab compare`: they read results, they run nothing."""
    rep = sub.add_parser("report", help="table and PNG plots of a run")
    rep.add_argument("run_dir")
    rep.set_defaults(func=cmd_report)

    cmp_ = sub.add_parser("compare", help="compare two runs trial by trial")
    cmp_.add_argument("run_a")
    cmp_.add_argument("run_b")
    cmp_.add_argument("--metric", default="measured_outage_s", choices=compare.COMPARED,
                      help="the metric that gates (exit 1 when it regresses)")
    cmp_.add_argument("--rel-tol", type=_non_negative, default=0.10,
                      help="relative tolerance")
    cmp_.add_argument("--abs-tol", type=_non_negative, default=0.5,
                      help="absolute tolerance")
    cmp_.set_defaults(func=cmd_compare)


def _add_host(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`lab keys`, `lab clean`, `lab doctor`, `lab image build`: the host and its setup."""
    sub.add_parser("keys", help="list scenario keys and defaults").set_defaults(func=cmd_keys)

    clean = sub.add_parser("clean", help="remove leftovers of killed runs")
    clean.add_argument("--all", action="store_true", help="also runs whose process is alive")
    clean.set_defaults(func=cmd_clean)

    sub.add_parser("doctor", help="what this host can run").set_defaults(func=cmd_doctor)

    image = sub.add_parser("image", help="the docker provider's backend image")
    image_sub = image.add_subparsers(dest="image_command", required=True)
    image_build = image_sub.add_parser(
        "build", help="build the local offline image (debootstrap + docker import); "
        "idempotent")
    image_build.add_argument("--mirror", help="Debian mirror (default: the one apt uses)")
    image_build.set_defaults(func=cmd_image_build)


def build_parser() -> argparse.ArgumentParser:
    assert __doc__ is not None
    parser = argparse.ArgumentParser(
        prog="lab", description=__doc__.splitlines()[0],
        epilog=__doc__[__doc__.index("Exit codes"):],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_run(sub)
    _add_results(sub)
    _add_host(sub)

    from lab.cli import tm as tm_cli
    from lab.cli import vm as vm_cli
    tm_cli.register(sub)
    vm_cli.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; the stop signals are installed by the entry point (lab.cli)."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except LabError as exc:
        warn(f"lab: {exc}")
        return BAD_INPUT
    except KeyboardInterrupt:
        warn("lab: interrupted; everything the run created was removed")
        return INTERRUPTED
