"""Live video through the video codec: one session's encoder and decoder state, as a pipeline stage.

    VideoIn (RGB frame of any size, or tokens) -> VideoCodecStage -> VideoOut (tokens and/or the reconstruction)

The stage runs `encode_step` then `decode_step` of talkstream/codecs/video in a worker thread (asyncio.to_thread),
so the event loop keeps serving audio while a frame is coded. Every `key_interval` frames both states restart (a
key frame): the shipped codec was trained on 4-frame clips and its memory drifts on long streams, 4.6 dB PSNR
lost by the fifth second of continuous video (`bench video`), while a restart every second keeps it level (a
restart costs no bits: every frame takes the same 256 tokens). Key frames are flagged, so a client decoding the
tokens restarts at the same frame.

Frames of another size than the codec's are scaled to fit and edge-padded (files.py's `fit_frame`); the
reconstruction comes back at the codec's scale with the padding cropped off. The WebSocket session and the WebRTC
camera track both feed this stage through a live `Pipeline`, whose one-slot inbox drops the oldest waiting frame
when the codec falls behind.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from talkstream.codecs.video.codec import VideoCodec
from talkstream.codecs.video.files import KEY_INTERVAL, fit_frame
from talkstream.streaming.metrics import latency_fields


@dataclass
class VideoIn:
    """One frame into the codec: `rgb` uint8 [H, W, 3] (any size) to encode, or `tokens` int64 [N] to decode."""

    rgb: np.ndarray | None
    tokens: np.ndarray | None
    timestamp: int  # the client's timestamp (echoed back)
    arrived: float  # time.monotonic() when it reached the server
    meta: Any = None  # the transport's own (WebRTC: the input frame's pts and time_base), passed through
    key: bool = False  # tokens in: the sender's encoder restarted at this frame, so the decoder restarts too


@dataclass
class VideoOut:
    tokens: np.ndarray | None  # int64 [N] (row-major over the token grid), or None when not wanted
    rgb: np.ndarray | None  # uint8 [h, w, 3]: the reconstruction at the codec's scale, padding cropped
    timestamp: int
    arrived: float
    meta: Any = None
    key: bool = False  # the codec state restarted at this frame


@dataclass
class VideoStats:
    """One session's video figures for stats events and the summary; kept for the session's whole life."""

    frames_in: int = 0  # frames received, those dropped included
    frames_out: int = 0  # outputs handed to the transport
    drops: int = 0  # frames dropped before the codec because it was behind (frames_in = frames_out + drops)
    dropped_out: int = 0  # WebRTC: reconstructions the outbound track dropped because its sender was behind
    codec_ms: deque[float] = field(default_factory=lambda: deque(maxlen=2000))  # scale + encode + decode a frame

    def summary(self) -> dict:
        return {
            "frames_in": self.frames_in,
            "frames_out": self.frames_out,
            "drops": self.drops,
            "dropped_out": self.dropped_out,
            **latency_fields(self.codec_ms, "codec_ms", scale=1.0),
        }


class VideoCodecStage:
    """RGB -> tokens (and the decoder's reconstruction), or tokens -> RGB, with this session's codec state.

    The encoder's and the decoder's state are separate objects, as at the two ends of a real link; both are
    functions of the tokens only, so they stay in step."""

    name = "video_codec"

    def __init__(
        self,
        codec: VideoCodec,
        stats: VideoStats,
        want_tokens: bool = True,
        want_rgb: bool = True,
        key_interval: int = KEY_INTERVAL,
    ):
        self.codec, self.stats = codec, stats
        self.want_tokens, self.want_rgb = want_tokens, want_rgb
        self.key_interval = key_interval
        self.reset()

    def reset(self) -> None:
        self.enc_state = self.codec.init_state()
        self.dec_state = self.codec.init_state()
        self.frames = 0  # frames encoded since the last key frame

    async def process(self, item: VideoIn) -> list[VideoOut]:
        out, ms = await asyncio.to_thread(self.step, item)
        self.stats.codec_ms.append(ms)  # here, on the event loop, where stats are read: no cross-thread mutation
        return [out]

    @torch.no_grad()
    def step(self, item: VideoIn) -> tuple[VideoOut, float]:
        """One frame, synchronously (runs in a worker thread) -> (the output, milliseconds it took)."""
        codec = self.codec
        t0 = time.perf_counter()
        if item.rgb is not None:
            key = self.frames % self.key_interval == 0
            if key:
                self.reset()
            self.frames += 1
            x, (ch, cw) = fit_frame(item.rgb, codec.frame_size)
            tokens, self.enc_state = codec.encode_step(x[None], self.enc_state)
            want_rgb = self.want_rgb
        else:
            key = item.key
            if key:
                self.dec_state = codec.init_state()
            tokens = torch.from_numpy(item.tokens)[None]
            (ch, cw), want_rgb = codec.frame_size, True  # tokens in: the reconstruction is the only output
        rgb = None
        if want_rgb:
            frame, self.dec_state = codec.decode_step(tokens, self.dec_state)
            rgb = (frame[0, :, :ch, :cw] * 255 + 0.5).to(torch.uint8).permute(1, 2, 0).numpy()
        ms = (time.perf_counter() - t0) * 1000
        out_tokens = tokens[0].numpy() if self.want_tokens and item.rgb is not None else None
        return VideoOut(out_tokens, rgb, item.timestamp, item.arrived, item.meta, key), ms


def warmup(codec: VideoCodec) -> None:
    """One frame through encode and decode, so the first camera frame of the first session is not the slow one."""
    h, w = codec.frame_size
    VideoCodecStage(codec, VideoStats()).step(VideoIn(np.zeros((h, w, 3), np.uint8), None, 0, 0.0))
