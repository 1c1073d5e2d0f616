"""`bench phone`'s scoring: what counts as the answer heard over the line."""

from __future__ import annotations

import pytest

from talkstream.bench.phone import answer_heard, answer_words


@pytest.mark.parametrize("question,answer,words", [
    ("what day comes after saturday", "the day after saturday is sunday.", ["sunday"]),
    ("how do you spell cup", "cup is spelled c u p.", ["spelled", "c", "u", "p"]),
    ("what is seven times eleven", "seven times eleven is seventy seven.", ["seventy", "seven"]),
    ("repeat after me a long letter", "a long letter.", ["long", "letter"]),
])
def test_answer_words_are_what_the_question_did_not_say(question, answer, words):
    assert answer_words(question, answer) == words


def test_answer_heard():
    q, a = "what day comes after saturday", "the day after saturday is sunday."
    assert answer_heard(q, a, "Today after Saturday is Sunday.")  # "the day" lost on the line: the answer is there
    assert not answer_heard(q, a, "The day after Saturday is Monday.")
    assert not answer_heard(q, a, "")
    assert answer_heard("how do you spell cup", "cup is spelled c u p.", "Cover spelled C-U-P.")
    assert not answer_heard("how do you spell cup", "cup is spelled c u p.", "Cup is spelled C-U-T.")
    # in order: "fifty six" is not "six fifty"
    q, a = "what is twenty two plus thirty four", "twenty two plus thirty four is fifty six."
    assert answer_heard(q, a, "22 plus 34 is 56.")
    assert not answer_heard(q, a, "22 plus 34 is 6 50.")
    assert not answer_heard("what is seven times eleven", "seven times eleven is seventy seven.", "7 times 11 is 71.")
