"""Whole-file encode/decode for the video codec v2 (`talkstream video encode --version 2`, `video decode`).

Frames are fitted to the codec's size as for v1 (files.py: scaled keeping the aspect ratio, edge-padded; decoding
crops and scales back). The file is a `.tsv2` stream (bitstream_v2.py): a JSON header, then one packet per frame.
Rate: a fixed `quality` in [0, 1] (the knob for files: each frame costs what it needs), or a target `kbps` held by
rate control. Key frames every `key_interval` frames (default 250, 10 s at 25 fps: a place to start decoding).
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

from talkstream.codecs.video.bitstream_v2 import BitstreamError, read_stream, write_stream
from talkstream.codecs.video.codec_v2 import VideoCodecV2
from talkstream.codecs.video.files import VideoInputError, fit_frame, read_frames, unfit_frame, write_video


def encode_file_v2(
    codec: VideoCodecV2, src: str | Path, dst: str | Path, quality: float = 0.75, kbps: float | None = None,
    key_interval: int = 250,
) -> dict:  # fmt: skip
    """Video file -> .tsv2 file, frame by frame. Returns the header written (with `num_frames`)."""
    frames, fps, source = read_frames(src)
    bitrate = None if kbps is None else kbps * 1000 * codec.fps / float(fps)  # the same bits per frame at any rate
    state = codec.init_state(bitrate=bitrate, quality=quality, key_interval=key_interval)
    packets, content = [], (0, 0)
    for rgb in frames:
        x, content = fit_frame(rgb, codec.frame_size)
        packet, state = codec.encode_step(x[None], state)
        packets.append(packet)
    if not packets:
        raise VideoInputError(f"{src}: no frames")
    header = {
        "kind": "video", "codec_id": codec.codec_id, "frame_size": list(codec.frame_size),
        "fps": [fps.numerator, fps.denominator], "source_size": list(source), "content_size": list(content),
        "num_frames": len(packets), "quality": None if kbps else quality, "kbps": kbps,
    }  # fmt: skip
    Path(dst).write_bytes(write_stream(header, packets))
    return header


def decode_file_v2(codec: VideoCodecV2, src: str | Path, dst: str | Path) -> dict:
    """.tsv2 file -> video file at the source size and rate. Refuses files of another codec, damaged files."""
    header, packets = read_stream(Path(src).read_bytes())
    if header.get("codec_id") != codec.codec_id or header.get("frame_size") != list(codec.frame_size):
        raise BitstreamError(f"{src}: made by codec {header.get('codec_id')!r}, this is {codec.codec_id!r}")
    try:
        fps = Fraction(*header["fps"])
        source, content = tuple(header["source_size"]), tuple(header["content_size"])
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        raise BitstreamError(f"{src}: header lacks a valid fps, source_size or content_size") from None
    state, out = codec.init_state(), []
    for packet in packets:
        frame, state = codec.decode_step(packet, state)
        out.append(unfit_frame(frame[0], content, source))
    write_video(dst, out, fps)
    return {**header, "duration_s": round(len(out) / float(fps), 3)}
