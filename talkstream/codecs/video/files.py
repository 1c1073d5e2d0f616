"""Whole-file encode/decode between video files (PyAV) and .tsv token files (`talkstream video encode/decode`).

Sizes: every frame is scaled to fit the codec's frame (128x128 by default) keeping its aspect ratio (antialiased
bilinear), then padded bottom and right by repeating the edge pixels. The header keeps the source size and the
content size, so decoding crops the padding off and scales back to the source size.

Frame rate: the input must have a constant frame rate (every frame interval within 10% of the median); the rate is
kept in the header and the decoded file has the same rate, one output frame per input frame, pts = frame index.
Variable-rate input is refused (convert first, e.g. `ffmpeg -i IN -vf fps=25 OUT.mp4`).

Output: H.264 (libx264, CRF 10, so the file adds little loss of its own) in the container the extension names;
yuv420p when both sides are even, else yuv444p (4:2:0 needs even sizes).

Key frames: the codec state restarts every `KEY_INTERVAL` frames, as in live streams (the shipped codec was trained
on 4-frame clips and its memory drifts after a few seconds of continuous video); the header records the interval
and decoding restarts at the same frames. A restart costs no bits (every frame takes the same 256 tokens).
"""

from __future__ import annotations

from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from talkstream.codecs.container import ContainerError, read_tokens, write_tokens
from talkstream.codecs.video.codec import VideoCodec
from talkstream.errors import UserError

KEY_INTERVAL = 25  # frames between restarts of the codec state: 1 s at 25 fps


class VideoInputError(UserError, ValueError):
    """A video file cannot be read, has no video, or is not constant frame rate. The message is for the user."""


def fit_frame(rgb: np.ndarray, size: tuple[int, int]) -> tuple[torch.Tensor, tuple[int, int]]:
    """uint8 [H, W, 3] -> (float [3, h, w] in [0, 1] scaled to fit and edge-padded, content size (ch, cw))."""
    h, w = size
    sh, sw = rgb.shape[:2]
    r = min(h / sh, w / sw)
    ch, cw = max(1, min(h, round(sh * r))), max(1, min(w, round(sw * r)))
    x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float()[None] / 255
    if (ch, cw) != (sh, sw):
        x = F.interpolate(x, size=(ch, cw), mode="bilinear", antialias=True, align_corners=False)
    x = F.pad(x, (0, w - cw, 0, h - ch), mode="replicate")
    return x[0].clamp(0, 1), (ch, cw)


