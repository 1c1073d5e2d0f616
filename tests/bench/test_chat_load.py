"""`bench chat`: conversations at once against a server in its own process, answered by the shipped Thinker-Talker;
each asks its questions in turn and listens to each whole reply."""

from __future__ import annotations

import pytest

from talkstream.bench.chat_load import held_out_questions, run_chat_load_bench
from talkstream.errors import UserError


@pytest.mark.slow
def test_two_conversations_at_once_are_answered_and_timed(capsys):
    r = run_chat_load_bench([2], questions=2)
    assert [row["conversations"] for row in r["rows"]] == [1, 2]  # one alone runs too, for the ratio
    one, two = r["rows"]
    assert two["crashed"] == 0 and two["refused_busy"] == 0 and two["errors"] == []
    assert one["turns"] == 2 and two["turns"] == 4  # each conversation asked both of its questions
    assert two["answered"] == 4 and two["unanswered_silently"] == 0
    assert all(0 < v < 5000 for v in two["voice_to_voice_ms"])
    assert two["right"] >= 2  # held-out questions the shipped answerer gets right far more often than not
    assert len(two["turn_rows"]) == 4 and all(t["reply"] for t in two["turn_rows"])
    assert two["server_cpu_s_per_conversation_s"] > 0
    out = capsys.readouterr().out
    assert "conversations at once" in out and "v2v p95" in out


def test_the_questions_are_held_out_and_know_where_their_speech_ends():
    from talkstream.data.voices import EVAL_VOICES
    from talkstream.models.dialogue import dialogues

    qs = held_out_questions(3)
    train = {q for q, _ in dialogues(2000, "train")}
    assert len(qs) == 3 and not {q["text"] for q in qs} & train
    assert {q["voice"] for q in qs} <= {v.id for v in EVAL_VOICES}
    for q in qs:
        assert 0.3 < q["speech_s"] <= q["pcm"].size / 24_000 - 0.2  # the clip's own trailing silence excluded
        assert abs(q["pcm"][int(q["speech_s"] * 24_000) + 480 :]).max() < 0.01 * abs(q["pcm"]).max()


@pytest.mark.parametrize("levels, workers, questions", [([0], 1, 2), ([1], 0, 2), ([1], 1, 0)],
                         ids=["no-sessions", "no-workers", "no-questions"])
def test_bad_counts_are_refused_before_anything_starts(levels, workers, questions):
    with pytest.raises(UserError, match="must be at least 1"):
        run_chat_load_bench(levels, workers, questions=questions)
