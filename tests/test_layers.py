"""The package's floors: a module imports only from its own floor or the ones below it, at import time and inside
functions alike. Read from the source (ast), so a new upward import fails here before it makes an import circle."""

from __future__ import annotations

import ast
from pathlib import Path

import talkstream

PACKAGE = Path(talkstream.__file__).resolve().parent

# Lowest first. A part on floor n may import parts on floors <= n.
FLOORS = [
    {"errors", "audio_io", "data", "protocol", "whisper", "checkpoint", "export"},  # formats, files, pretrained Whisper
    {"codecs"},
    {"models"},  # the Thinker and Talker (they quantize with the codecs' codebooks)
    {"streaming"},  # stages, pipeline, VAD, the codec engine
    {"chat"},  # the chat seam and its models
    {"services", "client"},  # sessions, transports, the server
    {"bench", "demo"},  # measuring and showing: they run servers and clients
    {"cli"},
]
FLOOR = {part: n for n, parts in enumerate(FLOORS) for part in parts}
# The one allowed upward reach: checkpoint.py's `load_*` build each kind's model class, imported inside the function
# (the issue asks for one module that saves, verifies and loads every weight kind).
LAZY_UPWARD = {("checkpoint", "codecs"), ("checkpoint", "models")}


def part_of(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0].removesuffix(".py")


def imports(path: Path) -> list[tuple[str, int, bool]]:
    """(imported part, line, at module level) for every `talkstream.*` import in the file."""
    tree = ast.parse(path.read_text())
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            if name.startswith("talkstream."):
                found.append((name.split(".")[1], node.lineno, id(node) in top))
    return found


def test_every_part_has_a_floor():
    parts = {part_of(p) for p in PACKAGE.rglob("*.py")} - {"__init__"}
    assert parts - FLOOR.keys() == set(), "a new part of the package: give it a floor in FLOORS"


def test_no_part_imports_a_floor_above_it():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        src = part_of(path)
        if src == "__init__":
            continue
        for dst, line, at_top in imports(path):
            if dst not in FLOOR or FLOOR[dst] <= FLOOR[src]:
                continue
            if not at_top and (src, dst) in LAZY_UPWARD:
                continue
            upward.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {src} imports {dst}")
    assert upward == [], "\n".join(upward)


def test_the_check_sees_an_upward_import(tmp_path):
    """The reader finds imports at module level and inside functions (else the test above could not fail)."""
    f = tmp_path / "m.py"
    f.write_text("from talkstream.cli import main\n\ndef g():\n    import talkstream.services.session\n")
    assert imports(f) == [("cli", 1, True), ("services", 4, False)]
