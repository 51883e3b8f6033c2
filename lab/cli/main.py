"""blackhole-lab: reproduce, measure and fix the blackhole of long-lived TCP connections.

    lab run SCENARIO [--set key=value ...] [--out DIR] [--resume RUN_DIR] [--dry-run]
            [--shard I/N]    run shard I of N (1-based) of the trials, for N machines
    lab merge RUN_DIR... [-o OUT]  the shards' run dirs as one run
    lab scenarios            the scenarios that ship with the lab (lab run NAME runs one)
    lab report RUN_DIR       table + plots of a run
    lab compare RUN_A RUN_B  what changed, what differs; exit 1 on a regression (--fail-on)
    lab keys [--schema]      every scenario key: type, unit, range, default, as TOML
    lab keys --stacks        what each client.* key becomes in each zoo stack
    lab clean [--all]        remove what killed runs left behind
    lab doctor               what this host can run, and the fix for what it cannot
    lab image build          the docker provider's offline image (idempotent)
    lab tm plan|predict|fit|live  the traffic manager's logic, and its loop in the lab
    lab vm build|test|run    the lab inside a VM with real IPVS (make vm-test)
    lab completion bash|zsh  the shell's completion script: eval "$(lab completion bash)"

run, report, compare, merge, keys, scenarios and doctor take --json: JSON on stdout, the
rest on stderr, the exit code unchanged.

Exit codes (a CI can gate on them; lab merge gives lab run's for the merged trials):
    0  every trial ran and agrees with the model (lab compare: no regression)
    1  the lab failed: a trial could not be built or run (see its error.txt);
       lab compare: a regression
    2  bad input: a scenario, a --set, an option, or a host that cannot run it (one line)
    3  a trial disagrees with the model, or did not recover when it should have
  130  interrupted (Ctrl-C, SIGTERM): everything the run created was removed
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import math
import os
import shlex
import sys
from collections.abc import Collection, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lab.cli.output import PlainPrinter, console, emit, messages_to_stderr, say, warn
from lab.errors import LabError
from lab.experiment import compare

if TYPE_CHECKING:
    from lab.config.scenario import Scenario
    from lab.experiment.matrix import MatrixRun
    from lab.experiment.shard import Shard

    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]

OK, LAB_FAILED, BAD_INPUT, MISMATCH, INTERRUPTED = 0, 1, 2, 3, 130
# lab.experiment.matrix's DEFAULT_PARALLEL and lab.net.runtime's MAX_SLOTS (a test holds them
# equal), not imported: they import every part of a trial, which `lab --help` has no use for
DEFAULT_PARALLEL, MAX_PARALLEL = 8, 64
# commands whose modules are imported only when they run (`lab --help` shows these lines)
LAZY_COMMANDS = {
    "tm": ("lab.cli.tm", "traffic manager: shift load off overloaded sites, predict failover, "
           "fit max"),
    "vm": ("lab.cli.vm", "the lab in a VM with real IPVS (make vm-test)"),
}
# what each command imports, loaded by the entry point before a stop signal may interrupt
# an import (lab.cli): a command imports only its own, so `lab --help` starts in ~0.1 s
PRELOAD = {
    "run": ("lab.config.scenario", "lab.experiment.preflight", "lab.experiment.matrix",
            "lab.experiment.shard", "lab.cli.views", "lab.cli.live", "rich.live"),
    "merge": ("lab.experiment.merge", "lab.cli.views"),
    "report": ("lab.experiment.report", "lab.cli.views"),
    "compare": ("lab.cli.views",),
    "keys": ("lab.config.keys",),
    "scenarios": ("lab.config.scenario", "lab.cli.views"),
    "clean": ("lab.ops.cleanup",),
    "doctor": ("lab.ops.doctor", "lab.cli.views"),
    "image": ("lab.backends.docker.engine", "lab.images.docker"),
}
# optional extras: the modules each brings (pyproject.toml [project.optional-dependencies])
EXTRAS = {"report": ("matplotlib", "PIL"), "docker": ("docker",)}


@contextlib.contextmanager
def needs_extra(extra: str, what: str) -> Iterator[None]:
    """A module of an optional extra that is not installed: one line saying which extra to
    install, not a traceback."""
    try:
        yield
    except ModuleNotFoundError as exc:
        top = (exc.name or "").split(".")[0]
        if top not in EXTRAS[extra]:
            raise
        raise LabError(f"{what} needs {top}",
                       f"pip install 'blackhole-lab[{extra}]'") from None


def print_json(data: Any) -> None:
    emit(json.dumps(data, indent=2, default=str))


# --- lab run ------------------------------------------------------------------------------

def _run_dir(args: argparse.Namespace, scen: Scenario, shard: Shard | None) -> Path:
    """The run's results folder: a new one under --out, or the --resume one, which must be a
    run of this same scenario, settings and shard (checked again under its lock by
    MatrixRun)."""
    from lab.experiment import rundir
    if not args.resume:
        return rundir.new_run_dir(Path(args.out), scen.name)
    run_dir = Path(args.resume)
    if not run_dir.is_dir() or rundir.recorded(run_dir) is None:
        raise LabError(f"--resume {run_dir}: no such run directory (no run.json)",
                       "give a results/<run> directory that 'lab run' made")
    rundir.check_resume(run_dir, scen, shard)
    return run_dir


def _run_live(matrix: MatrixRun) -> list[dict[str, Any]]:
    """matrix.run() under the live progress view (lab.cli.live: one redraw path, 4 a second,
    at most the terminal's height in rows)."""
    from lab.cli.live import LiveProgress
    with LiveProgress(matrix.statuses, console()):
        return matrix.run()


def _load(args: argparse.Namespace) -> Scenario:
    from lab.config import scenario
    return scenario.load(scenario.resolve(args.scenario), args.set)


def _shard(args: argparse.Namespace) -> Shard | None:
    """--shard I/N, checked before the scenario is read (one line if it is not I/N)."""
    if args.shard is None:
        return None
    from lab.experiment import shard
    return shard.parse(args.shard)


def _announce(run_dir: Path, scen: Scenario, matrix: MatrixRun, parallel: int) -> None:
    n = len(matrix.trials)
    if matrix.shard is None:
        say(f"run {run_dir} ({n} trial(s), up to {parallel} side by side)")
        return
    say(f"run {run_dir}: shard {matrix.shard}, {n} of the scenario's {len(scen.trials)} "
        f"trial(s), up to {parallel} side by side")
    if n == 0:
        warn(f"lab: shard {matrix.shard} has no trial (more shards than trials): it records "
             "an empty run, for lab merge")


def cmd_run(args: argparse.Namespace) -> int:
    if args.json:
        messages_to_stderr()
    shard = _shard(args)
    scen = _load(args)
    if args.dry_run:
        return dry_run(scen, args.parallel, args.json, shard)
    with needs_extra("docker", "a trial"):  # until every part imports docker only for itself
        from lab.experiment import preflight
        from lab.experiment.matrix import MatrixRun
    trials = scen.trials if shard is None else shard.select(scen.trials)
    preflight.check(trials)  # once per run, before anything is built
    run_dir = _run_dir(args, scen, shard)
    interactive = console().is_terminal and not args.plain and not args.json
    printer = None if interactive else PlainPrinter(
        args.every, out=sys.stderr if args.json else None)
    matrix = MatrixRun(scen, run_dir, parallel=args.parallel, on_line=printer, shard=shard)
    _announce(run_dir, scen, matrix, args.parallel)
    try:
        rows = _run_live(matrix) if interactive else matrix.run()
    finally:
        if printer is not None:
            printer.close()
    _print_outcome(matrix, rows)
    if args.json:
        from lab.experiment import rundata
        print_json({"run_dir": str(run_dir), "trials": [rundata.typed_row(r) for r in rows],
                    "shard": None if shard is None else str(shard),
                    "failures": matrix.failures, "exit_code": run_exit_code(matrix, rows)})
    return run_exit_code(matrix, rows)


def _print_outcome(matrix: MatrixRun, rows: list[dict[str, Any]]) -> None:
    from lab.cli.views import summary_table
    run_dir = matrix.run_dir
    say(summary_table(rows))
    if (run_dir / "summary.csv").exists():
        say(f"results: {run_dir}/summary.csv")
    elif matrix.trials:
        warn(f"lab: no trial finished, so {run_dir} has no summary.csv")
    for name, err in matrix.failures.items():
        warn(f"lab: trial {name} failed: {err} (see {run_dir / name / 'error.txt'})")


def run_exit_code(matrix: MatrixRun, rows: list[dict[str, Any]]) -> int:
    """1 when a trial failed to run, else 3 when one disagrees with the model, else 0."""
    return verdict_code(matrix.failures, rows)


def verdict_code(failures: Collection[str], rows: Sequence[dict[str, Any]]) -> int:
    """lab run's exit code from what ran (lab merge gives the same for the merged trials)."""
    if failures:
        return LAB_FAILED
    if any(str(r.get("verdict", "")).startswith("MISMATCH") for r in rows):
        return MISMATCH
    return OK


# --- lab run --dry-run --------------------------------------------------------------------

def dry_run(scen: Scenario, parallel: int, as_json: bool, shard: Shard | None = None) -> int:
    """What the run (of the shard, if one is given) would show, from the model: nothing is
    built, no root needed."""
    import dataclasses

    from lab.experiment import dryrun
    if shard is not None:
        scen = dataclasses.replace(scen, trials=shard.select(scen.trials))
    plans = dryrun.plan(scen)
    wall = dryrun.wall_estimate([p["observed_s"] for p in plans], parallel)
    if as_json:
        print_json({"scenario": scen.name, "trials": plans, "parallel": parallel,
                    "shard": None if shard is None else str(shard),
                    "estimated_wall_s": round(wall, 3)})
        return OK
    from lab.cli.views import dry_run_table
    say(dry_run_table(plans))
    of = "" if shard is None else f" of shard {shard}"
    say(f"{len(plans)} trial(s){of}; with --parallel {parallel} the run takes about {wall:.0f} s "
        "plus each trial's build and warm-up")
    return OK


# --- results: report, compare ---------------------------------------------------------------

def cmd_report(args: argparse.Namespace) -> int:
    from lab.experiment import rundata
    if args.json:
        messages_to_stderr()
    run_dir = Path(args.run_dir)
    rows = rundata.read_run(run_dir)
    with needs_extra("report", "the report"):
        from lab.experiment import report
    paths = report.make_report(run_dir)
    if args.json:
        print_json({"run_dir": str(run_dir), "trials": [rundata.typed_row(r) for r in rows],
                    "wrote": [str(p) for p in paths]})
        return OK
    from lab.cli.views import summary_table
    say(summary_table(rows))
    for path in paths:
        emit(f"wrote {path}")
    return OK


def cmd_merge(args: argparse.Namespace) -> int:
    """The shards' run dirs as one run dir; the exit code is lab run's for the merged trials."""
    from lab.experiment import merge, rundata
    if args.json:
        messages_to_stderr()
    merged = merge.merge([Path(p) for p in args.run_dirs], Path(args.out) if args.out else None)
    code = verdict_code(merged.failures, merged.rows)
    if args.json:
        print_json({"run_dir": str(merged.out), "shards": [p.label for p in merged.parts],
                    "trials": [rundata.typed_row(r) for r in merged.rows],
                    "failures": merged.failures, "exit_code": code})
        return code
    from lab.cli.views import summary_table
    say(summary_table(merged.rows))
    hosts = sorted({str((p.record.get("shard") or {}).get("hostname") or "?")
                    for p in merged.parts})
    say(f"merged {len(merged.parts)} shard(s) from {len(hosts)} host(s) ({', '.join(hosts)}): "
        f"{merged.out}/summary.csv")
    for name, err in merged.failures.items():
        warn(f"lab: trial {name} failed: {err} (see {merged.out / name / 'error.txt'})")
    return code


def _comparison_json(args: argparse.Namespace, c: compare.Comparison) -> dict[str, Any]:
    def pairs(diff: compare.Diff) -> dict[str, dict[str, Any]]:
        return {k: {"a": a, "b": b} for k, (a, b) in diff.items()}
    return {
        "a": str(args.run_a), "b": str(args.run_b), "metric": args.metric,
        "fail_on_pct": args.fail_on, "abs_tol": args.abs_tol,
        "regressions": [x.as_dict() for x in c.regressions],
        "changes": [x.as_dict() for x in c.changes],
        "differs": {"run": pairs(c.run), "every_trial": pairs(c.every_trial),
                    "trials": {t: pairs(d) for t, d in c.trials.items()}},
        "notes": c.notes,
    }


def cmd_compare(args: argparse.Namespace) -> int:
    a, b = Path(args.run_a), Path(args.run_b)
    c = compare.compare_runs(a, b, args.metric, args.fail_on / 100, args.abs_tol)
    if args.json:
        print_json(_comparison_json(args, c))
        return LAB_FAILED if c.regressions else OK
    from lab.cli.views import compare_table, diff_lines
    say(compare_table(f"{a.name} -> {b.name} (regression: {args.metric} worse by more than "
                      f"{args.fail_on:g} % and {args.abs_tol:g})", c))
    for line in [*diff_lines(c), *c.notes]:
        emit(line)
    emit(f"{len(c.regressions)} regression(s) in {args.metric}")
    return LAB_FAILED if c.regressions else OK


# --- the host and the settings ----------------------------------------------------------------

def cmd_keys(args: argparse.Namespace) -> int:
    from lab.config import keys as reference
    if args.stacks:
        return _stacks(args)
    if args.schema:
        print_json(reference.scenario_schema())
    elif args.json:
        print_json([k.as_dict() for k in reference.all_keys()])
    else:
        emit(reference.toml().rstrip("\n"))
    return OK


def _stacks(args: argparse.Namespace) -> int:
    """`lab keys --stacks`: what each client key becomes in each zoo stack's library."""
    from lab.config.stacks import stack_options
    rows = stack_options()
    if args.json:
        print_json(rows)
        return OK
    from lab.cli.views import stacks_table
    say(stacks_table(rows))
    return OK


def cmd_scenarios(args: argparse.Namespace) -> int:
    from lab.config import scenario
    shipped = scenario.shipped()
    if args.json:
        print_json([{"name": s.name, "path": str(s.path), "trials": s.trials,
                     "description": s.description} for s in shipped])
        return OK
    from lab.cli.views import scenarios_table
    say(scenarios_table(shipped))
    emit(f"in {scenario.SHIPPED_DIR}; the traffic manager's (lab tm) in "
         f"{scenario.SHIPPED_DIR / 'tm'}")
    return OK


def cmd_clean(args: argparse.Namespace) -> int:
    with needs_extra("docker", "lab clean"):
        from lab.ops import cleanup
    removed = cleanup.clean(include_live=args.all)
    for line in removed:
        emit(line)
    emit(f"lab clean: removed {len(removed)} leftover(s)")
    return OK


def cmd_doctor(args: argparse.Namespace) -> int:
    with needs_extra("docker", "lab doctor"):
        from lab.ops import doctor
        checks = doctor.run_checks()
    if args.json:
        print_json([{"name": c.name, "ok": c.ok, "required": c.required, "detail": c.detail,
                     "fix": None if c.ok else (c.fix or None)} for c in checks])
    else:
        from lab.cli.views import doctor_table
        say(doctor_table(checks))
    return OK if all(c.ok for c in checks if c.required) else LAB_FAILED


def cmd_image_build(args: argparse.Namespace) -> int:
    """Build the lab's offline backend image (once per machine: skipped when present)."""
    with needs_extra("docker", "lab image build"):
        from lab.backends.docker import engine as docker_engine
        from lab.images import docker as docker_image
    with docker_engine.engine() as eng:
        report_ = docker_image.build(eng.client, mirror=args.mirror)
    emit(report_.line())
    return OK


def cmd_completion(args: argparse.Namespace) -> int:
    import argcomplete
    emit(argcomplete.shellcode(["lab"], shell=args.shell).rstrip("\n"))
    return OK


# --- the parser -----------------------------------------------------------------------------

def _parallel(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 1 <= value <= MAX_PARALLEL:
        raise argparse.ArgumentTypeError(f"{value} is not in 1..{MAX_PARALLEL} (one address "
                                         "slot per trial)")
    return value


def _fraction_as_pct(text: str) -> float:
    """--rel-tol 0.1 (a CI script's older spelling) is --fail-on 10."""
    return 100 * _non_negative(text)


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text} is not a finite number >= 0")
    return value


def complete_scenario(prefix: str, **_: Any) -> list[str]:
    """Shell completion of `lab run`'s scenario: the shipped names, and TOML files."""
    import argcomplete

    from lab.config import scenario
    names = [s.stem for s in scenario.SHIPPED_DIR.glob("*.toml") if s.stem.startswith(prefix)]
    files = argcomplete.FilesCompleter(("toml",))(prefix)
    return sorted(names) + list(files)


def _json_flag(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--json", action="store_true",
                        help=f"{what} as JSON on stdout (messages on stderr)")


def _add_run(sub: Subparsers) -> None:
    run = sub.add_parser("run", help="run one trial or a whole matrix")
    scenario_arg = run.add_argument(
        "scenario", help="a scenario file, or a name that 'lab scenarios' lists")
    scenario_arg.completer = complete_scenario  # type: ignore[attr-defined]
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override a setting in every trial (see 'lab keys')")
    run.add_argument("--out", default="results", help="results root (default: results)")
    run.add_argument("--resume", metavar="RUN_DIR", help="finish an interrupted run")
    run.add_argument("--parallel", type=_parallel, default=DEFAULT_PARALLEL,
                     help=f"trials side by side (1-{MAX_PARALLEL}, default {DEFAULT_PARALLEL})")
    run.add_argument("--plain", action="store_true", help="no live view; print report lines")
    run.add_argument("--every", type=_non_negative, default=1.0,
                     help="with --plain: seconds between report lines per trial")
    run.add_argument("--shard", metavar="I/N",
                     help="run shard I of N (I is 1-based: 1..N) of the trials: a split "
                     "that depends on the scenario alone, balanced by the model's predicted "
                     "length; 'lab merge' joins the N run dirs")
    run.add_argument("--dry-run", action="store_true",
                     help="print each trial's predicted outage and mechanism, build nothing "
                     "(no root needed)")
    _json_flag(run, "the summary rows")
    run.set_defaults(func=cmd_run)


def _add_merge(sub: Subparsers) -> None:
    """`lab merge`: the shards of `lab run --shard` as one run."""
    merge = sub.add_parser(
        "merge", help="join the run dirs of a sharded run (lab run --shard I/N) into one",
        description="The run dirs of every shard of one split as one run dir: summary.csv, "
        "each trial's directory, and run.json with the shards and the hosts they ran on. "
        "Refused (exit 2, one line): runs of different scenario files or --set values, of "
        "different splits, a shard given twice or missing, a run that did not finish. "
        "Exit codes as lab run's for the merged trials: 0, 1 a trial failed, 3 a mismatch.")
    merge.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                       help="each shard's results/<run-id> directory")
    merge.add_argument("-o", dest="out", metavar="OUT",
                       help="the merged run's directory, new or empty (default: a new "
                       "results/<stamp>-<scenario>)")
    _json_flag(merge, "the merged summary rows")
    merge.set_defaults(func=cmd_merge)


