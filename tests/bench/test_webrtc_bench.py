"""`bench webrtc` against a server in its own processes: the figures' shape, not their values (those go to
docs/benchmarks.md)."""

from __future__ import annotations

import pytest

from talkstream.bench.webrtc import run_webrtc_bench
from talkstream.errors import UserError


@pytest.mark.slow
def test_webrtc_bench_runs_the_server_apart_from_the_clients():
    r = run_webrtc_bench([2], 2.0, workers=[2])
    (row,) = r["rows"]
    assert row["workers"] == 2 and row["failed_sessions"] == 0 and row["bursts_back"] > 0
    assert row["server_cpu_cores"] > 0 and row["client_cpu_cores"] > 0  # measured apart
    # SO_REUSEPORT's hash may put both sessions on one worker: either split is right, none or a third is not.
    assert row["workers_used"] in (1, 2)
    assert r["by_workers"][0]["workers"] == 2
    assert row["step_interval_ms"] == r["by_workers"][0]["step_interval_ms"] == 0  # the server's default


@pytest.mark.slow
def test_step_intervals_are_measured_side_by_side(capsys):
    r = run_webrtc_bench([1], 2.0, step_intervals=[0.0, 12.0])
    assert [(row["workers"], row["step_interval_ms"]) for row in r["rows"]] == [(1, 0.0), (1, 12.0)]
    assert all(row["failed_sessions"] == 0 and row["bursts_back"] > 0 for row in r["rows"])
    assert [b["step_interval_ms"] for b in r["by_workers"]] == [0.0, 12.0]
    assert "at step interval 0 ms" in capsys.readouterr().out


def test_a_negative_step_interval_is_refused_before_any_server_starts():
    with pytest.raises(UserError, match="step-interval-ms must be at least 0"):
        run_webrtc_bench([1], 1.0, step_intervals=[-2.0])


def test_bad_counts_are_refused_before_any_server_starts():
    with pytest.raises(UserError, match="must be at least 1"):
        run_webrtc_bench([2], 1.0, workers=[0])
