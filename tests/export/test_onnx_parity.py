"""The shipped codec's streaming steps in onnxruntime against torch streaming, for random inputs and random chunk sizes.

Tolerances, stated:
- encoder, float32: codes equal torch's, except where torch's own best and second-best codes are a near tie (squared
  distances within 2e-3 of each other, about 0.1% of the distance): the two runtimes round convolutions differently
  by ~1e-6, which can only decide such ties. At most 2% of frames may differ at all.
- decoder, float32, same codes in: PCM max abs error < 1e-4 (measured ~2e-6; full scale is 1.0).
- int8 (dynamic quantization of the Linear layers): decoder PCM max abs error < 0.1 and SNR against torch > 15 dB
  (measured 0.03 and 21-23 dB); encoder codes >= 80% equal to torch's (measured 93%); on the bundled held-out
  sample the round trip loses < 0.1 PESQ-WB and < 0.01 STOI (measured 0.004 and 0.0005).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from talkstream.audio_io import load_audio
from talkstream.bench.metrics import pesq_wb, stoi
from talkstream.checkpoint import load_audio_codec
from talkstream.codecs.audio.onnx_step import OnnxAudioCodec, OnnxCodecSteps
from talkstream.data import SAMPLE_WAV
from tests.conftest import speechlike


@pytest.fixture(scope="module")
def codec():
    return load_audio_codec()


@pytest.fixture(scope="module")
def onnx_codecs(codec):
    return {p: OnnxAudioCodec(codec, OnnxCodecSteps(codec, precision=p)) for p in ("fp32", "int8")}


def signals():
    rng = np.random.default_rng(7)
    noisy = speechlike(1.5, seed=2) + 0.05 * rng.standard_normal(36_000).astype(np.float32)
    return {
        "speechlike": speechlike(1.5, seed=1),
        "speech+noise": noisy.astype(np.float32),
        "white-noise": (0.2 * rng.standard_normal(24_000)).astype(np.float32),
        "held-out-sample": load_audio(SAMPLE_WAV, 24_000)[:60_000],
    }


def stream_encode(codec, x: torch.Tensor, chunks: list[int], k: int) -> torch.Tensor:
    state, out, i = codec.init_state(1, k), [], 0
    with torch.inference_mode():
        for n in chunks:
            codes, state = codec.encode_step(x[..., i : i + n], state)
            out.append(codes)
            i += n
    return torch.cat(out, dim=-1)


def stream_decode(codec, codes: torch.Tensor, chunks: list[int]) -> torch.Tensor:
    state, out, i = codec.init_state(1, codes.shape[1]), [], 0
    with torch.inference_mode():
        for n in chunks:
            pcm, state = codec.decode_step(codes[..., i : i + n], state)
            out.append(pcm)
            i += n
    return torch.cat(out, dim=-1)


def random_chunks(rng, total: int, hi: int) -> list[int]:
    out = []
    while sum(out) < total:
        out.append(int(rng.integers(1, hi)))
    return out


@pytest.mark.parametrize("name", list(signals()))
def test_encoder_codes_equal_torch_except_near_ties(codec, onnx_codecs, name):
    x = torch.from_numpy(signals()[name])[None, None]
    chunks = random_chunks(np.random.default_rng(len(name)), x.shape[-1], 1500)  # partial frames included
    ref = stream_encode(codec, x, chunks, 8)
    got = stream_encode(onnx_codecs["fp32"], x, chunks, 8)
    assert got.shape == ref.shape
    differ = (got != ref)[0]
    assert differ.any(0).float().mean() <= 0.02
    # Every frame that differs first differs at a stage where torch itself had a near tie.
    with torch.inference_mode():
        z, _ = codec.encoder.net.step(x[..., : ref.shape[-1] * codec.frame_size], codec.encoder.net.init_state(1))
    q = codec.quantizer
    for f in differ.any(0).nonzero().flatten().tolist():
        stage = int(differ[:, f].nonzero()[0])
        r = z[0, :, f] - sum(q.embed[k][ref[0, k, f]] for k in range(stage))
        d = ((r[None] - q.embed[stage]) ** 2).sum(1)
        chosen, other = float(d[ref[0, stage, f]]), float(d[got[0, stage, f]])
        assert other - chosen <= 2e-3 * (1 + chosen), f"frame {f} stage {stage}: not a near tie"


@pytest.mark.parametrize("precision, max_err, min_snr_db", [("fp32", 1e-4, 60.0), ("int8", 0.1, 15.0)])
def test_decoder_pcm_matches_torch(codec, onnx_codecs, precision, max_err, min_snr_db):
    rng = np.random.default_rng(3)
    with torch.inference_mode():
        codes = codec.encode(torch.from_numpy(speechlike(1.2, seed=5))[None, None], 8)
    chunks = random_chunks(rng, codes.shape[-1], 9)
    ref = stream_decode(codec, codes, chunks)
    got = stream_decode(onnx_codecs[precision], codes, chunks)
    assert got.shape == ref.shape
    err = (got - ref).abs().max().item()
    snr = 10 * np.log10((ref**2).sum().item() / max(((got - ref) ** 2).sum().item(), 1e-30))
    assert err < max_err and snr > min_snr_db, (err, snr)


def test_random_codes_decode_the_same(codec, onnx_codecs):
    """Codes the encoder would never make (uniform random) decode alike too."""
    codes = torch.from_numpy(np.random.default_rng(1).integers(0, codec.codebook_size, (1, 4, 40)))
    chunks = random_chunks(np.random.default_rng(2), 40, 8)
    torch.testing.assert_close(
        stream_decode(onnx_codecs["fp32"], codes, chunks), stream_decode(codec, codes, chunks), atol=1e-4, rtol=0
    )


def test_int8_quality_loss_is_small(codec, onnx_codecs):
    ref = load_audio(SAMPLE_WAV, codec.sample_rate)
    x = torch.from_numpy(ref)[None, None]
    with torch.inference_mode():
        base, base_codes = codec.reconstruct(x, 8)[0, 0].numpy(), codec.encode(x, 8)
    int8 = onnx_codecs["int8"]
    y, codes = int8.reconstruct(x, 8)[0, 0].numpy(), int8.encode(x, 8)
    assert (codes == base_codes).float().mean() >= 0.8
    sr = codec.sample_rate
    assert pesq_wb(ref, y, sr) > pesq_wb(ref, base, sr) - 0.1
    assert stoi(ref, y, sr) > stoi(ref, base, sr) - 0.01