def _add_results(sub: Subparsers) -> None:
    """`lab report`, `lab compare` and `lab merge`: they read results, they run nothing."""
    rep = sub.add_parser("report", help="table and PNG plots of a run")
    rep.add_argument("run_dir", help="a results/<run-id> directory")
    _json_flag(rep, "the summary rows and the files written")
    rep.set_defaults(func=cmd_report)

    cmp_ = sub.add_parser(
        "compare", help="compare two runs trial by trial; exit 1 on a regression",
        description="Per trial in both runs: each metric in A and B, its change in percent, "
        "and which settings differ. A regression is the gated metric getting worse by more "
        "than --fail-on percent and more than --abs-tol (B not recovering where A did is one "
        "too); exit 1 if there is one, 0 if not, 2 if the runs share no trial.")
    cmp_.add_argument("run_a", help="the run before: a results/<run-id> directory")
    cmp_.add_argument("run_b", help="the run after, compared with run_a")
    cmp_.add_argument("--metric", default="measured_outage_s", choices=compare.COMPARED,
                      help="the metric that gates (default: measured_outage_s)")
    cmp_.add_argument("--fail-on", type=_non_negative, default=10.0, metavar="PCT",
                      help="a regression is the metric worse by more than PCT percent "
                      "(default: 10)")
    cmp_.add_argument("--rel-tol", dest="fail_on", type=_fraction_as_pct,
                      default=argparse.SUPPRESS, metavar="FRACTION",
                      help="the older spelling of --fail-on, as a fraction (0.1 = 10 %%)")
    cmp_.add_argument("--abs-tol", type=_non_negative, default=0.5, metavar="X",
                      help="... and by more than X in the metric's unit, its noise floor "
                      "(default: 0.5)")
    _json_flag(cmp_, "changes, settings that differ and regressions")
    cmp_.set_defaults(func=cmd_compare)
    _add_merge(sub)


