"""The voice decoder's fine-tuning (codecs/audio/voice.py) with its discriminator: it learns, it resumes with the
discriminator's state, and it trains only the decoder (the tokens keep their meaning)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from talkstream.audio_io import load_audio
from talkstream.checkpoint import _TRAINING_ONLY, load_audio_codec
from talkstream.codecs.audio.discriminator import (
    MultiResolutionDiscriminator,
    WaveformAndSpectrogramDiscriminator,
    discriminator_loss,
    generator_losses,
)
from talkstream.codecs.audio.voice import finetune_decoder
from talkstream.data import SAMPLE_WAV


@pytest.mark.slow
@pytest.mark.parametrize("kind", [MultiResolutionDiscriminator, WaveformAndSpectrogramDiscriminator],
                         ids=["spectrogram", "waveform"])
def test_the_discriminator_learns_to_tell_speech_from_noise(kind):
    torch.manual_seed(0)
    speech = torch.from_numpy(load_audio(SAMPLE_WAV, 24_000)[:48_000].copy())
    real = torch.stack([speech[i : i + 6000] for i in range(0, 48_000, 6000)])
    fake = 0.05 * torch.randn_like(real)
    disc = kind()
    opt = torch.optim.AdamW(disc.parameters(), lr=1e-3)
    for _ in range(30):
        loss = discriminator_loss(disc(real), disc(fake))
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        scores = [(r.mean().item(), f.mean().item()) for (r, _), (f, _) in zip(disc(real), disc(fake), strict=True)]
        adv_fake, match_fake = generator_losses(disc(real), disc(fake))
        adv_real, match_real = generator_losses(disc(real), disc(real))
    assert all(r > f for r, f in scores), scores
    assert adv_fake > adv_real and match_real == 0 and match_fake > 0.1


def _sample_items(codec) -> list[dict]:
    """The bundled sample as one example of `talkstream data talker` (its latent and its audio)."""
    pcm = load_audio(SAMPLE_WAV, 24_000)
    pcm = pcm[: pcm.size // codec.cfg.hop * codec.cfg.hop]
    with torch.no_grad():
        z, _ = codec.encoder.net.step(torch.from_numpy(pcm)[None, None], codec.encoder.net.init_state(1))
    return [{"latent": z[0].half(), "audio": torch.from_numpy(np.round(pcm * 32767).astype(np.int16))}]


@pytest.mark.slow
def test_adversarial_fine_tuning_trains_the_decoder_only_and_resumes(tmp_path):
    codec = load_audio_codec()
    items = _sample_items(codec)
    run = tmp_path / "voice"
    # lr high enough that 4 steps move every decoder weight past float16's rounding in the checkpoint
    kw = dict(num_codebooks=4, batch_size=2, segment_s=0.5, save_every=2, weight_whisper=0.0, adversarial=0.1, lr=5e-3)

    finetune_decoder(codec, run, items, steps=2, **kw)
    first = torch.load(run / "last.pt", weights_only=False)
    assert first["step"] == 2 and "discriminator" in first and "opt_d" in first
    out = finetune_decoder(codec, run, items, steps=4, **kw)  # resumes at 2, with the discriminator it had
    second = torch.load(run / "last.pt", weights_only=False)
    assert second["step"] == 4 and [h["step"] for h in second["history"]] == [2, 4]
    moved = [not torch.equal(first["discriminator"][k], v) for k, v in second["discriminator"].items()]
    assert any(moved), "the discriminator trained on after the resume"

    tuned = load_audio_codec(out)
    shipped = codec.state_dict()
    for name, value in tuned.state_dict().items():
        if name.endswith(_TRAINING_ONLY):  # EMA statistics: not shipped
            continue
        same = torch.allclose(value.float(), shipped[name].float(), atol=1e-3)  # float16 in the checkpoint
        assert same != name.startswith("decoder."), f"{name}: only the decoder may change"


@pytest.mark.slow
def test_a_discriminator_warm_up_trains_the_discriminator_alone_then_the_decoder(tmp_path):
    codec = load_audio_codec()
    items = _sample_items(codec)
    run = tmp_path / "voice"
    kw = dict(num_codebooks=4, batch_size=2, segment_s=0.5, save_every=2, weight_whisper=0.0, adversarial=0.1,
              lr=5e-3, disc_warmup=2)
    start = {k: v.clone() for k, v in codec.decoder.state_dict().items()}

    finetune_decoder(codec, run, items, steps=2, **kw)  # the warm-up: the discriminator's steps only
    warm = torch.load(run / "last.pt", weights_only=False)
    assert all(torch.equal(v, start[k]) for k, v in warm["decoder"].items()), "the decoder moved in the warm-up"
    finetune_decoder(codec, run, items, steps=4, **kw)  # resumed past the warm-up: the decoder trains
    after = torch.load(run / "last.pt", weights_only=False)
    assert any(not torch.equal(v, start[k]) for k, v in after["decoder"].items())
    assert any(not torch.equal(warm["discriminator"][k], v) for k, v in after["discriminator"].items())


def test_the_phase_loss_is_zero_for_the_input_and_large_for_other_phases():
    """losses.phase_loss: zero for the input itself and for it at another gain, large for audio with the input's
    magnitudes but random phases; its gradient is finite everywhere, silence included."""
    torch.manual_seed(0)
    from talkstream.codecs.audio.losses import phase_loss

    x = torch.from_numpy(load_audio(SAMPLE_WAV, 24_000)[:24_000].copy())[None]
    n_fft, hop = 640, 160
    spec = torch.stft(x, n_fft, hop, window=torch.hann_window(n_fft), return_complex=True)
    scrambled = torch.istft(spec.abs() * torch.exp(2j * torch.pi * torch.rand(spec.shape)), n_fft, hop,
                            window=torch.hann_window(n_fft), length=x.shape[-1])
    assert phase_loss(x, x, n_fft, hop) < 1e-3 and phase_loss(0.5 * x, x, n_fft, hop) < 1e-3
    assert phase_loss(scrambled, x, n_fft, hop) > 0.5
    y = torch.cat([torch.zeros(1, 4000), x[:, :8000]], -1).requires_grad_(True)
    phase_loss(y, torch.cat([torch.zeros(1, 4000), x[:, :8000]], -1), n_fft, hop).backward()
    assert torch.isfinite(y.grad).all()


def test_an_unknown_discriminator_is_refused_before_training(tmp_path):
    with pytest.raises(ValueError, match="spectrogram' or 'waveform"):
        finetune_decoder(load_audio_codec(), tmp_path / "v", [], steps=1, adversarial=0.1, discriminator="mpd")
    assert not (tmp_path / "v" / "last.pt").exists()


def test_phase_weighted_fine_tuning_records_its_weight(tmp_path):
    codec = load_audio_codec()
    items = _sample_items(codec)
    out = finetune_decoder(codec, tmp_path / "voice", items, steps=2, num_codebooks=4, batch_size=2, segment_s=0.5,
                           save_every=2, weight_whisper=0.0, weight_phase=1.0)
    assert json.loads((out / "training.json").read_text())["weight_phase"] == 1.0


@pytest.mark.slow
def test_a_two_window_decoder_fine_tunes_exports_and_resumes(tmp_path):
    from talkstream.codecs.audio.codec import with_decoder_subframes

    codec = with_decoder_subframes(load_audio_codec(), 2)
    items = _sample_items(codec)
    kw = dict(num_codebooks=4, batch_size=2, segment_s=0.5, save_every=1, weight_whisper=0.0)
    finetune_decoder(codec, tmp_path / "v", items, steps=1, **kw)
    out = finetune_decoder(codec, tmp_path / "v", items, steps=2, **kw)
    tuned = load_audio_codec(out)
    assert tuned.cfg.decoder_subframes == 2 and tuned.decoder.head.out_features == 2 * 2 * 321
    assert torch.load(tmp_path / "v" / "last.pt", weights_only=False)["step"] == 2
    assert json.loads((out / "training.json").read_text())["steps"] == 2
