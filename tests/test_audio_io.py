"""Audio input: any common file, rate and channel count in; a one-line AudioInputError for anything unusable."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from talkstream.audio_io import AudioInputError, load_audio, save_audio
from tests.conftest import speechlike


def test_other_rates_are_resampled(tmp_path):
    x = speechlike(1.0, sr=16_000)
    sf.write(tmp_path / "a.wav", x, 16_000)
    y = load_audio(tmp_path / "a.wav", 24_000)
    assert y.dtype == np.float32 and abs(y.size - 24_000) <= 1
    # Same content: the level survives resampling.
    assert abs(np.sqrt(np.mean(y**2)) - np.sqrt(np.mean(x**2))) < 0.01


def test_stereo_is_downmixed(tmp_path):
    left = speechlike(0.5)
    sf.write(tmp_path / "s.wav", np.stack([left, 0.5 * left], 1), 24_000, subtype="FLOAT")
    y = load_audio(tmp_path / "s.wav", 24_000)
    np.testing.assert_allclose(y, 0.75 * left, atol=1e-6)


def test_clipping_is_handled(tmp_path):
    sf.write(tmp_path / "c.wav", np.array([0.0, 3.0, -5.0, 0.5], np.float32), 24_000, subtype="FLOAT")
    np.testing.assert_array_equal(load_audio(tmp_path / "c.wav", 24_000), [0.0, 1.0, -1.0, 0.5])


def test_nan_is_an_error(tmp_path):
    sf.write(tmp_path / "n.wav", np.array([0.0, np.nan, 0.1], np.float32), 24_000, subtype="FLOAT")
    with pytest.raises(AudioInputError, match="NaN"):
        load_audio(tmp_path / "n.wav", 24_000)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "empty"),
        (b"this is a text file, not audio\n" * 20, "not a readable audio file"),
        (b"RIFF\x10\x00\x00\x00WAVEfmt ", "not a readable audio file|no audio"),
    ],
    ids=["empty", "text", "truncated-wav"],
)
def test_unusable_files(tmp_path, content, message):
    path = tmp_path / "x.wav"
    path.write_bytes(content)
    with pytest.raises(AudioInputError, match=message):
        load_audio(path, 24_000)


def test_missing_file(tmp_path):
    with pytest.raises(AudioInputError, match="no such file"):
        load_audio(tmp_path / "missing.wav", 24_000)


def test_compressed_formats_through_pyav(tmp_path):
    """An Opus-in-Ogg file at 48 kHz (what browsers record) reads as mono 24 kHz."""
    import av

    x = speechlike(1.0, sr=48_000)
    path = tmp_path / "a.ogg"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libopus", rate=48_000, layout="mono")
        frame = av.AudioFrame.from_ndarray(x[None], format="flt", layout="mono")
        frame.sample_rate = 48_000
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    y = load_audio(path, 24_000)
    assert abs(y.size - 24_000) < 2_000 and np.sqrt(np.mean(y**2)) > 0.05


def test_save_then_load(tmp_path):
    x = speechlike(0.3)
    save_audio(tmp_path / "o.wav", x, 24_000)
    np.testing.assert_allclose(load_audio(tmp_path / "o.wav", 24_000), x, atol=1 / 32768 + 1e-6)


@pytest.mark.parametrize("encoding", ["ulaw", "alaw"])
def test_a_phone_line_keeps_the_length_and_the_band_below_4_khz(encoding):
    from talkstream.audio_io import phone_line

    t = np.arange(16_000) / 16_000
    low, high = 0.3 * np.sin(2 * np.pi * 440 * t), 0.3 * np.sin(2 * np.pi * 6000 * t)
    out = phone_line((low + high).astype(np.float32), 16_000, encoding)
    assert out.shape == (16_000,) and out.dtype == np.float32
    spectrum = np.abs(np.fft.rfft(out[2000:-2000]))
    freqs = np.fft.rfftfreq(12_000, 1 / 16_000)
    at = lambda f: spectrum[np.argmin(np.abs(freqs - f))]  # noqa: E731
    assert at(440) > 100 * at(6000)  # 6 kHz is gone, 440 Hz is kept
    assert np.corrcoef(out[2000:-2000], low[2000:-2000])[0, 1] > 0.95


def test_a_phone_line_refuses_an_unknown_encoding():
    from talkstream.audio_io import phone_line

    with pytest.raises(ValueError, match="ulaw"):
        phone_line(np.zeros(800, np.float32), 16_000, "opus")