def _add_host(sub: Subparsers) -> None:
    """`lab keys`, `lab scenarios`, `lab clean`, `lab doctor`, `lab image build`."""
    keys = sub.add_parser("keys", help="every scenario key with its type, unit, range, "
                          "default and description (TOML to paste into a scenario)")
    keys.add_argument("--schema", action="store_true",
                      help="a JSON Schema of a scenario file instead, for editors")
    keys.add_argument("--stacks", action="store_true",
                      help="what each client.* key becomes in each zoo stack (load.stack)")
    _json_flag(keys, "the keys")
    keys.set_defaults(func=cmd_keys)

    scen = sub.add_parser("scenarios", help="the scenarios that ship with the lab")
    _json_flag(scen, "the scenarios")
    scen.set_defaults(func=cmd_scenarios)

    clean = sub.add_parser("clean", help="remove leftovers of killed runs")
    clean.add_argument("--all", action="store_true", help="also runs whose process is alive")
    clean.set_defaults(func=cmd_clean)

    doctor = sub.add_parser("doctor", help="what this host can run, and how to fix the rest")
    _json_flag(doctor, "the checks")
    doctor.set_defaults(func=cmd_doctor)

    image = sub.add_parser("image", help="the docker provider's backend image")
    image_sub = image.add_subparsers(dest="image_command", required=True)
    image_build = image_sub.add_parser(
        "build", help="build the local offline image (debootstrap + docker import); "
        "idempotent")
    image_build.add_argument("--mirror", help="Debian mirror (default: the one apt uses)")
    image_build.set_defaults(func=cmd_image_build)

    completion = sub.add_parser("completion", help="print the shell's completion script")
    completion.add_argument("shell", choices=("bash", "zsh"),
                            help='e.g. eval "$(lab completion bash)" in ~/.bashrc')
    completion.set_defaults(func=cmd_completion)


