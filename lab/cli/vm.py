"""`lab vm build|test|run`: the lab inside the VM (real IPVS, netem), from the host.

    lab vm build           build the image if its inputs changed (prints time and size)
    lab vm test [ARGS]     boot it, run the VM tests inside (pytest -m vm tests/vm), exit
                           with their status; the guest's results land in results/vm-<stamp>/
    lab vm run 'CMD'       boot it and run a shell command in /project (the checkout)

The job's output is printed on stdout as the guest writes it (and kept in out/job.log), the
guest's serial console on stderr ("vm console: ..."), like the image build's progress and the
VM's summary line, so `lab vm run 'CMD' > out` holds the job's output only.
"""

from __future__ import annotations

import argparse
import shlex
from datetime import UTC, datetime
from pathlib import Path

from lab.cli.output import emit, warn
from lab.images import vm as image
from lab.vm import follow, runner

# PYTHONUNBUFFERED: the guest's output reaches job.log (and the host's terminal) line by line
GUEST_ENV = ("export PYTHONPATH=/project PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 "
             "BHL_VM_OUT=/out")
GUEST_PY = "/opt/blackhole-lab/venv/bin/python"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("vm", help="the lab in a VM with real IPVS (make vm-test)")
    sub = p.add_subparsers(dest="vm_command", required=True)
    b = sub.add_parser("build", help="build the VM image (cached by its inputs)")
    b.add_argument("--force", action="store_true", help="rebuild even if it is current")
    b.set_defaults(func=cmd_build)
    t = sub.add_parser("test", help="run the VM tests inside the VM")
    t.add_argument("--out", type=Path, default=Path("results"), metavar="DIR")
    t.add_argument("pytest_args", nargs=argparse.REMAINDER, help="extra pytest arguments")
    t.set_defaults(func=cmd_test)
    r = sub.add_parser("run", help="run a shell command in the VM")
    r.add_argument("command", help="shell command, run in /project")
    r.add_argument("--out", type=Path, default=Path("results"), metavar="DIR")
    r.set_defaults(func=cmd_run)


def build_image() -> image.BuildReport:
    report = image.build(say=warn)
    verb = "built in" if report.built else "current (built earlier); checked in"
    warn(f"vm image {report.image.dir.name}: {verb} {report.seconds:.1f} s, "
         f"{report.size_bytes / 2**20:.0f} MiB (kernel + initrd + ext4, apparent size)")
    return report


def console_line(line: str) -> None:
    warn(f"vm console: {follow.printable(line)}")


def pytest_job(args: list[str]) -> str:
    argv = ["-m", "vm", "-p", "no:cacheprovider", "-q", "-s", "-rA",
            "--basetemp", "/tmp/pytest", *(args or ["tests/vm"])]
    return f"{GUEST_ENV}\n{GUEST_PY} -m pytest {shlex.join(argv)}"


def run_in_vm(job: str, out_root: Path, tag: str) -> runner.VmRun:
    build_image()
    out = out_root / f"vm-{tag}-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}"
    warn(f"vm: booting ({runner.accelerator()[1]}); the job's output follows as it comes")
    result = runner.run_job(image.current(), job, out.resolve(), on_output=emit,
                            on_console=console_line)
    boot = "?" if result.boot_s is None else f"{result.boot_s:.1f}"
    warn(f"vm: {result.accel}; guest init after {boot} s, boot to end of job "
         f"{result.wall_s:.1f} s, exit code {result.rc}; output in {out}")
    return result


def cmd_build(args: argparse.Namespace) -> int:
    if args.force:
        image.build(force=True, say=warn)
    build_image()
    return 0


def cmd_test(args: argparse.Namespace) -> int:
    result = run_in_vm(pytest_job(list(args.pytest_args)), args.out, "test")
    return 1 if result.rc is None else result.rc


def cmd_run(args: argparse.Namespace) -> int:
    result = run_in_vm(f"{GUEST_ENV}\n{args.command}", args.out, "run")
    return 1 if result.rc is None else result.rc
