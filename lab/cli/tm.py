"""`lab tm plan|predict|fit|live`: the traffic manager's logic on a state or samples file,
and (`live`) its control loop on real traffic in the lab (lab.tm.live).

The main CLI calls `register(subparsers)` and then `args.func(args)`; it also turns a LabError
into its single error line, so the handlers here just raise it.
"""

from __future__ import annotations

import argparse
from fractions import Fraction
from pathlib import Path

from rich.console import Console
from rich.table import Table

from lab.tm import fit, model, predict, shift
from lab.tm.model import State, fmt_ms, fmt_pct, fmt_u


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `tm` and its sub-commands to the main parser's sub-commands."""
    tm = subparsers.add_parser(
        "tm",
        help="traffic manager: shift load off overloaded sites, predict failover, fit max",
        description="Traffic-manager logic on a state file (a TOML of sites and plans; "
        "see the README).",
    )
    sub = tm.add_subparsers(dest="tm_command", metavar="COMMAND", required=True)

    p = sub.add_parser("plan", help="one control step: what to shift or take back, and why")
    p.add_argument("state_file", type=Path, metavar="STATE_FILE", help="TOML or JSON state")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("predict", help="where each site's traffic goes if it is withdrawn")
    p.add_argument("state_file", type=Path, metavar="STATE_FILE", help="TOML or JSON state")
    p.add_argument(
        "--nearby-ms",
        type=float,
        default=None,
        metavar="MS",
        help="pairs of sites at most this far apart are also withdrawn together (default: all)",
    )
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("fit", help="fit a max threshold from utilisation,p95_ms samples")
    p.add_argument("samples_file", type=Path, metavar="SAMPLES_FILE", help="CSV with a header")
    p.add_argument("--slo-ms", type=float, default=20.0, metavar="MS", help="default: 20")
    p.set_defaults(func=cmd_fit)

    p = sub.add_parser(
        "live",
        help="run the control loop on real traffic in the lab (sites, clients, lb; needs root)",
        description="Run a live scenario (sites, clients, lb; see scenarios/tm/) and print "
        "a summary.",
    )
    p.add_argument("scenario", type=Path, metavar="SCENARIO",
                   help="a live-*.toml of the lab's scenarios/tm/ ('lab scenarios' shows where)")
    p.add_argument("--out", type=Path, default=Path("results"), metavar="DIR",
                   help="results root; the run goes to DIR/<stamp>-<scenario> (default: results)")
    p.add_argument("--quiet", action="store_true", help="do not print events as they happen")
    p.set_defaults(func=cmd_live)


def _sites_table(state: State, decision: shift.Decision) -> Table:
    table = Table(title="Sites (CPU time in ms/s)")
    table.add_column("site")
    for column in ("util", "max/tgt/acc", "serves", "capacity", "util after"):
        table.add_column(column, justify="right")
    table.add_column("now")
    for name in sorted(state.sites):
        site = state.sites[name]
        th = site.thresholds
        if site.utilisation > th.max:
            status = "[red]over max[/]"
        elif site.utilisation < th.acceptable:
            status = "[green]has spare[/]"
        else:
            status = "in band"
        table.add_row(
            name,
            fmt_u(site.utilisation),
            f"{fmt_u(th.max)}/{fmt_u(th.target)}/{fmt_u(th.acceptable)}",
            fmt_ms(state.served(name)),
            fmt_ms(state.capacity(name)),
            fmt_u(decision.utilisation[name]),
            status,
        )
    return table


def _shifts_table(state: State, decision: shift.Decision) -> Table:
    before = {(s.source, s.plan, s.destination): s.fraction for s in state.shifts}
    after = {(s.source, s.plan, s.destination): s.fraction for s in decision.shifts}
    table = Table(title="Shifts (fraction of the plan's traffic at the source)")
    for column in ("source", "plan", "to", "latency ms", "before", "after", "ms/s"):
        table.add_column(column, justify="left" if column in ("source", "plan", "to") else "right")
    keys = sorted(set(before) | set(after), key=lambda k: (k[0], -k[1], k[2]))
    for key in keys:
        source, p, to = key
        old, new = before.get(key, Fraction(0)), after.get(key, Fraction(0))
        style = "" if old == new else "bold"
        table.add_row(
            source,
            p.label,
            to,
            fmt_ms(state.latency_ms(source, to)),
            fmt_pct(old),
            fmt_pct(new),
            fmt_ms(new * state.sites[source].own(p)),
            style=style,
        )
    return table