class _Version(argparse.Action):
    """--version: the package version and the checkout's commit (git runs only then)."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS,
                 default: Any = argparse.SUPPRESS, help: str | None = None) -> None:
        super().__init__(option_strings, dest, nargs=0, default=default, help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        from lab import version
        commit = version.git_commit()
        emit(f"lab {version.version()}" + (f" (commit {commit})" if commit else ""))
        parser.exit()


def build_parser(load: Collection[str] | None = None) -> argparse.ArgumentParser:
    """The whole parser; of LAZY_COMMANDS only those in `load` (None: all) are registered by
    their modules, the others are a help line each (their modules import numpy, pydantic)."""
    assert __doc__ is not None
    parser = argparse.ArgumentParser(
        prog="lab", description=__doc__.splitlines()[0],
        epilog=__doc__[__doc__.index("run, report, compare"):],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action=_Version, help="print the lab's version and commit")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_run(sub)
    _add_results(sub)
    _add_host(sub)
    for name, (module, help_) in LAZY_COMMANDS.items():
        if load is None or name in load:
            importlib.import_module(module).register(sub)
        else:
            sub.add_parser(name, help=help_)
    return parser


def _words(argv: Sequence[str]) -> list[str]:
    """The command line's words; under completion (argcomplete), the line being completed."""
    if "_ARGCOMPLETE" in os.environ:
        line = os.environ.get("COMP_LINE", "")
        point = int(os.environ.get("COMP_POINT", len(line)))
        with contextlib.suppress(ValueError):
            return shlex.split(line[:point])[1:]
    return list(argv)