def unfit_frame(frame: torch.Tensor, content: tuple[int, int], source: tuple[int, int]) -> np.ndarray:
    """float [3, h, w] -> uint8 [H, W, 3] at the source size (padding cropped)."""
    x = frame[None, :, : content[0], : content[1]]
    if tuple(content) != tuple(source):
        x = F.interpolate(x, size=tuple(source), mode="bilinear", antialias=True, align_corners=False)
    return (x[0].clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(1, 2, 0).numpy()


def read_frames(path: str | Path) -> tuple[Iterator[np.ndarray], Fraction, tuple[int, int]]:
    """Open a video and check its frame rate. -> (frames uint8 [H, W, 3] as an iterator, fps, (H, W)).

    The whole stream's timestamps are read first (packets only, no decoding) to refuse variable frame rates."""
    import av

    path = Path(path)
    if not path.is_file():
        raise VideoInputError(f"{path}: no such file")
    try:
        with av.open(str(path)) as c:
            if not c.streams.video:
                raise VideoInputError(f"{path}: has no video stream")
            s = c.streams.video[0]
            pts = sorted(p.pts for p in c.demux(s) if p.pts is not None)
            size = (s.codec_context.height, s.codec_context.width)
            tb, avg = s.time_base, s.average_rate
    except av.FFmpegError as e:
        raise VideoInputError(f"{path}: not a readable video ({e.strerror or type(e).__name__})") from None
    if len(pts) >= 3 and tb is not None:  # a stream with no time base: its timestamps say nothing
        d = np.diff(np.asarray(pts, dtype=np.float64)) * float(tb)
        med = float(np.median(d))
        if med <= 0 or np.abs(d - med).max() > 0.1 * med + float(tb):
            raise VideoInputError(
                f"{path}: variable frame rate (frame intervals {d.min() * 1000:.1f} to {d.max() * 1000:.1f} ms); "
                "convert it to a constant rate first, e.g. ffmpeg -i IN -vf fps=25 OUT.mp4"
            )
        fps = Fraction(1 / med).limit_denominator(1001)
        if avg and abs(float(avg) - float(fps)) < 0.01 * float(fps):
            fps = Fraction(avg)
    else:
        fps = Fraction(avg) if avg else Fraction(25)

    def frames() -> Iterator[np.ndarray]:
        try:
            with av.open(str(path)) as c:
                for frame in c.decode(video=0):
                    yield frame.to_ndarray(format="rgb24")
        except av.FFmpegError as e:
            raise VideoInputError(f"{path}: cannot decode ({e.strerror or type(e).__name__})") from None

    return frames(), fps, size


def write_video(path: str | Path, frames: list[np.ndarray], fps: Fraction | float, crf: int = 10) -> None:
    """uint8 [H, W, 3] frames -> a video file (libx264, pts = frame index at `fps`)."""
    import av

    fps = Fraction(fps).limit_denominator(1001)
    h, w = frames[0].shape[:2] if frames else (16, 16)
    try:
        with av.open(str(path), "w") as c:
            s = c.add_stream("libx264", rate=fps)
            s.width, s.height = w, h
            s.pix_fmt = "yuv420p" if h % 2 == 0 and w % 2 == 0 else "yuv444p"
            s.options = {"crf": str(crf)}
            for i, rgb in enumerate(frames):
                f = av.VideoFrame.from_ndarray(rgb, format="rgb24")
                f.pts = i
                c.mux(s.encode(f))
            c.mux(s.encode())
    except av.FFmpegError as e:
        raise VideoInputError(f"{path}: cannot write video ({e.strerror or type(e).__name__})") from None


def codec_header(codec: VideoCodec) -> dict:
    return {
        "kind": "video",
        "codec_id": codec.cfg.codec_id,
        "frame_size": list(codec.frame_size),
        "grid": list(codec.grid),
        "codebook_size": codec.codebook_size,
    }


@torch.no_grad()
def encode_file(codec: VideoCodec, src: str | Path, dst: str | Path) -> dict:
    """Video file -> .tsv token file, streaming frame by frame. Returns the header written."""
    frames, fps, source = read_frames(src)
    tokens, content = [], (0, 0)
    for i, rgb in enumerate(frames):
        if i % KEY_INTERVAL == 0:  # a key frame: the state restarts (as live streams do: the memory drifts)
            state = codec.init_state()
        x, content = fit_frame(rgb, codec.frame_size)
        t, state = codec.encode_step(x[None], state)
        tokens.append(t[0].numpy())
    if not tokens:
        raise VideoInputError(f"{src}: no frames")
    codes = np.stack(tokens, 1)  # [tokens per frame, frames]
    header = {
        **codec_header(codec),
        "frame_rate": float(fps),
        "fps": [fps.numerator, fps.denominator],
        "source_size": list(source),
        "content_size": list(content),
        "key_interval": KEY_INTERVAL,
    }
    write_tokens(dst, codes, header)
    return {**header, "num_codebooks": int(codes.shape[0]), "num_frames": int(codes.shape[1])}


@torch.no_grad()
def decode_file(codec: VideoCodec, src: str | Path, dst: str | Path) -> dict:
    """.tsv -> video file at the source size and rate. Refuses files made by another codec."""
    header, codes = read_tokens(src, "video")
    if header["codec_id"] != codec.cfg.codec_id or header["codebook_size"] != codec.codebook_size:
        raise ContainerError(f"{src}: made by codec {header['codec_id']!r}, this is {codec.cfg.codec_id!r}")
    if codes.shape[0] != codec.num_codebooks:
        raise ContainerError(f"{src}: {codes.shape[0]} tokens per frame, this codec makes {codec.num_codebooks}")
    try:
        fps = Fraction(*header["fps"])
        source, content = tuple(header["source_size"]), tuple(header["content_size"])
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        raise ContainerError(f"{src}: header lacks a valid fps, source_size or content_size") from None
    key_interval = header.get("key_interval") or 0  # 0 or absent (files written before key frames): none
    if not isinstance(key_interval, int) or key_interval < 0:
        raise ContainerError(f"{src}: key_interval must be a non-negative integer, got {key_interval!r}")
    out = []
    for i, t in enumerate(torch.from_numpy(codes).T):
        if i == 0 or (key_interval and i % key_interval == 0):
            state = codec.init_state()
        frame, state = codec.decode_step(t[None], state)
        out.append(unfit_frame(frame[0], content, source))
    write_video(dst, out, fps)
    return {**header, "duration_s": round(len(out) / float(fps), 3)}
