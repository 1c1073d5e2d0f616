"""Blended Kokoro voices (data/voices.py): more natural training voices from the shipped ones, never an eval voice."""

import numpy as np
import pytest

from talkstream.data.voices import EVAL_VOICES, Voice, _kokoro, kokoro_blends, kokoro_style, synthesize
from talkstream.errors import UserError
from talkstream.training.turn_data import _file_name, plan_blends


def test_a_blend_is_the_weighted_sum_of_the_shipped_styles_at_its_speed():
    style, speed = kokoro_style("jf_alpha*0.25+jm_kumo*0.75@1.1")
    k = _kokoro()
    want = 0.25 * k.get_voice_style("jf_alpha") + 0.75 * k.get_voice_style("jm_kumo")
    np.testing.assert_allclose(style, want, rtol=1e-6)
    assert speed == pytest.approx(1.1)
    assert kokoro_style("jm_kumo") == ("jm_kumo", 1.0)  # a shipped voice by name, as before


@pytest.mark.parametrize("bad", ["jf_alpha*x+jm_kumo*0.5", "jf_alpha*0.5*2", "jf_alpha*0.5@fast"])
def test_a_malformed_blend_is_a_clear_error(bad):
    with pytest.raises(UserError, match="blend"):
        kokoro_style(bad)


def test_blends_mix_training_voices_only_and_are_reproducible():
    blends = kokoro_blends(12, seed=3)
    assert blends == kokoro_blends(12, seed=3) and blends != kokoro_blends(12, seed=4)
    eval_names = {v.name for v in EVAL_VOICES if v.engine == "kokoro"}
    for v in blends:
        mix, speed = v.name.split("@")
        parts = [p.split("*") for p in mix.split("+")]
        assert not {name for name, _ in parts} & eval_names
        assert sum(float(w) for _, w in parts) == pytest.approx(1.0, abs=0.02)
        assert 0.85 <= float(speed) <= 1.15
    assert len({v.name for v in blends}) == len(blends)


def test_blend_files_get_plain_distinct_names():
    names = [_file_name("trainx", v) for v, *_ in plan_blends(4, seed=0)]
    assert len(set(names)) == len(names)
    assert all(not set(n) & set(":+*@") for n in names)
    assert _file_name("train", Voice("espeak", "en-us+m1")) == "train-espeak_en-us_m1.npz"  # the names on disk


def test_a_blend_speaks_with_a_voice_of_its_own():
    text = "The train leaves at nine."
    a, b = synthesize(Voice("kokoro", "jf_alpha"), text), synthesize(Voice("kokoro", "jm_kumo"), text)
    mix = synthesize(Voice("kokoro", "jf_alpha*0.5+jm_kumo*0.5"), text)
    assert mix.size > 12_000 and np.isfinite(mix).all() and np.abs(mix).max() > 0.05

    def spectrum(x):
        s = np.abs(np.fft.rfft(x[: 24_000 * 1], 4096))
        return s / s.sum()

    # Its long-term spectrum is neither parent's (the same words, another voice).
    assert np.abs(spectrum(mix) - spectrum(a)).sum() > 0.05 and np.abs(spectrum(mix) - spectrum(b)).sum() > 0.05
