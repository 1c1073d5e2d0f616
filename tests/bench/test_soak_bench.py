"""`bench soak`: sessions opened and closed in every way (a conversation answered, a codec echo, a client that
vanished mid-stream) leave no session, task, thread or file descriptor behind in the server."""

from __future__ import annotations

import pytest

from talkstream.bench.soak import GAUGES, SLACK, run_soak_bench
from talkstream.errors import UserError


@pytest.mark.slow
def test_a_short_soak_leaves_nothing_behind(capsys):
    r = run_soak_bench(cycles=45, concurrency=5, progress=False)
    assert r["problems"] == 0, r["problem_examples"]
    assert r["after"]["sessions"] == 0
    for k, slack in SLACK.items():
        assert r["before"][k] > 0 and r["after"][k] <= r["before"][k] + slack, (k, r["before"], r["after"])
    assert r["passes"] and "nothing left behind" in capsys.readouterr().out


def test_the_gauges_it_reads_are_the_servers():
    from talkstream.streaming.metrics import Metrics

    text = Metrics().render().decode()
    assert all(f"# TYPE {metric} gauge" in text for metric in GAUGES.values())


@pytest.mark.parametrize("cycles, concurrency", [(0, 1), (5, 0)])
def test_bad_counts_are_refused(cycles, concurrency):
    with pytest.raises(UserError, match="at least 1"):
        run_soak_bench(cycles, concurrency)
