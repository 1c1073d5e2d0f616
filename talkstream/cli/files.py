"""The CLI's output files: their folder is made (or refused in one line) before the work, not after it."""

from __future__ import annotations

import os
from pathlib import Path

from talkstream.errors import UserError


def out_file(path: str | Path | None) -> Path | None:
    """`path`'s folder, made now if it is missing, so that a long job does not fail at its last step (None: no
    output asked for)."""
    if path is None:
        return None
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: is a folder; give a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # a file where a folder should be, no permission
        raise UserError(f"cannot make the folder for {path}: {e.strerror or e}") from None
    if not os.access(path.parent, os.W_OK):
        raise UserError(f"cannot write into {path.parent}")
    return path
