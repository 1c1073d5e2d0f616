"""Codec v4: the causal pitch tracker, the pitch in the bitstream, and the pitch-excited decoder."""

from __future__ import annotations

import math

import pytest
import torch

from talkstream.codecs.audio.codec import AudioCodec, AudioCodecConfig
from talkstream.codecs.audio.pitch import HarmonicSource, PitchQuantizer, PitchTracker

SR, HOP = 24_000, 320


def glide(seconds: float = 1.5, f_start: float = 110.0, f_end: float = 260.0, silence_s: float = 0.25) -> torch.Tensor:
    """A voiced-like tone gliding in pitch (12 harmonics falling 1/k), after `silence_s` of silence: [1, 1, T]."""
    n = int(seconds * SR)
    f = torch.linspace(f_start, f_end, n, dtype=torch.float64)
    phase = 2 * math.pi * torch.cumsum(f / SR, 0)
    x = sum(torch.sin(k * phase) / k for k in range(1, 13)) * 0.1
    x[: int(silence_s * SR)] = 0
    return x.float()[None, None], f


def tiny_v4(**kw) -> AudioCodec:
    torch.manual_seed(0)
    cfg = AudioCodecConfig(encoder="mel", latent_dim=16, num_codebooks=2, codebook_size=32, decoder_dim=32,
                           decoder_hidden=64, decoder_blocks=1, decoder="excited", pitch_bits=6,
                           codec_id="talkstream-audio-v4", **kw)
    return AudioCodec(cfg).eval()


def test_tracker_follows_a_glide_and_is_silent_on_silence():
    x, f = glide()
    tracker = PitchTracker(SR, HOP)
    (f0, _), _ = tracker.step(x, tracker.init_state(1))
    f0 = f0[0]
    assert (f0[:15] == 0).all(), "silence must be unvoiced"
    # frame j's window ends at (j + 1) * hop and spans about 36 ms: compare with the true F0 18 ms before its end
    ends = (torch.arange(f0.numel()) + 1) * HOP - int(0.018 * SR)
    true = f[ends.clamp(max=f.numel() - 1)].float()
    voiced = f0 > 0
    assert voiced[25:].float().mean() > 0.95
    rel = (f0[25:][voiced[25:]] / true[25:][voiced[25:]] - 1).abs()
    assert rel.median() < 0.02 and rel.max() < 0.08


def test_tracker_ignores_white_noise():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 1, SR, generator=g) * 0.1
    tracker = PitchTracker(SR, HOP)
    (f0, _), _ = tracker.step(x, tracker.init_state(1))
    assert (f0 > 0).float().mean() < 0.1


@pytest.mark.parametrize("chunk", [HOP, 3 * HOP, 7 * HOP + 160, 4000], ids=lambda c: f"chunk{c}")
def test_tracker_streaming_equals_offline(chunk):
    x, _ = glide()
    tracker = PitchTracker(SR, HOP)
    (whole, _), _ = tracker.step(x, tracker.init_state(1))
    state, parts = tracker.init_state(1), []
    pending = x[..., :0]
    for i in range(0, x.shape[-1], chunk):  # the codec hands the tracker whole frames only
        pending = torch.cat([pending, x[..., i : i + chunk]], dim=-1)
        n = pending.shape[-1] // HOP * HOP
        (f0, _), state = tracker.step(pending[..., :n], state)
        parts.append(f0)
        pending = pending[..., n:]
    torch.testing.assert_close(torch.cat(parts, 1), whole[:, : sum(p.shape[1] for p in parts)])


def test_pitch_quantizer_round_trip():
    q = PitchQuantizer(6, 62.5, 500.0)
    f0 = torch.tensor([0.0, 62.5, 80.0, 150.0, 333.0, 500.0, 900.0, 30.0])
    idx = q.encode(f0)
    assert idx[0] == 0 and (idx[1:] > 0).all() and idx.max() <= 63
    back = q.decode(idx)
    assert back[0] == 0
    step = (500 / 62.5) ** (1 / 62)
    inside = (f0 >= 62.5) & (f0 <= 500)
    assert ((back[inside] / f0[inside]).log().abs() <= math.log(step) / 2 + 1e-4).all()
    assert torch.isclose(back[6], torch.tensor(500.0)) and torch.isclose(back[7], torch.tensor(62.5))
    with pytest.raises(ValueError):
        PitchQuantizer(1)


def test_harmonic_source_streams_like_offline_and_has_harmonics_at_f0():
    src = HarmonicSource(SR, HOP)
    f0 = torch.tensor([[0.0] * 3 + [150.0] * 20 + [0.0] * 3 + [210.0] * 10])
    whole, _ = src.step(f0, src.init_state(1))
    state, parts = src.init_state(1), []
    for i in range(0, f0.shape[1], 5):
        out, state = src.step(f0[:, i : i + 5], state)
        parts.append(out)
    for k in range(4):
        torch.testing.assert_close(torch.cat([p[k] for p in parts], 1), whole[k], atol=2e-3, rtol=1e-3)
    power = whole[0][0, 10] ** 2 + whole[1][0, 10] ** 2  # a steady 150 Hz frame
    bin_hz = SR / (2 * HOP)
    peaks = [int(round(150 * k / bin_hz)) for k in range(1, 6)]
    between = [int(round(150 * (k + 0.5) / bin_hz)) for k in range(1, 6)]
    assert power[peaks].mean() > 20 * power[between].mean()
    assert (whole[0][0, 0] == 0).all(), "an unvoiced frame has no harmonic excitation"


