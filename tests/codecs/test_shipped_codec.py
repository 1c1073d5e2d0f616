"""The shipped codec on the bundled held-out sample (a voice it never trained on): a quality floor, not a target.

The floor sits a little under what the shipped weights measure (STOI 0.77 at 8 codebooks, 0.66 at 1), so it fails
if weights regress or a code change breaks decoding; the targets and real figures live in `talkstream bench codec`.
"""

from __future__ import annotations

import pytest
import soundfile as sf
import torch

from talkstream.audio_io import load_audio
from talkstream.bench.metrics import stoi
from talkstream.checkpoint import load_audio_codec
from talkstream.codecs.audio.codec import align_output
from talkstream.data import SAMPLE_WAV


@pytest.fixture(scope="module")
def codec():
    return load_audio_codec()


@pytest.fixture(scope="module")
def sample(codec):
    return load_audio(SAMPLE_WAV, codec.sample_rate)


def roundtrip(codec, audio, k):
    return codec.reconstruct(torch.from_numpy(audio)[None, None], k)[0, 0].numpy()


def test_quality_floor_and_more_codebooks_help(codec, sample):
    scores = {k: stoi(sample, roundtrip(codec, sample, k), codec.sample_rate) for k in (1, 2, 8)}
    assert scores[8] > 0.72 and scores[1] > 0.58
    assert scores[1] < scores[2] < scores[8]


def test_streaming_frame_by_frame_matches_offline(codec, sample):
    """The shipped model in the way a server runs it: one 13.3 ms frame at a time."""
    x = torch.from_numpy(sample[: 60 * codec.frame_size])[None, None]
    state = codec.init_state(1, 8)
    out = []
    with torch.inference_mode():
        for i in range(0, x.shape[-1], codec.frame_size):
            codes, state = codec.encode_step(x[..., i : i + codec.frame_size], state)
            pcm, state = codec.decode_step(codes, state)
            out.append(pcm)
        offline = codec.decode(codec.encode(x, 8))
    torch.testing.assert_close(torch.cat(out, -1), offline, atol=2e-5, rtol=0)
    assert align_output(offline, codec.decode_delay, x.shape[-1]).shape[-1] == x.shape[-1]


def test_tokens_of_the_old_codec_are_refused_not_decoded(codec, sample, tmp_path):
    """Files made by codec v1 (still shipped for the v1 Thinker's hearing) get a one-line error from the shipped v2,
    never wrong audio."""
    from talkstream.checkpoint import load_codec_v1
    from talkstream.codecs.audio.files import decode_file, encode_file
    from talkstream.codecs.container import ContainerError

    old = load_codec_v1()
    assert old.cfg.codec_id == "talkstream-audio-v1" and codec.cfg.codec_id == "talkstream-audio-v2"
    sf.write(tmp_path / "in.wav", sample, codec.sample_rate)
    encode_file(old, tmp_path / "in.wav", tmp_path / "old.tsk", 4)
    with pytest.raises(ContainerError, match="made by codec 'talkstream-audio-v1', this is 'talkstream-audio-v2'"):
        decode_file(codec, tmp_path / "old.tsk", tmp_path / "out.wav")
