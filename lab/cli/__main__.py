"""`python -m lab.cli`: the same entry point as the `lab` command."""

from lab.cli import main

raise SystemExit(main())
