"""`UserError`: what a user can cause and fix (a bad file, a bad argument, an unknown voice, a missing extra, a
server that cannot be reached). The `talkstream` command prints its message on one line and exits 2; any other
exception is a bug and prints its traceback. Lowest floor: every part of the package may raise it."""

from __future__ import annotations


class UserError(Exception):
    """Something the user can fix; the message says what was wrong and, where it helps, what to do."""
