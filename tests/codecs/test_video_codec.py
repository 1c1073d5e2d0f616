"""The video codec: streaming equals offline, causality, FSQ, the .tsv container, the CLI's errors, shipped weights."""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import pytest
import torch

from talkstream.cli import main
from talkstream.codecs.container import ContainerError, read_tokens, write_tokens
from talkstream.codecs.video.codec import FSQ, VideoCodec, VideoCodecConfig
from talkstream.codecs.video.files import decode_file, encode_file, read_frames, write_video

# A small random codec: the contract tests need its structure, not its quality.
SMALL = VideoCodecConfig(
    frame_size=(32, 48), encoder_channels=(8, 12, 16), decoder_channels=(16, 12, 8), memory_channels=8
)


@pytest.fixture(scope="module")
def codec() -> VideoCodec:
    torch.manual_seed(0)
    return VideoCodec(SMALL).eval()


@pytest.fixture(scope="module")
def video() -> torch.Tensor:
    return torch.rand(2, 7, 3, *SMALL.frame_size, generator=torch.Generator().manual_seed(1))


def test_fsq_codes_cover_the_grid_and_round_trip():
    q = FSQ((8, 5, 5, 5))
    codes = torch.arange(q.codebook_size).view(1, 10, 100)
    values = q.codes_to_values(codes)
    assert values.abs().max() <= 1
    torch.testing.assert_close(q.values_to_codes(values), codes, rtol=0, atol=0)
    v, c = q(torch.randn(1, 4, 8, 8) * 3)
    torch.testing.assert_close(q.codes_to_values(c), v.detach(), rtol=0, atol=0)


@pytest.mark.parametrize("batch_first", [False, True], ids=["stream-1", "batched-2"])
def test_streaming_equals_offline(codec, video, batch_first):
    tokens = codec.encode(video)
    frames = codec.decode(tokens)
    assert tokens.shape == (2, 7, codec.num_codebooks) and frames.shape == video.shape
    items = [video] if batch_first else [video[:1], video[1:]]
    for i, v in enumerate(items):
        enc, dec = codec.init_state(v.shape[0]), codec.init_state(v.shape[0])
        for t in range(v.shape[1]):
            with torch.no_grad():
                tok, enc = codec.encode_step(v[:, t], enc)
                out, dec = codec.decode_step(tok, dec)
            rows = slice(None) if batch_first else slice(i, i + 1)
            torch.testing.assert_close(tok, tokens[rows, t], rtol=0, atol=0)
            torch.testing.assert_close(out, frames[rows, t])


def test_future_frames_do_not_change_the_past(codec, video):
    changed = video.clone()
    changed[:, 4:] = torch.rand_like(changed[:, 4:])
    a, b = codec.encode(video), codec.encode(changed)
    torch.testing.assert_close(a[:, :4], b[:, :4], rtol=0, atol=0)
    assert not torch.equal(a[:, 4:], b[:, 4:])
    tokens = b.clone()
    tokens[:, 5] = (tokens[:, 5] + 1) % codec.codebook_size
    torch.testing.assert_close(codec.decode(b)[:, :5], codec.decode(tokens)[:, :5], rtol=0, atol=0)


def test_the_memory_carries_the_past(codec, video):
    """The first frame is coded alone; later ones depend on what came before (the causal temporal conditioning)."""
    alone = codec.encode(video[:, 3:4])
    in_context = codec.encode(video)[:, 3:4]
    assert not torch.equal(alone, in_context)


