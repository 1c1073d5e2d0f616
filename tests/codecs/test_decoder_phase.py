"""The decoder that carries its phase (`decoder_phase="advance"`): its head predicts each bin's phase advance since
the previous window, the phase lives in the decoder's state, and streaming, checkpoints and ONNX work as for the
absolute-phase decoder."""

from __future__ import annotations

import dataclasses
import random

import pytest
import torch

from talkstream.checkpoint import load_audio_codec, save_checkpoint
from talkstream.codecs.audio.codec import AudioCodec, with_phase_advance
from talkstream.codecs.audio.onnx_step import OnnxAudioCodec, OnnxCodecSteps
from tests.codecs.test_audio_codec import random_sizes, stream_decode
from tests.codecs.test_mel_codec import TINY_MEL
from tests.conftest import TINY, speechlike


@pytest.mark.parametrize("subframes", [1, 2])
def test_streaming_decode_equals_offline_with_the_phase_carried(subframes):
    torch.manual_seed(0)
    codec = AudioCodec(dataclasses.replace(TINY, decoder_phase="advance", decoder_subframes=subframes)).eval()
    codes = torch.randint(0, codec.codebook_size, (2, 3, 40), generator=torch.Generator().manual_seed(1))
    offline = codec.decode(codes)
    for seed in range(3):
        streamed = stream_decode(codec, codes, random_sizes(40, random.Random(seed), 7))
        torch.testing.assert_close(streamed, offline, rtol=1e-4, atol=2e-5)


def test_the_carried_phase_is_the_sum_of_the_advances():
    """With the advance head's weights zeroed (the warm start), every window advances each bin by its centre
    frequency times the step: after n windows the carried phase is n times that, wrapped."""
    torch.manual_seed(0)
    codec = with_phase_advance(AudioCodec(TINY).eval()).eval()
    codes = torch.randint(0, codec.codebook_size, (1, 2, 5))
    _, state = codec.decode_step(codes, codec.init_state(1))
    phase = state.decoder[-2][0]
    k = torch.arange(phase.shape[-1], dtype=torch.float64)
    want = torch.remainder(5 * 2 * torch.pi * k * codec.cfg.hop / codec.decoder.n_fft, 2 * torch.pi)
    diff = torch.remainder(phase.double() - want + torch.pi, 2 * torch.pi) - torch.pi  # on the circle
    assert diff.abs().max() < 1e-3
    with pytest.raises(ValueError, match="already carries its phase"):
        with_phase_advance(codec)
    with pytest.raises(ValueError, match="decoder_phase must be"):
        AudioCodec(dataclasses.replace(TINY, decoder_phase="random"))


def test_the_warm_start_keeps_the_tokens_and_the_magnitudes_head():
    torch.manual_seed(0)
    absolute = AudioCodec(TINY_MEL).eval()
    carried = with_phase_advance(absolute).eval()
    x = torch.from_numpy(speechlike(0.5, seed=2))[None, None]
    assert torch.equal(carried.encode(x, 4), absolute.encode(x, 4))
    bins = carried.decoder.n_fft // 2 + 1
    torch.testing.assert_close(carried.decoder.head.weight[:bins], absolute.decoder.head.weight[:bins])
    assert carried.decoder.head.weight[bins:].abs().max() == 0


def test_a_phase_carrying_checkpoint_loads_and_runs_in_onnx(tmp_path):
    torch.manual_seed(0)
    codec = AudioCodec(dataclasses.replace(TINY_MEL, decoder_phase="advance")).eval()
    loaded = load_audio_codec(save_checkpoint(codec, codec.cfg.to_dict(), tmp_path / "w", kind="audio_codec"))
    assert loaded.cfg.decoder_phase == "advance"
    x = torch.from_numpy(speechlike(0.6, seed=8))[None, None]
    with torch.inference_mode():
        codes = loaded.encode(x, 4)
        want = loaded.decode(codes)
    torch.testing.assert_close(OnnxAudioCodec(loaded, OnnxCodecSteps(loaded)).decode(codes), want, atol=2e-4, rtol=0)


def test_with_decoder_converts_only_what_differs_and_never_back():
    from talkstream.codecs.audio.codec import with_decoder

    codec = AudioCodec(TINY).eval()
    assert with_decoder(codec) is codec and with_decoder(codec, 1, "absolute") is codec
    both = with_decoder(codec, 2, "advance")
    assert (both.cfg.decoder_subframes, both.cfg.decoder_phase) == (2, "advance")
    assert with_decoder(both, 2, "advance") is both
    with pytest.raises(ValueError, match="cannot go back to 'absolute'"):
        with_decoder(both, phase="absolute")
