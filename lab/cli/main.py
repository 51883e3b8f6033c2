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
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from lab.config import scenario
from lab.errors import LabError
from lab.experiment import report
from lab.experiment.matrix import DEFAULT_PARALLEL, MatrixRun, new_run_dir
from lab.experiment.trial import TrialStatus
from lab.ops import cleanup, doctor

# piped (make reproduce > log, CI): wide enough that the summary table stays one line a trial
console = Console() if sys.stdout.isatty() else Console(width=170)


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
    """The run's results folder: a new one under --out, or the --resume one (must exist)."""
    if not args.resume:
        return new_run_dir(Path(args.out), scen.name)
    run_dir = Path(args.resume)
    if not run_dir.is_dir():
        raise LabError(f"--resume {run_dir}: no such run directory", "give a results/<run>")
    return run_dir


def _plain_printer(every_s: float) -> Callable[[str], None]:
    """Print a trial's report lines, at most one per `every_s` per trial (piped output)."""
    last_print: dict[str, float] = {}

    def on_line(line: str) -> None:
        name = line.split(":", 1)[0]
        now = time.monotonic()
        if now - last_print.get(name, 0.0) >= every_s:
            last_print[name] = now
            print(line, flush=True)

    return on_line


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
    run_dir = _run_dir(args, scen)
    interactive = console.is_terminal and not args.plain
    on_line = (lambda line: None) if interactive else _plain_printer(args.every)
    matrix = MatrixRun(scen, run_dir, parallel=args.parallel, on_line=on_line)
    console.print(
        f"run {run_dir} ({len(scen.trials)} trial(s), up to {args.parallel} side by side)"
    )
    rows = _run_live(matrix) if interactive else matrix.run()
    console.print(summary_table(rows))
    console.print(f"results: {run_dir}/summary.csv")
    for name, err in matrix.failures.items():
        console.print(f"[red]trial {name} failed:[/red] {err} (see {run_dir / name / 'error.txt'})")
    return 1 if matrix.failures else 0


def cmd_report(args: argparse.Namespace) -> int:
    run_dir = Path(args.run_dir)
    rows = report.read_run(run_dir)
    console.print(summary_table(rows))
    for path in report.make_report(run_dir):
        console.print(f"wrote {path}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    a, b = Path(args.run_a), Path(args.run_b)
    changes, notes = report.compare(a, b, args.metric, args.rel_tol, args.abs_tol)
    table = Table(title=f"{a.name} -> {b.name} (regression: {args.metric} worse by more than "
                        f"{100 * args.rel_tol:.0f} % and {args.abs_tol:g})")
    for col in ("trial", "metric", "A", "B", "delta", ""):
        table.add_column(col)
    for c in changes:
        table.add_row(c.trial, c.metric, _fmt(c.a, ""), _fmt(c.b, ""), _fmt(c.delta, ""),
                      "[red]REGRESSION[/red]" if c.regression else "")
    console.print(table)
    for note in notes:
        console.print(note)
    bad = [c for c in changes if c.regression]
    console.print(f"{len(bad)} regression(s) in {args.metric}")
    return 1 if bad else 0


def cmd_keys(args: argparse.Namespace) -> int:
    from lab.config.settings import TrialSettings
    for key, value in TrialSettings().flat().items():
        print(f"{key} = {value!r}")
    return 0


def cmd_clean(args: argparse.Namespace) -> int:
    removed = cleanup.clean(include_live=args.all)
    for line in removed:
        print(line)
    print(f"lab clean: removed {len(removed)} leftover(s)")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    checks = doctor.run_checks()
    table = Table(title="lab doctor")
    for col in ("check", "status", "detail"):
        table.add_column(col)
    for c in checks:
        table.add_row(c.name, "ok" if c.ok else ("missing" if c.required else "no"), c.detail)
    console.print(table)
    return 0 if all(c.ok for c in checks if c.required) else 1


def cmd_image_build(args: argparse.Namespace) -> int:
    """Build the lab's offline backend image (once per machine: skipped when present)."""
    from lab.backends.docker import engine as docker_engine
    from lab.images import docker as docker_image
    with docker_engine.engine() as eng:
        report_ = docker_image.build(eng.client, mirror=args.mirror)
    print(report_.line())
    return 0


def _add_run(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    run = sub.add_parser("run", help="run one trial or a whole matrix")
    run.add_argument("scenario")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override a setting in every trial (see 'lab keys')")
    run.add_argument("--out", default="results", help="results root (default: results)")
    run.add_argument("--resume", metavar="RUN_DIR", help="finish an interrupted run")
    run.add_argument("--parallel", type=int, default=DEFAULT_PARALLEL,
                     help="trials side by side")
    run.add_argument("--plain", action="store_true", help="no live view; print report lines")
    run.add_argument("--every", type=float, default=1.0,
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
    cmp_.add_argument("--metric", default="measured_outage_s", choices=report.COMPARED,
                      help="the metric that gates (exit 1 when it regresses)")
    cmp_.add_argument("--rel-tol", type=float, default=0.10, help="relative tolerance")
    cmp_.add_argument("--abs-tol", type=float, default=0.5, help="absolute tolerance")
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
    parser = argparse.ArgumentParser(prog="lab", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _add_run(sub)
    _add_results(sub)
    _add_host(sub)

    from lab.cli import tm as tm_cli
    from lab.cli import vm as vm_cli
    tm_cli.register(sub)
    vm_cli.register(sub)
    return parser


def _sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _plain_signals_in_forked_child() -> None:
    """A forked helper (pyroute2 forks one per IPRoute(netns=...) and ends it with SIGTERM)
    must die of SIGTERM, not raise KeyboardInterrupt into a copy of the lab's threads, where
    it would hang for ever and its parent with it; and it leaves Ctrl-C to the parent, which
    tears everything down and stops its helpers."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _sigterm)
    os.register_at_fork(after_in_child=_plain_signals_in_forked_child)
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except LabError as exc:
        print(f"lab: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lab: interrupted; everything the run created was removed", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
