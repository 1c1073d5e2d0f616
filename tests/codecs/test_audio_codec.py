"""The codec contract: streaming equals offline for random chunkings, shapes, ranges, latency facts."""

from __future__ import annotations

import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from talkstream.codecs.audio.codec import AudioCodec
from tests.conftest import TINY, speechlike


def stream_encode(codec, x, sizes, k):
    state = codec.init_state(x.shape[0], k)
    out, i = [], 0
    for n in sizes:
        c, state = codec.encode_step(x[..., i : i + n], state)
        out.append(c)
        i += n
    return torch.cat(out, dim=-1), state


def stream_decode(codec, codes, sizes):
    """codes [B, K, F] decoded in steps of `sizes` frames; each step gives exactly its frames' samples."""
    state, out, i = codec.init_state(codes.shape[0]), [], 0
    for n in sizes:
        y, state = codec.decode_step(codes[..., i : i + n], state)
        assert y.shape[-1] == n * codec.frame_size
        out.append(y)
        i += n
    return torch.cat(out, dim=-1)


def random_sizes(total, rng, max_size):
    sizes = []
    while sum(sizes) < total:
        sizes.append(min(rng.randint(0, max_size), total - sum(sizes)))
    return sizes


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), k=st.integers(1, TINY.num_codebooks))
def test_streaming_encode_equals_offline(seed, k):
    torch.manual_seed(0)
    codec = AudioCodec(TINY).eval()
    x = torch.from_numpy(speechlike(0.5, seed=seed))[None, None]
    x = x[..., : x.shape[-1] // codec.frame_size * codec.frame_size]
    offline = codec.encode(x, k)
    streamed, state = stream_encode(codec, x, random_sizes(x.shape[-1], random.Random(seed), 1500), k)
    assert streamed.shape == (1, k, x.shape[-1] // codec.frame_size)
    assert torch.equal(streamed, offline)
    assert state.pending.shape[-1] == 0


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_streaming_decode_equals_offline(seed):
    torch.manual_seed(0)
    codec = AudioCodec(TINY).eval()
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, codec.codebook_size, (2, 3, 40), generator=g)
    offline = codec.decode(codes)
    streamed = stream_decode(codec, codes, random_sizes(40, random.Random(seed), 7))
    torch.testing.assert_close(streamed, offline, rtol=1e-4, atol=1e-5)


def test_sessions_do_not_share_state(tiny_codec):
    """Two interleaved streams on one model give each its own result."""
    a = torch.from_numpy(speechlike(0.4, seed=1))[None, None][..., :9600]
    b = torch.from_numpy(speechlike(0.4, seed=2))[None, None][..., :9600]
    sa, sb = tiny_codec.init_state(), tiny_codec.init_state()
    ca, cb = [], []
    for i in range(0, 9600, 960):
        c, sa = tiny_codec.encode_step(a[..., i : i + 960], sa)
        ca.append(c)
        c, sb = tiny_codec.encode_step(b[..., i : i + 960], sb)
        cb.append(c)
    assert torch.equal(torch.cat(ca, -1), tiny_codec.encode(a))
    assert torch.equal(torch.cat(cb, -1), tiny_codec.encode(b))


def test_encoder_is_causal(tiny_codec):
    x = torch.from_numpy(speechlike(0.4))[None, None][..., :9600]
    y = x.clone()
    y[..., 4800:] = torch.randn_like(y[..., 4800:]) * 0.3
    assert torch.equal(tiny_codec.encode(x)[..., :15], tiny_codec.encode(y)[..., :15])


def test_reconstruct_keeps_length_and_facts(tiny_codec):
    x = torch.from_numpy(speechlike(0.3))[None, None][..., :7001]
    assert tiny_codec.reconstruct(x, 2).shape == x.shape
    assert tiny_codec.frame_rate == 75
    assert tiny_codec.algorithmic_latency_ms == pytest.approx(26.67, abs=0.01)
    assert tiny_codec.bitrate(1) == 75 * 5  # codebook of 32 -> 5 bits


def test_codebook_count_is_checked(tiny_codec):
    with pytest.raises(ValueError, match="num_codebooks"):
        tiny_codec.init_state(1, 0)
    with pytest.raises(ValueError, match="num_codebooks"):
        tiny_codec.encode(torch.zeros(1, 1, 320), 9)
    with pytest.raises(ValueError, match="out of range"):
        tiny_codec.decode(torch.full((1, 2, 3), 32))


def test_real_idft_equals_irfft():
    """The decoder's inverse DFT (two real matmuls, ONNX-exportable) is torch.fft.irfft."""
    codec = AudioCodec(TINY)
    dec = codec.decoder
    torch.manual_seed(0)
    re, im = torch.randn(2, 5, dec.n_fft // 2 + 1).unbind(0)
    ref = torch.fft.irfft(torch.complex(re, im), n=dec.n_fft)
    torch.testing.assert_close(re @ dec.idft_cos + im @ dec.idft_sin, ref, atol=1e-5, rtol=1e-4)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10_000), k=st.integers(1, TINY.num_codebooks))
def test_roundtrip_step_equals_encode_then_decode(seed, k):
    """The server's echo step takes the decoder's latent from the quantizer (z less the last residual) instead of
    looking the codes up again: the same codes, the same sound, chunk by chunk."""
    torch.manual_seed(0)
    codec = AudioCodec(TINY).eval()
    x = torch.from_numpy(speechlike(0.4, seed=seed))[None, None]
    sizes = random_sizes(x.shape[-1], random.Random(seed), 1500)
    both, apart = codec.init_state(1, k), codec.init_state(1, k)
    i = 0
    for n in sizes:
        codes, pcm, both = codec.roundtrip_step(x[..., i : i + n], both)
        want_codes, apart = codec.encode_step(x[..., i : i + n], apart)
        want_pcm, apart = codec.decode_step(want_codes, apart)
        assert torch.equal(codes, want_codes)
        torch.testing.assert_close(pcm, want_pcm, rtol=0, atol=1e-5)
        i += n
    assert torch.equal(both.pending, apart.pending)
