"""Every benchmark's JSON, written one way: the results with the run that made them (commit, command line, date,
the machine's core count), so a figure in docs/benchmarks.md can be traced to the code and machine behind it."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]  # the checkout an editable install runs from


def commit() -> str:
    """The checked-out commit (with "-dirty" when the package has uncommitted changes), or "unknown" (an installed
    wheel: no checkout of its own, and a repository around site-packages is someone else's)."""
    if not (REPO / ".git").exists():
        return "unknown"
    try:
        git = ["git", "-C", str(REPO)]
        head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True)
        dirty = subprocess.run([*git, "status", "--porcelain", "--", "talkstream"], capture_output=True, text=True,
                               timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def run_info(argv: list[str]) -> dict:
    """The run behind a result: commit, the command line, the date (UTC), the machine's cores."""
    return {
        "commit": commit(),
        "command": shlex.join(["talkstream", *argv]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
    }


def write_result(path: str | Path | None, results: dict, argv: list[str]) -> None:
    """`results` as indented JSON at `path` (its folder made if missing), under a `run` field from `run_info`;
    nothing when `path` is None (no --out given)."""
    if path is None:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"run": run_info(argv), **results}, indent=2) + "\n")
    print(f"results written to {path}")
