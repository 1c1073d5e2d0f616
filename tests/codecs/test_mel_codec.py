"""Codec v3's encoder: a fixed causal log-mel front end. It must compute the log-mel it claims (against torch.stft),
stream like every other part, keep its normalisation through a checkpoint, and export to ONNX with the same codes."""

from __future__ import annotations

import dataclasses
import random

import numpy as np
import pytest
import soundfile as sf
import torch

from talkstream.checkpoint import load_audio_codec, save_checkpoint
from talkstream.codecs.audio.codec import AudioCodec, AudioCodecConfig
from talkstream.codecs.audio.losses import mel_filterbank
from talkstream.codecs.audio.onnx_step import OnnxAudioCodec, OnnxCodecSteps
from talkstream.codecs.audio.train import TrainConfig, train_codec
from tests.codecs.test_audio_codec import random_sizes, stream_encode
from tests.conftest import TINY, speechlike

TINY_MEL = dataclasses.replace(TINY, encoder="mel", latent_dim=20, codec_id="talkstream-audio-tiny-mel")


@pytest.fixture
def mel_codec() -> AudioCodec:
    torch.manual_seed(0)
    return AudioCodec(TINY_MEL).eval()


def test_frames_are_the_log_mel_of_the_last_two_hops(mel_codec):
    """Frame j is the log-mel of samples [(j-1)*hop, (j+1)*hop) (zeros before the start), Hann-windowed."""
    hop = mel_codec.cfg.hop
    x = torch.from_numpy(speechlike(0.3, seed=3))[: 20 * hop]
    z, _ = mel_codec.encoder.net.step(x[None, None], mel_codec.encoder.net.init_state(1))
    padded = torch.cat([torch.zeros(hop), x])
    spec = torch.stft(padded, 2 * hop, hop, window=torch.hann_window(2 * hop), center=False, return_complex=True)
    want = torch.log((mel_filterbank(2 * hop, TINY_MEL.latent_dim, 24_000) @ spec.abs()).clamp(min=1e-5))
    assert z.shape == (1, TINY_MEL.latent_dim, 20)
    torch.testing.assert_close(z[0], want, atol=2e-3, rtol=1e-3)


def test_streaming_equals_offline_for_random_chunkings(mel_codec):
    x = torch.from_numpy(speechlike(0.5, seed=5))[None, None]
    x = x[..., : x.shape[-1] // mel_codec.frame_size * mel_codec.frame_size]
    offline = mel_codec.encode(x, 4)
    for seed in range(5):
        streamed, _ = stream_encode(mel_codec, x, random_sizes(x.shape[-1], random.Random(seed), 1500), 4)
        assert torch.equal(streamed, offline)


def test_it_is_causal(mel_codec):
    x = torch.from_numpy(speechlike(0.4))[None, None][..., :9600]
    y = x.clone()
    y[..., 4800:] = torch.randn_like(y[..., 4800:]) * 0.3
    assert torch.equal(mel_codec.encode(x)[..., :15], mel_codec.encode(y)[..., :15])
    assert not torch.equal(mel_codec.encode(x)[..., 15:], mel_codec.encode(y)[..., 15:])


def test_normalisation_is_fitted_and_survives_a_checkpoint(mel_codec, tmp_path):
    front = mel_codec.encoder.net.layers[0]
    raw = torch.randn(500, TINY_MEL.latent_dim) * 3 + 7
    front.fit(raw)
    normalised = (raw.T - front.mean) / front.std
    assert normalised.mean().abs() < 1e-4 and (normalised.std(dim=1) - 1).abs().max() < 1e-3
    loaded = load_audio_codec(save_checkpoint(mel_codec, TINY_MEL.to_dict(), tmp_path / "w", kind="audio_codec"))
    assert loaded.cfg.encoder == "mel"
    # (a checkpoint is fp16: the normalisation comes back to fp16 precision)
    torch.testing.assert_close(loaded.encoder.net.layers[0].mean, front.mean, rtol=1e-3, atol=1e-3)
    x = torch.from_numpy(speechlike(0.4, seed=2))[None, None]
    assert (loaded.encode(x, 4) == mel_codec.encode(x, 4)).float().mean() > 0.9


def test_an_unknown_encoder_is_refused():
    with pytest.raises(ValueError, match="unknown codec encoder"):
        AudioCodec(dataclasses.replace(TINY, encoder="wavelet"))
    assert AudioCodecConfig.from_dict({k: v for k, v in TINY.to_dict().items() if k != "encoder"}).encoder == "conv"


def test_onnx_steps_give_torch_codes_and_pcm(mel_codec):
    x = torch.from_numpy(speechlike(0.6, seed=8))[None, None]
    onnx_codec = OnnxAudioCodec(mel_codec, OnnxCodecSteps(mel_codec))
    with torch.inference_mode():
        codes = mel_codec.encode(x, 4)
        want = mel_codec.decode(codes)
    assert (onnx_codec.encode(x, 4) == codes).float().mean() > 0.98
    torch.testing.assert_close(onnx_codec.decode(codes), want, atol=1e-4, rtol=0)


@pytest.mark.slow
def test_training_fits_the_front_end_and_warm_starts_the_decoder(tmp_path):
    data = tmp_path / "audio"
    data.mkdir()
    for i in range(3):
        sf.write(data / f"{i}.wav", speechlike(1.0, seed=i), 24_000)
    donor = AudioCodec(dataclasses.replace(TINY, latent_dim=TINY_MEL.latent_dim + 4))
    donor_dir = save_checkpoint(donor, donor.cfg.to_dict(), tmp_path / "donor", kind="audio_codec")
    cfg = TrainConfig(data=str(data), out=str(tmp_path / "run"), steps=2, warmup_steps=0, batch_size=2,
                      segment_seconds=0.2, threads=1, lr=1e-9, encoder="mel", mel_bands=TINY_MEL.latent_dim,
                      init_decoder=str(donor_dir))
    trained = load_audio_codec(train_codec(cfg, TINY_MEL))
    front = trained.encoder.net.layers[0]
    assert trained.cfg.encoder == "mel"
    assert front.mean.abs().sum() > 0 and not torch.equal(front.std, torch.ones_like(front.std))
    # The decoder's blocks come from the donor (lr ~0: unchanged), its input layer (other width) starts fresh.
    donor_blocks = donor.decoder.net.layers[1].fc1.weight
    torch.testing.assert_close(trained.decoder.net.layers[1].fc1.weight, donor_blocks, atol=1e-3, rtol=1e-3)
    assert trained.decoder.net.layers[0].conv.weight.shape[1] == TINY_MEL.latent_dim
    codes = trained.encode(torch.from_numpy(speechlike(0.5, seed=7))[None, None], 4)
    assert codes[0, 0].unique().numel() > 1  # k-means from the mel frames
    assert np.isfinite(trained.reconstruct(torch.from_numpy(speechlike(0.3))[None, None], 4).numpy()).all()
