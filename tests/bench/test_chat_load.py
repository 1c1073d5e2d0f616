"""`bench chat`: chat sessions asking at once against a server in its own process, answered by the shipped
Thinker-Talker; the first packet comes from the server's own latency events."""

from __future__ import annotations

import pytest

from talkstream.bench.chat_load import TARGET_FIRST_PACKET_MS, held_out_questions, run_chat_load_bench
from talkstream.errors import UserError


@pytest.mark.slow
def test_two_sessions_asking_at_once_are_both_answered_and_timed(capsys):
    r = run_chat_load_bench([2])
    (row,) = r["rows"]
    assert row["failed_sessions"] == 0 and row["errors"] == []
    assert row["answered"] == 2 and len(row["first_packet_ms"]) == 2 and 0 < row["first_packet_ms_p50"]
    assert row["exact"] >= 1  # held-out questions the shipped answerer gets right far more often than not
    assert row["passes"] == (row["first_packet_ms_p95"] <= TARGET_FIRST_PACKET_MS)
    assert "with all answering at once" in capsys.readouterr().out


def test_the_questions_are_held_out_and_end_in_silence():
    from talkstream.data.voices import EVAL_VOICES
    from talkstream.models.dialogue import dialogues

    qs = held_out_questions(3)
    train = {q for q, _ in dialogues(2000, "train")}
    assert len(qs) == 3 and not {q["text"] for q in qs} & train
    assert {q["voice"] for q in qs} <= {v.id for v in EVAL_VOICES}
    assert all(abs(q["pcm"][-24_000:]).max() == 0 for q in qs)  # a second of silence: the turn ends


@pytest.mark.parametrize("levels, workers", [([0], 1), ([1], 0)], ids=["no-sessions", "no-workers"])
def test_bad_counts_are_refused_before_anything_starts(levels, workers):
    with pytest.raises(UserError, match="must be at least 1"):
        run_chat_load_bench(levels, workers)
