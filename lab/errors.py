"""One exception type for everything a user can fix.

The CLI prints a LabError as a single line ("lab: <problem> -- <fix>") and exits 2; anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations


class LabError(Exception):
    """A problem the user can fix: bad input, a missing binary, not root."""

    def __init__(self, problem: str, fix: str = "") -> None:
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem} -- {fix}" if fix else problem)
