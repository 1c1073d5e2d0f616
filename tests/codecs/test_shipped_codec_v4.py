"""The shipped codec v4 on the bundled held-out sample, side by side with v3: it keeps v3's tokens, adds the pitch,
and its pitch-driven phase scores higher PESQ-WB (the real figures live in `talkstream bench codec`)."""

from __future__ import annotations

import pytest
import torch

from talkstream.audio_io import load_audio
from talkstream.bench.metrics import pesq_wb, stoi
from talkstream.checkpoint import WEIGHTS_DIR, load_audio_codec
from talkstream.data import SAMPLE_WAV

V4 = WEIGHTS_DIR / "audio_codec_v4"


@pytest.fixture(scope="module")
def codecs():
    return load_audio_codec(), load_audio_codec(V4)


def test_v4_keeps_v3s_tokens_and_adds_the_pitch(codecs):
    v3, v4 = codecs
    assert v4.cfg.codec_id == "talkstream-audio-v4" and v4.cfg.pitch_bits == 6
    x = torch.from_numpy(load_audio(SAMPLE_WAV, 24_000))[None, None]
    a, b = v3.encode(x, 4), v4.encode(x, 4)
    torch.testing.assert_close(b[:, 1:], a)
    assert 0.4 < (b[0, 0] > 0).float().mean() < 0.9  # the sample is partly voiced
    assert v4.bitrate(8) == v3.bitrate(8) + 450


def test_v4_sounds_closer_to_the_input_than_v3_and_streams_like_offline(codecs):
    v3, v4 = codecs
    audio = load_audio(SAMPLE_WAV, 24_000)
    x = torch.from_numpy(audio)[None, None]
    with torch.inference_mode():
        y3, y4 = v3.reconstruct(x, 8)[0, 0].numpy(), v4.reconstruct(x, 8)[0, 0].numpy()
    assert pesq_wb(audio, y4, 24_000) > pesq_wb(audio, y3, 24_000) + 0.1
    assert stoi(audio, y4, 24_000) > 0.8
    assert abs(y4).max() < 1.0
    with torch.inference_mode():
        whole = v4.decode(v4.encode(x))
        state, parts = v4.init_state(1), []
        for i in range(0, x.shape[-1], 320):
            codes, state = v4.encode_step(x[..., i : i + 320], state)
            y, state = v4.decode_step(codes, state)
            parts.append(y)
    streamed = torch.cat(parts, -1)
    torch.testing.assert_close(streamed, whole[..., : streamed.shape[-1]], atol=2e-4, rtol=1e-3)
