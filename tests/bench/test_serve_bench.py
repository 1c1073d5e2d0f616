"""`bench serve` with servers of one and two workers side by side: the figures' shape, not their values (those go to
docs/benchmarks.md)."""

from __future__ import annotations

import pytest

from talkstream.bench.serve import run_serve_bench
from talkstream.errors import UserError


@pytest.mark.slow
def test_one_and_two_workers_are_measured_in_one_run(capsys):
    r = run_serve_bench([3], 1.0, workers=[1, 2])  # int8 graphs, as served
    assert [row["workers"] for row in r["rows"]] == [1, 2]
    for row in r["rows"]:
        assert row["failed_sessions"] == 0 and sum(row["sessions_per_worker"]) == 3
        assert row["frames"] > 0 and row["server_cpu_cores"] > 0 and row["other_cpu_cores"] >= 0
        assert row["server_cpu_ms_per_session_s"] == pytest.approx(1000 * row["server_cpu_cores"] / row["sessions"])
    one, two = r["rows"]
    assert one["sessions_per_worker"] == [3]  # one worker holds them all
    assert two["server_rss_mb"] > one["server_rss_mb"]  # two processes, each with its own models
    assert [b["workers"] for b in r["by_workers"]] == [1, 2]
    out = capsys.readouterr().out
    assert "1 worker(s), int8, step interval 0 ms:" in out and "2 worker(s), int8, step interval 0 ms:" in out


@pytest.mark.parametrize("levels, workers", [([0], [1]), ([2], [0])], ids=["no-sessions", "no-workers"])
def test_bad_counts_are_refused_before_any_server_starts(levels, workers):
    with pytest.raises(UserError, match="must be at least 1"):
        run_serve_bench(levels, 1.0, workers=workers)


def test_a_negative_step_interval_is_refused_before_any_server_starts():
    with pytest.raises(UserError, match="step-interval-ms must be at least 0"):
        run_serve_bench([1], 1.0, step_intervals=[-1.0])


@pytest.mark.slow
def test_step_intervals_are_measured_in_one_run(capsys):
    r = run_serve_bench([2], 1.0, step_intervals=[0.0, 12.0])
    assert [row["step_interval_ms"] for row in r["rows"]] == [0.0, 12.0]
    assert all(row["failed_sessions"] == 0 and row["frames"] > 0 for row in r["rows"])
    assert [b["step_interval_ms"] for b in r["by_workers"]] == [0.0, 12.0]
    assert "scaling_ratio" not in r and "precision_ratio" not in r  # no ratio across intervals
    out = capsys.readouterr().out
    assert "step interval 0 ms:" in out and "step interval 12 ms:" in out


def test_the_server_has_no_step_interval_unless_told_and_scales_one_by_load():
    from talkstream.cli import build_parser
    from talkstream.services.app import ServerConfig

    parse = build_parser().parse_args
    default = parse(["serve"])
    assert default.step_interval_ms == ServerConfig.step_interval_ms == 0 and not default.step_interval_fixed
    assert parse(["serve", "--step-interval-ms", "12"]).step_interval_ms == 12
    assert parse(["serve", "--step-interval-fixed"]).step_interval_fixed


def test_an_unknown_precision_is_refused_before_any_server_starts():
    with pytest.raises(UserError, match="fp32 or int8"):
        run_serve_bench([1], 1.0, precisions=["fp16"])


@pytest.mark.slow
def test_fp32_and_int8_graphs_are_measured_in_one_run(capsys):
    r = run_serve_bench([2], 1.0, precisions=["fp32", "int8"])
    assert [(row["workers"], row["precision"]) for row in r["rows"]] == [(1, "fp32"), (1, "int8")]
    assert all(row["failed_sessions"] == 0 and row["frames"] > 0 for row in r["rows"])
    assert [b["precision"] for b in r["by_workers"]] == ["fp32", "int8"]
    out = capsys.readouterr().out
    assert "1 worker(s), fp32, step interval 0 ms:" in out and "1 worker(s), int8, step interval 0 ms:" in out


def test_the_server_serves_int8_graphs_unless_told_otherwise():
    from talkstream.cli import build_parser
    from talkstream.cli.main import _onnx_options

    parse = build_parser().parse_args
    assert _onnx_options(parse(["serve"]))["precision"] == "int8"
    assert _onnx_options(parse(["serve", "--precision", "fp32"]))["precision"] == "fp32"
    assert _onnx_options(parse(["encode", "in.wav", "out.tsk", "--backend", "onnx"]))["precision"] == "fp32"
    assert _onnx_options(parse(["encode", "in.wav", "out.tsk", "--int8"]))["precision"] == "int8"  # the old flag
