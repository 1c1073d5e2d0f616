"""The README shows only commands that exist and parse, links only files that exist, and its set-up is CI's."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from talkstream.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _code_lines(markdown: str) -> list[str]:
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", markdown, flags=re.M | re.S)
    return [line for block in blocks for line in block.splitlines() if line.strip()]


def _commands(markdown: str, program: str) -> list[list[str]]:
    """Every `program ...` command in the code blocks, comments dropped, one per `&&`-joined part."""
    found = []
    for line in _code_lines(markdown):
        words = shlex.split(line, comments=True)
        part: list[str] = []
        for w in [*words, "&&"]:
            if w == "&&":
                if part[:1] == [program]:
                    found.append(part)
                part = []
            else:
                part.append(w)
    return found


COMMANDS = _commands(README, "talkstream")


def test_the_readme_shows_commands():
    assert len(COMMANDS) >= 8 and ["talkstream", "serve"] in COMMANDS


@pytest.mark.parametrize("command", COMMANDS, ids=[" ".join(c[1:3]) for c in COMMANDS])
def test_every_talkstream_command_in_the_readme_parses(command, capsys):
    try:
        args = build_parser().parse_args(command[1:])
    except SystemExit:
        pytest.fail(f"`{shlex.join(command)}` does not parse: {capsys.readouterr().err.strip()}")
    assert callable(args.func)


def test_the_parse_check_catches_a_wrong_command():
    bad = _commands("```\ntalkstream roundtrip --no-such-flag   # comment\n```\n", "talkstream")
    assert bad == [["talkstream", "roundtrip", "--no-such-flag"]]
    with pytest.raises(SystemExit):
        build_parser().parse_args(bad[0][1:])


def test_links_point_at_files_that_exist():
    for target in re.findall(r"\]\(([^)#]+)\)", README):
        if "://" not in target:
            assert (ROOT / target).exists(), target


def test_the_setup_commands_come_first_and_ci_runs_the_same_tests():
    first = _code_lines(README)[:2]
    assert first[0].startswith("pip install -e . && talkstream serve")
    assert first[1].startswith("pip install -e '.[test]' && python -m pytest -q tests")
    ci = [line.split("#")[0].strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    torch_at, extras_at = ci.index("pip install -q torch==2.13.0"), ci.index("pip install -q -e '.[test]'")
    assert torch_at < extras_at < ci.index("python -m pytest -q tests")
    # serve's espeak-ng comes from the espeakng-loader wheel; the system packages CI installs are for the tests'
    # voices and data, and the README names each of them, so a fresh machine can follow it
    readme = README
    for package in ("espeak-ng", "festival", "festvox-kdlpc16k", "pocketsphinx-testdata", "chromium"):
        assert package in (ROOT / ".ci" / "run").read_text() and package in readme, package