def test_v4_codes_carry_the_pitch_row_and_its_bits_count():
    codec = tiny_v4()
    x, _ = glide()
    codes = codec.encode(x, 2)
    assert codes.shape[1] == 3  # pitch + 2 codebooks
    assert (codes[0, 0, :15] == 0).all() and (codes[0, 0, 30:] > 0).all()
    assert codec.bitrate(2) == 75 * (2 * 5 + 6)
    assert codec.decode(codes).shape[-1] == codes.shape[-1] * HOP


@pytest.mark.parametrize("chunk", [HOP, 2 * HOP + 100, 4800], ids=lambda c: f"chunk{c}")
def test_v4_streaming_equals_offline(chunk):
    codec = tiny_v4()
    x, _ = glide(1.0)
    x = x[..., : x.shape[-1] // HOP * HOP]
    with torch.no_grad():
        codes = codec.encode(x)
        whole = codec.decode(codes)
        state, got_codes, got = codec.init_state(1), [], []
        for i in range(0, x.shape[-1], chunk):
            c, state = codec.encode_step(x[..., i : i + chunk], state)
            y, state = codec.decode_step(c, state)
            got_codes.append(c)
            got.append(y)
    torch.testing.assert_close(torch.cat(got_codes, -1), codes, atol=0, rtol=0)
    torch.testing.assert_close(torch.cat(got, -1), whole, atol=1e-4, rtol=1e-4)


def test_v4_output_prefix_does_not_change_when_more_input_arrives():
    codec = tiny_v4()
    x, _ = glide(1.0)
    with torch.no_grad():
        short = codec.decode(codec.encode(x[..., : 40 * HOP]))
        long = codec.decode(codec.encode(x))
    torch.testing.assert_close(long[..., : short.shape[-1]], short, atol=1e-5, rtol=1e-5)


def test_v4_refuses_bad_codes():
    codec = tiny_v4()
    good = codec.encode(glide(0.5)[0])
    bad_pitch = good.clone()
    bad_pitch[0, 0, 3] = 64
    for bad in (bad_pitch, good[:, :1], good[0]):
        with pytest.raises(ValueError):
            codec.decode(bad)
    bad_code = good.clone()
    bad_code[0, 1, 0] = 32
    with pytest.raises(ValueError):
        codec.decode(bad_code)


def test_v4_states_stack_for_batched_serving():
    codec = tiny_v4()
    a, b = glide(0.5)[0], glide(0.5, 150, 90)[0]
    states = [codec.init_state(1), codec.init_state(1)]
    with torch.no_grad():
        batched = codec.init_state(1).stack(states)
        codes, batched = codec.encode_step(torch.cat([a, b]), batched)
        y, _ = codec.decode_step(codes, batched)
        alone, _ = codec.decode_step(*codec.encode_step(b, codec.init_state(1)))
    torch.testing.assert_close(y[1:], alone, atol=1e-5, rtol=1e-5)


def test_v4_token_file_spends_the_pitch_bits_only(tmp_path):
    import soundfile as sf

    from talkstream.codecs.audio.files import decode_file, encode_file
    from talkstream.codecs.container import ContainerError

    codec = tiny_v4()
    x, _ = glide(2.0)
    sf.write(tmp_path / "in.wav", x[0, 0].numpy(), SR)
    header = encode_file(codec, tmp_path / "in.wav", tmp_path / "a.tsk", 2)
    assert header["num_codebooks"] == 2 and header["pitch_bits"] == 6
    payload_bits = header["num_frames"] * (6 + 2 * 5)
    size = (tmp_path / "a.tsk").stat().st_size
    assert payload_bits / 8 <= size <= payload_bits / 8 + 400  # the payload plus a small JSON header
    out = decode_file(codec, tmp_path / "a.tsk", tmp_path / "out.wav")
    assert out["num_codebooks"] == 2
    from talkstream.audio_io import load_audio

    x = torch.from_numpy(load_audio(tmp_path / "in.wav", SR))[None, None]  # as the file holds it (PCM16)
    with torch.no_grad():
        direct = codec.decode(codec.encode(torch.nn.functional.pad(x, (0, codec.decode_delay)), 2))
    decoded, _ = sf.read(tmp_path / "out.wav", dtype="float32")
    expected = direct[0, 0, codec.decode_delay : codec.decode_delay + decoded.size].numpy()
    assert abs(decoded - expected.clip(-1, 1)).max() < 1e-3  # PCM16 rounding and clipping only
    # a file of a codec without pitch is refused with a clear error
    plain = AudioCodec(AudioCodecConfig(**{**codec.cfg.to_dict(), "decoder": "istft", "pitch_bits": 0})).eval()
    with pytest.raises(ContainerError, match="pitch bits"):
        decode_file(plain, tmp_path / "a.tsk", tmp_path / "x.wav")


def test_v4_on_the_onnx_backend_is_refused_with_a_clear_error():
    from talkstream.codecs.audio.onnx_step import OnnxCodecSteps
    from talkstream.errors import UserError

    with pytest.raises(UserError, match="--backend torch"):
        OnnxCodecSteps(tiny_v4())


def test_v4_output_never_reaches_full_scale():
    from talkstream.codecs.audio.codec import soft_limit

    x = torch.linspace(-3, 3, 601)
    y = soft_limit(x)
    assert y.abs().max() < 1.0
    inside = x.abs() <= 0.9
    torch.testing.assert_close(y[inside], x[inside])  # the level of ordinary speech is untouched
    assert (torch.diff(y) >= 0).all() and (torch.diff(y[x.abs() < 1.2]) > 0).all()  # monotonic: no fold-over
    codec = tiny_v4()
    with torch.no_grad():
        codec.decoder.head.bias += 6.0  # a decoder far too loud
        out = codec.decode(codec.encode(glide(0.5)[0] * 8))
    assert out.abs().max() < 1.0
