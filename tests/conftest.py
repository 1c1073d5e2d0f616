from __future__ import annotations

import os

import hypothesis  # noqa: F401  imported at collection, not lazily by its plugin at the end of a run
import numpy as np
import pytest
import soundfile as sf
import torch

from talkstream.codecs.audio.codec import AudioCodec, AudioCodecConfig
from talkstream.services.ray_loopback import LOOPBACK_ENV

# Every Ray cluster the tests start (and `serve --ray` under test) is on 127.0.0.1 only: set before any test module
# imports ray (talkstream/services/ray_loopback.py says why Ray needs it).
os.environ.update(LOOPBACK_ENV)

TINY = AudioCodecConfig(
    channels=(8, 8, 16, 16),
    encoder_blocks=1,
    latent_dim=16,
    num_codebooks=4,
    codebook_size=32,
    decoder_dim=32,
    decoder_hidden=64,
    decoder_blocks=2,
    codec_id="talkstream-audio-tiny",
)


@pytest.fixture
def tiny_codec() -> AudioCodec:
    """A randomly initialised small codec: same code paths as the real one, fast enough for many chunkings."""
    torch.manual_seed(0)
    return AudioCodec(TINY).eval()


def speechlike(seconds: float = 1.0, sr: int = 24_000, seed: int = 0) -> np.ndarray:
    """A vowel-like harmonic signal with a moving pitch and syllable envelope, plus a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    f0 = 120 + 30 * np.sin(2 * np.pi * 1.5 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    x = sum(np.sin(k * phase) / k for k in range(1, 12))
    env = 0.5 * (1 - np.cos(2 * np.pi * 3 * t)).clip(0, None)
    return (0.2 * x * env + 0.003 * rng.standard_normal(t.size)).astype(np.float32)


def moving_pattern(i: int, height: int = 128, width: int = 128) -> np.ndarray:
    """Frame i of a smooth synthetic video, uint8 [H, W, 3]: drifting colour waves and a soft disc moving across
    them. Smooth on purpose: a codec should rebuild it well, so a round trip's PSNR says whether frames line up."""
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    cx, cy = 0.5 + 0.3 * np.cos(0.4 * i), 0.5 + 0.3 * np.sin(0.4 * i)
    disc = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / 0.02)
    r = 0.5 + 0.3 * np.sin(2 * np.pi * (x + 0.05 * i))
    g = 0.5 + 0.3 * np.cos(2 * np.pi * (0.8 * y - 0.015 * i))
    b = 0.2 + 0.6 * disc
    return (np.stack([r * (1 - 0.5 * disc), g, b], -1) * 255 + 0.5).astype(np.uint8)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two uint8 images."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float(10 * np.log10(255**2 / max(mse, 1e-10)))


@pytest.fixture
def speech_wav(tmp_path):
    path = tmp_path / "speech.wav"
    sf.write(path, speechlike(1.5), 24_000, subtype="PCM_16")
    return path
