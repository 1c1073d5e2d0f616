"""The video codec v2: packets decode to exactly the encoder's frames, streaming equals offline and is causal, bad
packets and files are refused, and with the shipped weights a still scene costs a tenth of a moving one, rate control
lands near its target and the quality knob trades bits for PSNR."""

from __future__ import annotations

import pytest
import torch

from talkstream.checkpoint import WEIGHTS_DIR, CheckpointError, load_video_codec, load_video_codec_v2, save_checkpoint
from talkstream.codecs.video import bitstream_v2 as bs
from talkstream.codecs.video.codec_v2 import VideoCodecV2, VideoCodecV2Config

# A small random codec: the contract tests need its structure, not its quality.
SMALL = VideoCodecV2Config(
    frame_size=(32, 48), latent_channels=8, side_channels=4, encoder_channels=(8, 12, 16),
    decoder_channels=(16, 12, 8), context_channels=(4, 8, 16),
)  # fmt: skip
SHIPPED = WEIGHTS_DIR / "video_codec_v2"


@pytest.fixture(scope="module")
def codec() -> VideoCodecV2:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    return VideoCodecV2(SMALL).eval()


@pytest.fixture(scope="module")
def video() -> torch.Tensor:
    return torch.rand(6, 3, *SMALL.frame_size, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def packets(codec, video) -> list[bytes]:
    return codec.encode(video, quality=0.6)


@pytest.fixture(scope="module")
def shipped() -> VideoCodecV2:
    torch.set_num_threads(1)
    return load_video_codec_v2()


def _clip(frames: int, seed: int) -> torch.Tensor:
    from talkstream.codecs.video.data import ImageBank, make_clip

    return make_clip(ImageBank("train"), seed, frames)


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(-10 * torch.log10(((a - b) ** 2).mean()))


@pytest.mark.parametrize("key_interval", [0, 2], ids=["one-key-frame", "key-every-2"])
def test_streaming_equals_offline_and_decodes_the_encoders_frames(codec, video, key_interval):
    packets = codec.encode(video, quality=0.6, key_interval=key_interval)
    offline = codec.decode(packets)
    enc, dec = codec.init_state(quality=0.6, key_interval=key_interval), codec.init_state()
    for t in range(video.shape[0]):
        packet, enc = codec.encode_step(video[t : t + 1], enc)
        frame, dec = codec.decode_step(packet, dec)
        assert packet == packets[t]
        torch.testing.assert_close(frame[0], offline[t], rtol=0, atol=0)
        torch.testing.assert_close(frame, (enc.prev + 1) / 2, rtol=0, atol=0)  # what the encoder predicts from
    kinds = [p[0] & 15 for p in packets]
    assert kinds == ([1, 0, 0, 0, 0, 0] if key_interval == 0 else [1, 0, 1, 0, 1, 0])


def _assert_decodes_to_the_encoders_frames(codec, clip, packets, **state_args):
    decoded = codec.decode(packets)
    state = codec.init_state(**state_args)
    for t in range(clip.shape[0]):
        _, state = codec.encode_step(clip[t : t + 1], state)
        torch.testing.assert_close(decoded[t : t + 1], (state.prev + 1) / 2, rtol=0, atol=0)


def test_a_still_frame_is_skipped_whole(codec, video):
    still = video[:1].expand_as(video).contiguous()
    packets = codec.encode(still, quality=0.6)
    assert [p[2] for p in packets] == [0, 255, 255, 255, 255, 255]  # the header's skip byte
    assert all(len(p) == bs.FRAME_HEADER_BYTES for p in packets[1:])  # a repeated frame is its header
    _assert_decodes_to_the_encoders_frames(codec, still, packets, quality=0.6)


def test_packets_for_a_prefix_do_not_change_when_more_frames_follow(codec, video, packets):
    assert codec.encode(video[:3], quality=0.6) == packets[:3]


def test_two_streams_on_one_model_share_nothing(codec, video, packets):
    other = torch.rand(6, 3, *SMALL.frame_size, generator=torch.Generator().manual_seed(2))
    a, b = codec.init_state(quality=0.6), codec.init_state(quality=0.6)
    out = []
    for t in range(video.shape[0]):
        pa, a = codec.encode_step(video[t : t + 1], a)
        _, b = codec.encode_step(other[t : t + 1], b)
        out.append(pa)
    assert out == packets


@pytest.mark.parametrize(
    "damage",
    [
        lambda p: p[:-4],
        lambda p: p[:3],
        lambda p: p[:10] + bytes([p[10] ^ 0x40]) + p[11:],
        lambda p: bytes([p[0] ^ 0x30]) + p[1:],
        lambda p: p[:1] + bytes([200]) + p[2:],
        lambda p: p + b"\0\0\0\0",
    ],
    ids=["truncated", "header-only", "flipped-bit", "other-version", "bad-quality", "trailing-word"],
)
def test_a_damaged_packet_is_refused(codec, packets, damage):
    state = codec.init_state()
    with pytest.raises(ValueError, match="video v2 packet"):
        codec.decode_step(damage(packets[0]), state)


def test_an_inter_frame_without_a_key_frame_is_refused(codec, packets):
    with pytest.raises(ValueError, match="no frame before it"):
        codec.decode_step(packets[1], codec.init_state())


def test_file_round_trip_and_its_errors(codec, packets):
    data = bs.write_stream({"codec_id": codec.codec_id, "num_frames": len(packets)}, packets)
    header, back = bs.read_stream(data)
    assert back == packets and header["codec_id"] == "talkstream-video-v2"
    for bad, message in (
        (data[:-3], "truncated"),
        (b"TSV1" + data[4:], "magic"),
        (data[:4] + b"\x09" + data[5:], "version"),
    ):
        with pytest.raises(bs.BitstreamError, match=message):
            bs.read_stream(bad)


def test_checkpoint_round_trip(tmp_path, video):
    torch.manual_seed(0)
    model = VideoCodecV2(SMALL).eval()
    save_checkpoint(model, model.cfg.to_dict(), tmp_path, kind="video_codec_v2")
    loaded = load_video_codec_v2(tmp_path)
    assert loaded.codec_id == "talkstream-video-v2" and not loaded.training
    packets = loaded.encode(video, quality=0.3)
    assert packets == load_video_codec_v2(tmp_path).encode(video, quality=0.3)
    assert loaded.decode(packets).shape == video.shape
    with pytest.raises(CheckpointError, match="expected a 'video_codec'"):
        load_video_codec(tmp_path)


def test_v1_still_loads():
    assert load_video_codec().cfg.codec_id == "talkstream-video-v1"


def test_rate_grows_with_quality(codec, video):
    sizes = [sum(map(len, codec.encode(video, quality=q))) for q in (0.0, 0.5, 1.0)]
    assert sizes[0] < sizes[1] < sizes[2]


# --- the shipped weights ---


def test_shipped_still_scene_costs_a_tenth_of_a_moving_one(shipped):
    moving = _clip(12, seed=11)
    still = moving[:1].expand_as(moving).contiguous()
    bits = {}
    for name, clip in (("moving", moving), ("still", still)):
        packets = shipped.encode(clip, quality=0.75)
        bits[name] = sum(8 * len(p) for p in packets[1:])  # inter frames: frame 0 is a key frame in both
        assert _psnr(shipped.decode(packets), clip) > 20  # it decodes a picture (quality: bench video)
    assert bits["still"] < bits["moving"] / 10, bits


def test_shipped_quality_knob_trades_bits_for_psnr(shipped):
    clip = _clip(8, seed=12)
    low, high = shipped.encode(clip, quality=0.2), shipped.encode(clip, quality=0.9)
    assert sum(map(len, low)) < sum(map(len, high))
    assert _psnr(shipped.decode(low), clip) < _psnr(shipped.decode(high), clip)


def test_shipped_skips_the_still_half_of_a_picture(shipped):
    clip = _clip(6, seed=14)
    clip[..., :64, :] = clip[:1, :, :64, :]  # the top half holds still
    packets = shipped.encode(clip, quality=0.75)
    assert all(0 < p[2] < 255 for p in packets[2:]), [p[2] for p in packets]  # some blocks skipped, not all
    _assert_decodes_to_the_encoders_frames(shipped, clip, packets, quality=0.75)


@pytest.mark.slow
@pytest.mark.parametrize("kbps", [32, 128])
def test_shipped_rate_control_lands_near_its_target(shipped, kbps):
    clip = _clip(50, seed=13)
    state = shipped.init_state(bitrate=kbps * 1000)
    for t in range(clip.shape[0]):
        _, state = shipped.encode_step(clip[t : t + 1], state)
    got = state.bits / (clip.shape[0] / shipped.fps) / 1000
    assert abs(got - kbps) < 0.15 * kbps, got


def test_shipped_weights_carry_their_command():
    import json

    assert "train video --version 2" in json.loads((SHIPPED / "training.json").read_text())["command"]


def test_cli_encodes_and_decodes_a_file_and_refuses_a_damaged_one(tmp_path, capsys, monkeypatch, codec, video):
    from talkstream.cli import main
    from talkstream.codecs.video.files import write_video

    monkeypatch.setattr("talkstream.checkpoint.load_video_codec_v2", lambda path=None: codec)
    frames = [(f.permute(1, 2, 0) * 255).to(torch.uint8).numpy() for f in video]
    write_video(tmp_path / "in.mp4", frames, 25)
    assert main(["video", "encode", str(tmp_path / "in.mp4"), str(tmp_path / "x.tsv2"), "--version", "2"]) == 0
    assert main(["video", "decode", str(tmp_path / "x.tsv2"), str(tmp_path / "out.mp4")]) == 0
    assert (tmp_path / "out.mp4").stat().st_size > 0
    data = (tmp_path / "x.tsv2").read_bytes()
    (tmp_path / "bad.tsv2").write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    capsys.readouterr()
    assert main(["video", "decode", str(tmp_path / "bad.tsv2"), str(tmp_path / "o.mp4")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("talkstream: error:") and "checksum mismatch" in err and "\n" not in err


def test_training_resumes_and_exports_loadable_weights(tmp_path):
    from talkstream.codecs.video.train_v2 import VideoV2TrainConfig, train_video_codec_v2

    cfg = VideoV2TrainConfig(out=str(tmp_path / "run"), steps=2, batch_size=2, clip_frames=2, crop=32)
    train_video_codec_v2(cfg, model_cfg=SMALL, command="talkstream train video --version 2")
    cfg.steps = 3
    export = train_video_codec_v2(cfg, command="talkstream train video --version 2")
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)["step"] == 3
    codec = load_video_codec_v2(export)
    assert codec.cfg == SMALL and codec.decode(codec.encode(torch.rand(2, 3, 32, 48))).shape == (2, 3, 32, 48)
