"""`bench codec` judges by a listener: recogniser WER against the text and against the original's transcript
(drift), DNSMOS OVRL, per voice; and the listener pieces themselves."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import soundfile as sf

from talkstream.bench import listener
from talkstream.bench.codec import decoder_mflops_per_second, run_codec_bench
from talkstream.data import SAMPLE_WAV

pytest.importorskip("faster_whisper")
pytest.importorskip("speechmos")

SAMPLE_TEXT = "A stranger will have bought a jar of honey by tomorrow."


def test_wer_normalises_numbers_and_punctuation():
    assert listener.wer(["Six times three is eighteen."], ["6 times 3 is 18"]) == 0.0
    assert listener.wer(["one two three four"], ["one two four"]) == pytest.approx(0.25)
    assert listener.wer(["one two"], [""]) == 1.0


def test_dnsmos_ranks_speech_above_noise():
    speech, sr = sf.read(SAMPLE_WAV, dtype="float32")
    noise = 0.3 * np.random.default_rng(0).standard_normal(3 * sr).astype(np.float32)
    assert listener.dnsmos(speech, sr)["ovrl"] > listener.dnsmos(noise, sr)["ovrl"] + 1.0
    with pytest.raises(ValueError, match="non-empty"):
        listener.dnsmos(np.zeros(0, np.float32), sr)


def test_recogniser_hears_the_sample():
    speech, sr = sf.read(SAMPLE_WAV, dtype="float32")
    assert listener.wer([SAMPLE_TEXT], [listener.transcribe(speech, sr)]) < 0.2


def _speechlike(seconds: float, sr: int = 24_000) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    f0 = 120 + 30 * np.sin(2 * np.pi * 1.5 * t)
    x = sum(np.sin(k * 2 * np.pi * np.cumsum(f0) / sr) / k for k in range(1, 12))
    return (0.2 * x * 0.5 * (1 - np.cos(2 * np.pi * 3 * t))).astype(np.float32)


@pytest.mark.slow
def test_bench_codec_reports_what_a_listener_hears(tmp_path, tiny_codec):
    (tmp_path / "eval").mkdir()
    shutil.copy(SAMPLE_WAV, tmp_path / "eval" / "a_0000.wav")
    sf.write(tmp_path / "eval" / "b_0000.wav", _speechlike(2.0), 24_000)
    rows = [
        {"file": "eval/a_0000.wav", "split": "eval", "voice": "x:a", "text": SAMPLE_TEXT},
        {"file": "eval/b_0000.wav", "split": "eval", "voice": "x:b", "text": "hello there"},
    ]
    (tmp_path / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = run_codec_bench(tiny_codec, tmp_path, max_files=2, codebooks=(4,), opus=(12000,))
    by_name = {r["system"]: r for r in result["rows"]}
    assert set(by_name) == {"original", "talkstream 4 cb", "opus 12 kbps"}
    assert by_name["original"]["wer_drift"] == 0.0
    # An untrained tiny codec carries no words; Opus 12 kbps carries them: the listener columns must tell them apart.
    assert by_name["talkstream 4 cb"]["wer_drift"] > by_name["opus 12 kbps"]["wer_drift"]
    assert by_name["opus 12 kbps"]["dnsmos_ovrl"] > by_name["talkstream 4 cb"]["dnsmos_ovrl"]
    assert set(by_name["talkstream 4 cb"]["per_voice"]) == {"x:a", "x:b"}
    assert by_name["talkstream 4 cb"]["decoder_mflops_per_s"] > 0


def test_decoder_flops_grow_with_the_decoder(tiny_codec):
    from talkstream.checkpoint import load_audio_codec

    assert decoder_mflops_per_second(load_audio_codec()) > 3 * decoder_mflops_per_second(tiny_codec)
