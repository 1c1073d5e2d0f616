"""Benchmark JSON: every result records the run behind it (commit, command line, date, cores), written one way."""

from __future__ import annotations

import json
import os
import re
import shutil
from datetime import datetime

import talkstream.bench.results as results_mod
from talkstream.bench.results import write_result
from talkstream.cli import main


def test_a_result_records_commit_command_date_and_cores(tmp_path, capsys):
    out = tmp_path / "new" / "r.json"
    write_result(out, {"rows": [1, 2]}, ["bench", "serve", "--sessions", "4", "--out", "a b.json"])
    d = json.loads(out.read_text())
    run = d.pop("run")
    assert d == {"rows": [1, 2]}
    checkout = shutil.which("git") and (results_mod.REPO / ".git").exists()  # CI may run from a copy without one
    assert re.fullmatch(r"[0-9a-f]{40}(-dirty)?" if checkout else "unknown", run["commit"]), run["commit"]
    assert run["command"] == "talkstream bench serve --sessions 4 --out 'a b.json'"  # pasteable into a shell
    assert abs((datetime.fromisoformat(run["date"]) - datetime.now().astimezone()).total_seconds()) < 60
    assert run["cpu_count"] == os.cpu_count()
    assert capsys.readouterr().out == f"results written to {out}\n"


def test_no_path_writes_nothing(tmp_path, capsys):
    write_result(None, {"rows": []}, ["bench", "serve"])
    assert list(tmp_path.iterdir()) == [] and capsys.readouterr().out == ""


def test_the_commit_is_unknown_outside_a_checkout(tmp_path, monkeypatch):
    monkeypatch.setattr(results_mod, "REPO", tmp_path)  # an installed wheel: no .git beside the package
    assert results_mod.commit() == "unknown"


def test_a_bench_command_writes_its_command_line(tmp_path, monkeypatch):
    import talkstream.bench.voices

    monkeypatch.setattr(talkstream.bench.voices, "run_voice_bench", lambda voices, sentences: {"rows": [voices]})
    out = tmp_path / "new" / "voices.json"
    assert main(["bench", "voices", "--voices", "piper:joe", "--out", str(out)]) == 0
    d = json.loads(out.read_text())
    assert d["rows"] == [["piper:joe"]]
    assert d["run"]["command"] == f"talkstream bench voices --voices piper:joe --out {out}"
