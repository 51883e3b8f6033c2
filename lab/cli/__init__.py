# PYTHON_ARGCOMPLETE_OK  (argcomplete: this entry point answers shell completion)
"""The `lab` command. Its entry point installs the stop signals before it imports anything
heavy (pydantic, pyroute2, rich, matplotlib take seconds on a busy machine), imports what the
command uses (only that: `lab --help` needs none of them), and arms the signals once those are
imported, so a Ctrl-C at any moment, start-up included, is one line and exit 130, never a
traceback (lab.cli.signals)."""

from __future__ import annotations

import sys

INTERRUPTED = 130


def main(argv: list[str] | None = None) -> int:
    try:
        from lab.cli import signals
        signals.install()
        from lab.cli.main import main as run
        from lab.cli.main import preload
        preload(argv)  # the command's heavy imports
        signals.arm()
        return run(argv)
    except KeyboardInterrupt:
        print("lab: interrupted before anything was built", file=sys.stderr)
        return INTERRUPTED
    finally:
        if "lab.cli.signals" in sys.modules:
            sys.modules["lab.cli.signals"].settle()