def cmd_plan(args: argparse.Namespace) -> int:
    """Print one control step for the state file: sites, the shift table, the reasons."""
    state = model.load(args.state_file)
    decision = shift.plan(state)
    console = Console()
    if state.description:
        console.print(f"[bold]{state.description}[/]")
    console.print(_sites_table(state, decision))
    if state.shifts or decision.shifts:
        console.print(_shifts_table(state, decision))
    else:
        console.print("No shifts, before or after.")
    console.print("[bold]Why[/]")
    for reason in decision.reasons:
        console.print(f"  - {reason}", highlight=False)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    """Print, for each withdrawn site or pair, where its traffic goes and whether it fits."""
    state = model.load(args.state_file)
    nearby = None if args.nearby_ms is None else Fraction(repr(args.nearby_ms))
    outcomes = predict.predict(state, nearby)
    table = Table(title="If withdrawn: CPU ms/s placed nearest first, up to each survivor's max")
    table.add_column("withdrawn")
    table.add_column("serves", justify="right")
    table.add_column("goes to: ms/s -> utilisation")
    table.add_column("unabsorbed", justify="right")
    table.add_column("verdict")
    for o in outcomes:
        goes = ", ".join(
            f"{to} {fmt_ms(ms)} -> {fmt_u(o.utilisation[to])}" for to, ms in o.received().items()
        )
        table.add_row(
            "+".join(o.withdrawn),
            fmt_ms(o.traffic_ms),
            goes or "-",
            fmt_ms(o.unabsorbed_ms),
            "[red]AT RISK[/]" if o.at_risk else "[green]absorbed[/]",
        )
    console = Console()
    console.print(table)
    risky = ["+".join(o.withdrawn) for o in outcomes if o.at_risk]
    if risky:
        console.print(
            f"[red]Thundering-herd risk[/]: losing {', '.join(risky)} pushes survivors over max."
        )
    else:
        console.print("Every single and paired loss fits under the survivors' max thresholds.")
    return 0


def _poly(coefficients: tuple[float, ...]) -> str:
    """(25, -2, 4) -> '25u² - 2u + 4'."""
    powers = ["u²", "u", ""][-len(coefficients) :]
    text = ""
    for c, x in zip(coefficients, powers, strict=True):
        sign = "-" if c < 0 else "+"
        text += f" {sign} {abs(c):.3g}{x}" if text else f"{c:.3g}{x}"
    return text


def cmd_fit(args: argparse.Namespace) -> int:
    """Print both fits, their residuals and the max threshold they give."""
    utilisation, p95 = fit.load_samples(args.samples_file)
    result = fit.fit_threshold(utilisation, p95, args.slo_ms)
    table = Table(title=f"p95 latency against utilisation u; SLO {args.slo_ms:g} ms")
    for column in ("fit", "p95 ms =", "SLO at u", "rms residual", "max residual"):
        table.add_column(column, justify="left" if column in ("fit", "p95 ms =") else "right")
    for curve in (result.quadratic, result.linear):
        table.add_row(
            curve.name,
            _poly(curve.coefficients),
            "never" if curve.crossing is None else f"{curve.crossing:.3f}",
            f"{curve.rms_ms:.2f} ms",
            f"{curve.max_abs_ms:.2f} ms",
        )
    console = Console()
    console.print(table)
    console.print(
        f"max threshold = [bold]{result.max_threshold:.3f}[/] (the quadratic; fitted on "
        f"{result.samples} samples with p95 >= {result.fit_from_ms:g} ms, "
        f"{result.outliers} outliers dropped)",
        highlight=False,
    )
    return 0


def cmd_live(args: argparse.Namespace) -> int:
    """Run a live scenario (and its no-controller comparison if it asks), print the bars."""
    from lab.experiment.rundir import new_run_dir
    from lab.tm.live import report, runner, scenario
    # (lab.cli.main makes pyroute2's forked helpers die of SIGTERM, see there)
    scen = scenario.load(args.scenario)
    out = new_run_dir(args.out, scen.name)  # results/<UTC stamp>-<scenario>, like `lab run`
    console = Console()
    console.print(f"run {out}: {scen.description or scen.name}", highlight=False)
    results = runner.run_scenario(
        scen, out, (lambda line: None) if args.quiet else (lambda line: print(line, flush=True))
    )
    for line in report.summary_lines(results):
        print(line)
    print(f"results: {out}/<mode>/ (events.csv, sites.csv, traffic.csv, timeline.png)")
    return 0
