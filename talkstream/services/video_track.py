"""WebRTC's "see what the codec sees": the browser's camera through the video codec and back on a video track.

    camera track (VP8/H.264, decoded by aiortc) -> av.VideoFrame -> RGB -> the session's video (SessionVideo):
    a live pipeline that fits the frame to the codec's 128x128, runs encode_step then decode_step in a worker
    thread -> the reconstruction -> CodecVideoTrack (outbound, paced) -> the browser

Size: the reconstruction goes back at the codec's scale with the padding cropped off, not at the camera's size: a
square camera frame comes back 128x128, a 640x480 one 128x96 (rounded down to even sizes, which 4:2:0 video needs).
The page scales it up; sending it at the camera's size would spend the encoder's time on detail the codec never had.

Timing: each frame keeps the pts and time_base of the camera frame it was made from (aiortc gives received frames a
90 kHz pts that starts at 0 and never wraps back), and the track spaces frames out by their pts, so a burst of frames
the codec finished together leaves at the camera's pace. Only after a late frame may frames go closer together (at
most 4/3 of the camera's rate) until the delay it left is gone: at exactly the camera's rate a single slow frame
would delay every later one for good. When the codec falls behind, the session's pipeline drops the oldest frame
waiting (one may wait while another is coded; video `drops`); the track holds at most `max_backlog` frames and
drops the oldest beyond that (video `dropped_out`).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from fractions import Fraction
from typing import cast

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from talkstream.protocol import ProtocolError
from talkstream.services.session import Session
from talkstream.streaming.pipeline import PipelineFailed
from talkstream.streaming.video import VideoIn, VideoOut, VideoStats

MS = Fraction(1, 1000)  # the time base of frames that came without a pts of their own (arrival time, ms)


class CodecVideoTrack(MediaStreamTrack):
    """Outbound video: the codec's reconstructions, released at the pace of their input's pts."""

    kind = "video"

    def __init__(self, stats: VideoStats, max_backlog: int = 2, catch_up: float = 0.75, max_gap_s: float = 1.0):
        super().__init__()
        self.stats = stats
        self.max_backlog = max_backlog
        self.catch_up = catch_up  # the least spacing of two frames, as a fraction of their pts' spacing
        self.max_gap_s = max_gap_s  # a pts gap beyond this (the camera paused, the pts jumped) is not waited for
        self._frames: deque[av.VideoFrame] = deque()
        self._ready = asyncio.Event()
        self._last: tuple[float, float] | None = None  # (monotonic time, pts in s) of the last frame released

    def push(self, frame: av.VideoFrame) -> None:
        if len(self._frames) >= self.max_backlog:
            self._frames.popleft()
            self.stats.dropped_out += 1
        self._frames.append(frame)
        self._ready.set()

    async def recv(self) -> av.VideoFrame:
        while not self._frames:
            if self.readyState != "live":
                raise MediaStreamError
            self._ready.clear()
            await self._ready.wait()
        if self.readyState != "live":
            raise MediaStreamError
        frame = self._frames.popleft()
        assert frame.pts is not None and frame.time_base is not None  # stamped by `show` before it is pushed
        await self._pace(float(frame.pts * frame.time_base))
        return frame

    async def _pace(self, t: float) -> None:
        if self._last is not None:
            gap = t - self._last[1]
            if 0 < gap <= self.max_gap_s:
                wait = self._last[0] + gap * self.catch_up - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
        self._last = (time.monotonic(), t)

    def stop(self) -> None:
        super().stop()
        self._ready.set()  # wake a waiting recv, which then raises MediaStreamError


class CameraEcho:
    """One peer's camera: frames in from its track to the session's video pipeline, reconstructions out to `track`.

    `show` is the sink of the session's video."""

    def __init__(self, stats: VideoStats):
        self.track = CodecVideoTrack(stats)
        self._t0 = time.monotonic()

    async def pump(self, camera: MediaStreamTrack, session: Session) -> None:
        """Camera frames -> the session, until the track ends. Every frame is received, used or not: aiortc queues
        decoded frames without bound for a track nobody reads."""
        refused = False
        while True:
            try:
                frame = await camera.recv()
            except MediaStreamError:
                return
            now = time.monotonic()
            ms = int((now - self._t0) * 1000)
            timing = (frame.pts, frame.time_base) if frame.pts is not None and frame.time_base else (ms, MS)
            item = VideoIn(cast(av.VideoFrame, frame).to_ndarray(format="rgb24"), None, ms & 0xFFFFFFFF, now, timing)
            try:
                await session.video.feed(item, session.hello)
                refused = False
            except ProtocolError as e:  # a config message switched the session to chat: say so once, keep reading
                if not refused:
                    await session.send_error(e.code, f"camera frames ignored: {e.message}")
                refused = True
            except PipelineFailed:
                return  # the session has reported the failure and ends

    async def show(self, out: VideoOut) -> None:
        rgb = out.rgb
        if rgb is None:  # a config message took rgb out of video_output: nothing to show
            return
        h, w = rgb.shape[0] - rgb.shape[0] % 2, rgb.shape[1] - rgb.shape[1] % 2
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb[:h, :w]), format="rgb24")
        frame.pts, frame.time_base = out.meta
        self.track.push(frame)
