"""Errors a user can act on: each message names the problem and the fix.

Exit statuses of `sculpt`: 0 success, 1 a SculptError (bad input or environment), 3 a failed
quality gate (GateFailure: the run worked, the model is not good enough), 70 a bug in llm-sculpt,
130 interrupted.
"""

from __future__ import annotations


class SculptError(Exception):
    """A problem with the user's input or environment; the CLI prints it as one line and exits 1."""

    exit_code = 1


class GateFailure(SculptError):
    """The validate stage measured the model and at least one gate failed: exit status 3, not an error.

    `failures` holds one readable line per failed gate; `artifact` is the version that was validated.
    """

    exit_code = 3

    def __init__(self, failures: list[str], artifact=None) -> None:
        self.failures = list(failures)
        self.artifact = artifact
        where = f" in {artifact.path}" if artifact is not None else ""
        super().__init__(f"{len(self.failures)} quality gate check(s) failed{where}: " + "; ".join(self.failures))
