"""The decoder's denser overlap-add (`decoder_subframes`): two STFT windows per frame at three-quarter overlap, with
the latency, streaming and ONNX contracts of the one-window decoder."""

from __future__ import annotations

import dataclasses
import random

import numpy as np
import pytest
import torch

from talkstream.checkpoint import load_audio_codec, save_checkpoint
from talkstream.codecs.audio.codec import AudioCodec, with_decoder_subframes
from talkstream.codecs.audio.onnx_step import OnnxAudioCodec, OnnxCodecSteps
from tests.codecs.test_audio_codec import random_sizes, stream_decode
from tests.codecs.test_mel_codec import TINY_MEL
from tests.conftest import TINY, speechlike


def naive_overlap_add(frames: torch.Tensor, step: int, tail: torch.Tensor) -> torch.Tensor:
    """Windows placed one by one on a long buffer (what overlap_add must equal), the previous tail in front."""
    b, n, length = frames.shape
    buf = torch.zeros(b, n * step + length)
    buf[:, : tail.shape[-1]] += tail
    for i in range(n):
        buf[:, i * step : i * step + length] += frames[:, i]
    return buf


@pytest.mark.parametrize("subframes", [1, 2, 4])
def test_overlap_add_places_every_window_at_its_step(subframes):
    codec = AudioCodec(dataclasses.replace(TINY, decoder_subframes=subframes))
    n_fft, step = codec.decoder.n_fft, codec.cfg.hop // subframes
    g = torch.Generator().manual_seed(subframes)
    frames, tail = torch.randn(2, 3 * subframes, n_fft, generator=g), torch.randn(2, n_fft - step, generator=g)
    out, new_tail = codec.decoder.overlap_add(frames, tail)
    want = naive_overlap_add(frames, step, tail)
    n = frames.shape[1] * step
    torch.testing.assert_close(out[:, 0], want[:, :n])
    torch.testing.assert_close(new_tail, want[:, n : n + n_fft - step])
    assert out.shape[-1] == 3 * codec.cfg.hop  # one hop of final output per frame, whatever the subframes


def test_three_quarter_overlap_of_sqrt_hann_squared_is_flat():
    """Windows that are each the synthesis window again (sqrt-Hann x sqrt-Hann = Hann) sum to a constant 2 once four
    overlap: the level the warm start divides by."""
    codec = AudioCodec(dataclasses.replace(TINY, decoder_subframes=2))
    window = codec.decoder.window
    frames = (window * window).expand(1, 12, -1)
    out, _ = codec.decoder.overlap_add(frames, torch.zeros(1, codec.decoder.n_fft - codec.cfg.hop // 2))
    torch.testing.assert_close(out[0, 0, codec.decoder.n_fft :], torch.full_like(out[0, 0, codec.decoder.n_fft :], 2.0))


def test_streaming_decode_equals_offline_with_two_windows_per_frame():
    torch.manual_seed(0)
    codec = AudioCodec(dataclasses.replace(TINY, decoder_subframes=2)).eval()
    codes = torch.randint(0, codec.codebook_size, (2, 3, 40), generator=torch.Generator().manual_seed(1))
    offline = codec.decode(codes)
    for seed in range(4):
        streamed = stream_decode(codec, codes, random_sizes(40, random.Random(seed), 7))
        torch.testing.assert_close(streamed, offline, rtol=1e-4, atol=1e-5)
    assert codec.algorithmic_latency_ms == AudioCodec(TINY).algorithmic_latency_ms


def test_the_warm_start_sounds_like_the_one_window_decoder_and_keeps_the_latency():
    torch.manual_seed(0)
    narrow = AudioCodec(TINY_MEL).eval()
    wide = with_decoder_subframes(narrow, 2).eval()
    assert wide.cfg.decoder_subframes == 2 and narrow.cfg.decoder_subframes == 1
    assert wide.decode_delay == narrow.decode_delay
    x = torch.from_numpy(speechlike(0.6, seed=4))[None, None]
    codes = narrow.encode(x, 4)
    assert torch.equal(wide.encode(x, 4), codes)  # encoder and codebooks untouched: the tokens keep their meaning
    a, b = narrow.decode(codes)[0, 0].numpy(), wide.decode(codes)[0, 0].numpy()
    assert np.corrcoef(a, b)[0, 1] > 0.8
    assert 0.5 < np.std(b) / np.std(a) < 1.5
    with pytest.raises(ValueError, match="already emits 2 windows"):
        with_decoder_subframes(wide, 2)


def test_a_subframe_count_that_does_not_divide_the_hop_is_refused():
    with pytest.raises(ValueError, match="decoder_subframes must divide the hop"):
        AudioCodec(dataclasses.replace(TINY, decoder_subframes=3))


def test_two_window_checkpoints_load_and_run_in_onnx(tmp_path):
    torch.manual_seed(0)
    wide = with_decoder_subframes(AudioCodec(TINY_MEL).eval(), 2).eval()
    loaded = load_audio_codec(save_checkpoint(wide, wide.cfg.to_dict(), tmp_path / "w", kind="audio_codec"))
    assert loaded.cfg.decoder_subframes == 2
    x = torch.from_numpy(speechlike(0.6, seed=8))[None, None]
    with torch.inference_mode():
        codes = loaded.encode(x, 4)
        want = loaded.decode(codes)
    onnx_codec = OnnxAudioCodec(loaded, OnnxCodecSteps(loaded))
    torch.testing.assert_close(onnx_codec.decode(codes), want, atol=1e-4, rtol=0)
