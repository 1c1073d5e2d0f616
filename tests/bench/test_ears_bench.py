"""`bench ears`'s own measures: what counts as a loop, the real recordings and their transcription, the gap."""

from __future__ import annotations

import pytest

from talkstream.bench.ears import LIBRIVOX, loops, real_turns, wer_gap_ci

pytest.importorskip("jiwer")


def test_a_loop_is_a_phrase_repeated_more_than_in_the_reference():
    ref = "he was not an ill disposed young man"
    assert loops("He was not an old-sposed young man, and an old-sposed young man.", ref) == 1
    assert loops("He was not an ill-disposed young man.", ref) == 0
    # repeated in the text itself: not a loop
    said = "it was the best of times it was the worst of times"
    assert loops("It was the best of times, it was the worst of times.", said) == 0
    assert loops("It was the best of times, it was the best of times.", said) == 1


def test_the_gap_interval_is_around_the_gap():
    refs = ["one two three four"] * 10
    ours = ["one two three four"] * 9 + ["one two three"]
    assert wer_gap_ci(refs, ours, refs) == pytest.approx([0.0, 0.075], abs=0.03)
    low, high = wer_gap_ci(refs, refs, ours)
    assert low <= 0.0 and high <= 0.0


@pytest.mark.skipif(not (LIBRIVOX / "transcription").is_file(), reason="apt-get install pocketsphinx-testdata")
def test_the_real_turns_carry_their_transcription():
    turns = real_turns()
    with_ref = [t for t in turns if t["ref"]]
    assert len(with_ref) == 8 and len(turns) == 15
    whole = with_ref[-1]
    assert whole["ref"].startswith("and mister john dashwood") and 25 < whole["pcm"].size / 16_000 < 30
    cuts = [t["pcm"].size / 16_000 for t in turns if t["ref"] is None]  # up to 10 s cut out of the whole reading
    assert len(cuts) == 7 and all(8 < c <= 10 for c in cuts)
