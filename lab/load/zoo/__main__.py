"""The `zoo` driver: load.threads copies of one zoo program, measured from the wire.

    BHL_DRIVER_CONFIG=CONFIG_JSON python -m lab.load.zoo
                                             (started by DriverProcess in the client namespace)

load.stack names the program (lab.load.zoo.runners()); its runner builds it once into the
lab's cache and gives its argv; each copy gets the LAB_* environment of program_env (the
client keys the trial sets, in its library's own terms). From then on this is the command
driver (lab.load.command.run_programs): one wire observer for all copies.
"""

from __future__ import annotations

import sys
from typing import NoReturn

from lab.load.command import CommandConfig, Copy, run_programs
from lab.load.runtime import parse_config
from lab.load.zoo import Runner, cache_dir, program_env, runners

MODULE = "lab.load.zoo"


def copies(cfg: CommandConfig, runner: Runner) -> list[Copy]:
    """The programs to start: the runner's argv (built into the cache first), one LAB_*
    environment per copy."""
    stack = cfg.load.stack
    assert stack is not None  # the settings tie load.stack to this driver
    argv = runner.argv(cache_dir())  # built by the run's preflight already: a cache hit
    target = cfg.target.model_dump()
    client, load = cfg.client.model_dump(), cfg.load.model_dump()
    return [Copy(i, argv, program_env(stack, target, client, load, i))
            for i in range(cfg.load.threads)]


def main(argv: list[str]) -> NoReturn:
    cfg = parse_config(argv, CommandConfig, MODULE)
    runner = runners().get(cfg.load.stack or "")
    if runner is None:
        sys.stderr.write(f"{MODULE}: no runner for load.stack={cfg.load.stack!r}\n")
        sys.exit(2)
    missing = runner.missing()
    if missing is not None:
        problem, fix = missing
        sys.stderr.write(f"{MODULE}: {runner.name}: {problem} ({fix})\n")
        sys.exit(2)
    run_programs(cfg, copies(cfg, runner), MODULE)


if __name__ == "__main__":
    main(sys.argv)
