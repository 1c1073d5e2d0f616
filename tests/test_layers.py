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
    {"bench", "demo", "training"},  # measuring, showing and training: never imported by what serves
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


def module_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the package's modules it imports, at module level, inside functions and under TYPE_CHECKING."""
    mods = {}
    for p in root.rglob("*.py"):
        name = ".".join(p.relative_to(root.parent).with_suffix("").parts).removesuffix(".__init__")
        mods[name] = p
    graph = {}
    for name, p in mods.items():
        deps = set()
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                deps |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in mods else node.module
                         for a in node.names}
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names}
        graph[name] = {d for d in deps if d in mods and d != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while (w := stack.pop()) != v:
                group.append(w)
            if group:
                found.append(sorted([v, *group]))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle_in_the_package():
    assert cycles(module_graph(PACKAGE)) == []


def test_the_cycle_check_sees_a_cycle_through_type_checking(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg.b import f\n")
    (pkg / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.a import g\n")
    (pkg / "c.py").write_text("def h():\n    import pkg.a\n")
    assert cycles(module_graph(pkg)) == [["pkg.a", "pkg.b"]]
