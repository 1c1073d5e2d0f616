"""`bench codec` measures two codecs side by side in one run, on held-out files and on real recordings, and counts
codec v4's pitch in its bitrate and its FFTs in its compute."""

from __future__ import annotations

import json
import shutil

import pytest
import soundfile as sf
import torch

from talkstream.bench.codec import decoder_mflops_per_second, encoder_mflops_per_second, real_rows, run_codec_bench
from talkstream.codecs.audio.codec import AudioCodec, AudioCodecConfig
from talkstream.data import SAMPLE_WAV

SAMPLE_TEXT = "A stranger will have bought a jar of honey by tomorrow."


def tiny_v4() -> AudioCodec:
    torch.manual_seed(0)
    return AudioCodec(AudioCodecConfig(encoder="mel", latent_dim=16, num_codebooks=4, codebook_size=32,
                                       decoder_dim=32, decoder_hidden=64, decoder_blocks=1, decoder="excited",
                                       pitch_bits=6, codec_id="talkstream-audio-v4")).eval()


def test_real_rows_read_a_transcription_file(tmp_path):
    shutil.copy(SAMPLE_WAV, tmp_path / "one.wav")
    (tmp_path / "transcription").write_text("<s> a stranger will have bought </s> (one)\nmissing file (two)\n")
    rows = real_rows(tmp_path)
    assert rows == [{"path": tmp_path / "one.wav", "voice": "librivox", "text": "a stranger will have bought"}]
    assert real_rows(tmp_path / "nowhere") == []


def test_v4_compute_counts_its_pitch_path():
    v4 = tiny_v4()
    plain = AudioCodec(AudioCodecConfig(encoder="mel", latent_dim=16, num_codebooks=4, codebook_size=32,
                                        decoder_dim=32, decoder_hidden=64, decoder_blocks=1)).eval()
    # the same encoder and codebooks: v4's encoder adds the pitch tracker (its FFTs and its decimating filter)
    assert encoder_mflops_per_second(v4, 4) > encoder_mflops_per_second(plain, 4) + 5
    # the decoder's count includes its FFTs, beside the body's matrix products
    wider = AudioCodec(AudioCodecConfig(**{**v4.cfg.to_dict(), "decoder_blocks": 3})).eval()
    assert decoder_mflops_per_second(wider, 4) > decoder_mflops_per_second(v4, 4) > 2.5 * 640 * 9 * 2 * 75 / 1e6
    assert v4.bitrate(4) == plain.bitrate(4) + 75 * 6


@pytest.mark.slow
def test_bench_codec_two_codecs_side_by_side_and_real_recordings(tmp_path, tiny_codec):
    pytest.importorskip("faster_whisper")
    (tmp_path / "data" / "eval").mkdir(parents=True)
    shutil.copy(SAMPLE_WAV, tmp_path / "data" / "eval" / "a_0000.wav")
    (tmp_path / "data" / "manifest.jsonl").write_text(
        json.dumps({"file": "eval/a_0000.wav", "split": "eval", "voice": "x:a", "text": SAMPLE_TEXT}) + "\n")
    real = tmp_path / "real"
    real.mkdir()
    speech, sr = sf.read(SAMPLE_WAV, dtype="float32")
    sf.write(real / "r1.wav", speech, sr)
    (real / "transcription").write_text(f"<s> {SAMPLE_TEXT} </s> (r1)\n")
    v4 = tiny_v4()
    result = run_codec_bench(v4, tmp_path / "data", max_files=1, codebooks=(2,), opus=(12000,),
                             baseline=tiny_codec, real=real)
    names = [r["system"] for r in result["rows"]]
    assert names[0] == "original" and "opus 12 kbps" in names
    ids = {r["codec_id"] for r in result["rows"] if "codec_id" in r}
    assert ids == {"talkstream-audio-v4", tiny_codec.cfg.codec_id}
    v4_row = next(r for r in result["rows"] if r.get("codec_id") == "talkstream-audio-v4")
    assert v4_row["kbps"] == pytest.approx(75 * (2 * 5 + 6) / 1000)
    assert result["real"]["files"] == [str(real / "r1.wav")]
    assert {r["system"] for r in result["real"]["rows"]} == set(names)