def needed(argv: Sequence[str]) -> set[str]:
    """The lazy command this command line runs, if any (the first word not an option)."""
    command = next((w for w in _words(argv) if not w.startswith("-")), None)
    return {command} & set(LAZY_COMMANDS) if command else set()


def preload(argv: list[str] | None = None) -> None:
    """Import what the command will use (the entry point calls this while stop signals are
    only noted); one that is missing is left to the command, to say so in one line."""
    argv = sys.argv[1:] if argv is None else argv
    if "_ARGCOMPLETE" in os.environ:
        return
    command = next((w for w in argv if not w.startswith("-")), "")
    for module in PRELOAD.get(command, ()):
        with contextlib.suppress(ImportError):
            importlib.import_module(module)


def main(argv: list[str] | None = None) -> int:
    """Run one command; the stop signals are installed by the entry point (lab.cli)."""
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(needed(argv))
    if "_ARGCOMPLETE" in os.environ:  # the shell asks for completions: answer and exit
        import argcomplete
        argcomplete.autocomplete(parser)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except LabError as exc:
        warn(f"lab: {exc}")
        return BAD_INPUT
    except KeyboardInterrupt:
        warn("lab: interrupted; everything the run created was removed")
        return INTERRUPTED
    finally:
        messages_to_stderr(False)  # an in-process caller (a test) gets stdout back
