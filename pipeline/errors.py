"""Errors a user can act on: each message names the problem and the fix."""

from __future__ import annotations


class SculptError(Exception):
    """A problem with the user's input or environment; the CLI prints it as one line and exits 1."""

    exit_code = 1
