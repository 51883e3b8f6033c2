"""`python -m lab.cli`: the same entry point as the `lab` command."""

from lab.cli.main import main

raise SystemExit(main())