def _clip(path, size=(51, 75), frames=6, fps=Fraction(25)):
    g = np.random.default_rng(0)
    base = g.integers(0, 255, (size[0] // 4 + 1, size[1] // 4 + 1, 3)).astype(np.uint8)
    rgb = [np.roll(base.repeat(4, 0).repeat(4, 1)[: size[0], : size[1]], i, axis=1) for i in range(frames)]
    write_video(path, rgb, fps, crf=18)
    return rgb


def test_file_round_trip_keeps_odd_size_rate_and_frames(codec, tmp_path):
    src, tsv, out = tmp_path / "in.mp4", tmp_path / "x.tsv", tmp_path / "out.mp4"
    _clip(src, size=(51, 75), fps=Fraction(30000, 1001))
    header = encode_file(codec, src, tsv)
    assert header["source_size"] == [51, 75] and header["content_size"] == [32, 47]  # fits 32 high, keeps aspect
    meta, codes = read_tokens(tsv, "video")
    assert codes.shape == (codec.num_codebooks, 6) and meta["fps"] == [30000, 1001]
    decode_file(codec, tsv, out)
    frames, fps, size = read_frames(out)
    assert size == (51, 75) and fps == Fraction(30000, 1001) and len(list(frames)) == 6


def test_files_restart_the_codec_state_at_key_frames(codec, tmp_path):
    """Every KEY_INTERVAL frames encoding and decoding start afresh (as live streams do), recorded in the header."""
    from talkstream.codecs.video.files import KEY_INTERVAL, fit_frame

    src, tsv = tmp_path / "in.mp4", tmp_path / "x.tsv"
    _clip(src, size=(64, 64), frames=KEY_INTERVAL + 3)
    encode_file(codec, src, tsv)
    meta, codes = read_tokens(tsv, "video")
    assert meta["key_interval"] == KEY_INTERVAL and codes.shape[1] == KEY_INTERVAL + 3
    frames = [fit_frame(rgb, codec.frame_size)[0] for rgb in read_frames(src)[0]]
    with torch.no_grad():
        alone = codec.encode_step(frames[KEY_INTERVAL][None], codec.init_state())[0][0].numpy()
        carried = codec.encode(torch.stack(frames)[None])[0, KEY_INTERVAL].numpy()
    assert np.array_equal(codes[:, KEY_INTERVAL], alone)  # the key frame is coded alone...
    assert not np.array_equal(alone, carried)  # ...which is not what a state carried from frame 0 gives
    # A file without key frames (written before them) still decodes, with one state throughout.
    meta.pop("key_interval")
    write_tokens(tmp_path / "old.tsv", codes, meta)
    decode_file(codec, tmp_path / "old.tsv", tmp_path / "old.mp4")
    meta["key_interval"] = -3
    write_tokens(tmp_path / "bad.tsv", codes, meta)
    with pytest.raises(ContainerError, match="key_interval"):
        decode_file(codec, tmp_path / "bad.tsv", tmp_path / "bad.mp4")


def test_damaged_token_files_are_refused(codec, tmp_path):
    src, tsv = tmp_path / "in.mp4", tmp_path / "x.tsv"
    _clip(src)
    encode_file(codec, src, tsv)
    data = tsv.read_bytes()
    flipped = bytearray(data)
    flipped[-5] ^= 0x40
    for name, blob, msg in [
        ("flip", bytes(flipped), "checksum"),
        ("cut", data[:-3], "truncated"),
        ("magic", b"XXXX" + data[4:], "magic"),
        ("version", data[:4] + b"\x09" + data[5:], "version"),
    ]:
        (tmp_path / name).write_bytes(blob)
        with pytest.raises(ContainerError, match=msg):
            decode_file(codec, tmp_path / name, tmp_path / "o.mp4")
    audio = tmp_path / "audio.tsk"
    write_tokens(audio, np.zeros((8, 3), np.int64), {"kind": "audio", "codec_id": "a", "codebook_size": 1024})
    with pytest.raises(ContainerError, match="expected 'video'"):
        decode_file(codec, audio, tmp_path / "o.mp4")


def _vfr(path):
    with av.open(str(path), "w", format="matroska") as c:
        s = c.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = 32, 32, "yuv420p"
        s.codec_context.time_base = Fraction(1, 1000)
        for i, ms in enumerate([0, 40, 80, 200, 240, 400]):
            f = av.VideoFrame.from_ndarray(np.full((32, 32, 3), i * 30, np.uint8), format="rgb24")
            f.pts, f.time_base = ms, Fraction(1, 1000)
            c.mux(s.encode(f))
        c.mux(s.encode())


@pytest.mark.parametrize("case", ["missing", "garbage", "vfr", "audio-only", "bad-tokens"])
def test_cli_errors_are_one_line_exit_2(tmp_path, capsys, case, monkeypatch, codec):
    monkeypatch.setattr("talkstream.checkpoint.load_video_codec", lambda path=None: codec)
    src = tmp_path / "in.mkv"
    if case == "garbage":
        src.write_bytes(b"\x00\x01not a video" * 100)
    elif case == "vfr":
        _vfr(src)
    elif case == "audio-only":
        src = tmp_path / "in.wav"
        import soundfile as sf

        sf.write(src, np.zeros(2400, np.float32), 24_000)
    if case == "bad-tokens":
        (tmp_path / "x.tsv").write_bytes(b"TSK\x00\x01\x05\x00\x00\x00{bad}")
        argv = ["video", "decode", str(tmp_path / "x.tsv"), str(tmp_path / "o.mp4")]
    else:
        argv = ["video", "encode", str(src), str(tmp_path / "x.tsv")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("talkstream: error:") and "\n" not in err
    expected = {
        "missing": "no such file",
        "garbage": "not a readable video",
        "vfr": "variable frame rate",
        "audio-only": "no video stream",
        "bad-tokens": "corrupted header",
    }[case]
    assert expected in err


def test_shipped_weights_reach_the_psnr_floor_on_a_held_out_clip():
    from talkstream.bench.video import psnr
    from talkstream.checkpoint import load_video_codec
    from talkstream.codecs.video.data import clips_to_uint8, eval_clips

    codec = load_video_codec()
    assert codec.frame_size == (128, 128) and codec.num_codebooks == 256 and codec.codebook_size == 1000
    name, clip = eval_clips(1, frames=8)[0]
    out = codec.decode(codec.encode(clip[None]))[0]
    assert psnr(clips_to_uint8(clip), clips_to_uint8(out)) > PSNR_FLOOR_DB, name


PSNR_FLOOR_DB = 20.0


def test_video_token_messages_round_trip_and_refuse_damage():
    from talkstream.protocol import (
        HEADER,
        KIND_VIDEO_TOKENS,
        ProtocolError,
        parse_binary,
        video_token_frame,
    )

    tokens = np.random.default_rng(0).integers(0, 1000, (3, 256))
    frame = parse_binary(video_token_frame(tokens, seq=7, timestamp=40))
    assert (frame.kind, frame.seq, frame.timestamp) == (KIND_VIDEO_TOKENS, 7, 40)
    np.testing.assert_array_equal(frame.video_tokens(), tokens)
    bad = [
        video_token_frame(tokens, 0, 0)[:-2],  # ragged
        HEADER.pack(KIND_VIDEO_TOKENS, 1, 0, 0, 0, 0),  # no frames
        video_token_frame(np.full((1, 256), 1000), 0, 0),  # out of range
        video_token_frame(np.zeros((26, 256), np.int64), 0, 0),  # too many frames
    ]
    for data in bad:
        with pytest.raises(ProtocolError) as e:
            parse_binary(data)
        assert e.value.code == "bad_header"


def test_bench_long_streams_compares_one_state_with_key_frames(codec):
    from talkstream.bench.video import long_streams

    r = long_streams(codec, clips=1, seconds=2)
    assert r["key_interval"] == 25 and len(r["continuous"]) == len(r["key_frames"]) == 2
    assert r["continuous"][0] == r["key_frames"][0]  # the first second is the same stream either way
    assert r["continuous"][1] != r["key_frames"][1]  # the second starts afresh at its key frame
