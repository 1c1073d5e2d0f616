"""One session's video, beside its audio: RGB24 frames or video tokens in, tokens and/or reconstructions out.

The pipeline (one `VideoCodecStage`, talkstream/streaming/video.py) is built at the first video frame, so a session
without video runs exactly as it did before video existed; a config change stops it and the next frame builds it
with the new settings. In codec mode, output goes to the transport as `VideoOut` (the WebSocket makes wire frames of
it, WebRTC shows it on its outbound video track). In chat mode the camera is what the Thinker sees: the
tokens of the last `SEEN_SECONDS` are kept with their arrival times, and `seen_during` hands a turn the frames of
its time span (at the codec's frame rate). `stats` lives as long as the session.
"""

from __future__ import annotations

import asyncio
import bisect
import time
from collections import deque
from collections.abc import Awaitable, Callable

import torch

from talkstream.protocol import (
    FLAG_KEY,
    KIND_RGB24,
    BinaryFrame,
    Hello,
    ProtocolError,
)
from talkstream.streaming.metrics import Metrics
from talkstream.streaming.pipeline import Pipeline
from talkstream.streaming.video import KEY_INTERVAL, VideoCodecStage, VideoIn, VideoOut, VideoStats

SEEN_SECONDS = 30.0  # chat mode: how much of the camera a turn can look back on (the longest turn)


class SessionVideo:
    def __init__(
        self,
        codec,
        metrics: Metrics | None,
        deliver: Callable[[VideoOut], Awaitable[None]],
        on_failure: Callable[[str], Awaitable[None]],
    ):
        """codec: a VideoCodec, or None (video frames are refused). deliver: codec mode's output to the transport
        (the WebSocket's wire frames, WebRTC's outbound video track). on_failure:
        called with a message when the pipeline fails (the session reports it and ends)."""
        self.codec, self.metrics = codec, metrics
        self._deliver, self._on_failure = deliver, on_failure
        self.stats = VideoStats()
        self.pipeline: Pipeline | None = None
        self._sender: asyncio.Task | None = None
        self._refusing = False  # `end` or close: frames that still arrive are ignored (the rest drains)
        self.seen: deque[tuple[float, torch.Tensor]] | None = None  # chat mode: (arrival time, tokens) per frame

    def ready_fields(self, h: Hello) -> dict:
        v = self.codec
        if v is None:
            return {}
        return {
            "video_input": h.video_input,
            "video_output": list(h.video_output),
            "video_codec": {
                "codec_id": v.cfg.codec_id,
                "frame_size": list(v.frame_size),
                "fps": v.fps,
                "tokens_per_frame": v.num_codebooks,
                "codebook_size": v.codebook_size,
                "key_interval": KEY_INTERVAL,
            },
        }

    def stats_fields(self) -> dict:
        return {"video": self.stats.summary()} if self.stats.frames_in else {}

    def _check(self, h: Hello | None) -> Hello:
        if h is None:
            raise ProtocolError("not_ready", "video frame before hello; it was dropped")
        if self.codec is None:
            raise ProtocolError("bad_header", "this server has no video codec; video frames are refused")
        return h

    async def on_frame(self, frame: BinaryFrame, h: Hello | None) -> None:
        """A video binary frame (kind 3 or 4) from the wire."""
        self._check(h)
        now = time.monotonic()
        if frame.kind == KIND_RGB24:
            await self.feed(VideoIn(frame.rgb(self.codec.frame_size), None, frame.timestamp, now), h)
        else:
            key = bool(frame.flags & FLAG_KEY)  # the state restarts before the message's first frame
            for i, tokens in enumerate(frame.video_tokens()):
                await self.feed(VideoIn(None, tokens, frame.timestamp, now, key=key and i == 0), h)

    async def feed(self, item: VideoIn, h: Hello | None) -> None:
        """One frame. RGB is live: when the codec is behind, the oldest frame waiting is dropped (counted) rather
        than let a backlog grow; tokens are never dropped (this waits instead)."""
        h = self._check(h)
        if (item.rgb is not None) != (h.video_input == "rgb"):
            raise ProtocolError(
                "bad_header", f"this session takes video_input {h.video_input!r}; set video_input in hello or config"
            )
        if self._refusing:
            return  # (fed after `end`, a frame could evict the end-of-stream marker from the full one-slot inbox)
        if h.mode == "chat" and item.tokens is not None:  # tokens are what the Thinker reads: nothing to code
            self.seen = self.seen if self.seen is not None else deque(maxlen=round(SEEN_SECONDS * self.codec.fps * 2))
            self.stats.frames_in += 1
            self.seen.append((item.arrived, torch.from_numpy(item.tokens)))
            return
        if self.pipeline is None:
            chat = h.mode == "chat"  # the Thinker reads tokens; nothing is decoded or sent back
            self.seen = deque(maxlen=round(SEEN_SECONDS * self.codec.fps * 2)) if chat else None
            stage = VideoCodecStage(self.codec, self.stats, chat or "tokens" in h.video_output,
                                    not chat and "rgb" in h.video_output)
            # One frame may wait while another is coded: any more and what comes back lags the camera for good.
            self.pipeline = Pipeline([stage], self.metrics, live_queue_size=1, live=h.video_input == "rgb")
            self.pipeline.start()
            self._sender = asyncio.ensure_future(self._send_outputs(self.pipeline))
        self.stats.frames_in += 1
        if self.pipeline.live:
            before = self.pipeline.dropped
            self.pipeline.feed(item)
            self.stats.drops += self.pipeline.dropped - before
        else:
            await self.pipeline.put(item)

    async def _send_outputs(self, pipeline: Pipeline) -> None:
        while (out := await pipeline.get()) is not None:
            if self.seen is not None:
                if out.tokens is not None:
                    self.seen.append((out.arrived, torch.from_numpy(out.tokens)))
            else:
                await self._deliver(out)
            self.stats.frames_out += 1
        if pipeline.error is not None:
            await self._on_failure(f"video stream stopped: {pipeline.error}")

    def seen_during(self, start: float, end: float) -> torch.Tensor | None:
        """Chat mode: the camera between two monotonic times, as video tokens [T, N] at the codec's frame rate (each
        slot takes the newest frame that had arrived by then), or None when nothing was seen in that span."""
        if not self.seen or end <= start:
            return None
        times = [t for t, _ in self.seen]
        first = bisect.bisect_left(times, start)
        if first == len(times) or times[first] > end:
            return None
        slots = max(1, round((end - start) * self.codec.fps))
        picked = []
        for k in range(slots):
            i = bisect.bisect_right(times, start + k / self.codec.fps) - 1
            picked.append(self.seen[max(i, first)][1])  # before the first frame of the span: that first frame
        return torch.stack(picked)

    async def finish(self) -> None:
        """The client sent `end`: code and send what is queued."""
        self._refusing = True
        if self.pipeline is not None:
            assert self._sender is not None  # started with the pipeline
            await self.pipeline.end()
            await asyncio.gather(self._sender, return_exceptions=True)

    async def stop(self) -> None:
        """Drop what is queued and stop (a config change, the session's end)."""
        if self.pipeline is not None:
            await self.pipeline.stop()
        if self._sender is not None:
            self._sender.cancel()
            await asyncio.gather(self._sender, return_exceptions=True)
        self.pipeline = self._sender = None

    async def close(self) -> None:
        """The session is over: stop, and build nothing for frames that still arrive."""
        self._refusing = True
        await self.stop()
