"""The camera over WebRTC ("see what the codec sees"), with a real aiortc peer on loopback sending a synthetic video:
frames come back at the codec's scale with their pts, they look like what was sent, and nothing is left behind."""

from __future__ import annotations

import asyncio
import fractions
import json
import time
import urllib.request

import av
import numpy as np
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from talkstream.bench.webrtc import RATE, SignalTrack, post_offer
from talkstream.services.app import ServerConfig
from tests.conftest import moving_pattern, psnr

FPS = 25
TICKS = 90_000 // FPS  # one frame in the 90 kHz clock of WebRTC video


@pytest.fixture(scope="module")
def server(start_server):
    st = start_server(ServerConfig(port=0, http_port=0, max_sessions=4, thinker="echo"))
    yield st
    st.stop()


class PatternTrack(MediaStreamTrack):
    """A camera that films `moving_pattern` at `FPS`, against the clock, with pts in the 90 kHz clock."""

    kind = "video"

    def __init__(self, height: int = 128, width: int = 128):
        super().__init__()
        self.size = (height, width)
        self.sent: list[np.ndarray] = []
        self._start: float | None = None

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        i = len(self.sent)
        if self._start is None:
            self._start = time.monotonic()
        await asyncio.sleep(max(0.0, self._start + i / FPS - time.monotonic()))
        rgb = moving_pattern(i, *self.size)
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
        frame.pts, frame.time_base = i * TICKS, fractions.Fraction(1, 90_000)
        self.sent.append(rgb)
        return frame


async def camera_session(http_url: str, seconds: float, size=(128, 128), mode: str = "codec") -> dict:
    """One peer: silence on the microphone, the pattern on the camera; `end` after `seconds`, then close."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTrack(SignalTrack(np.zeros(int((seconds + 5) * RATE), np.float32)))
    camera = PatternTrack(*size)
    pc.addTrack(camera)
    channel = pc.createDataChannel("events")
    events: list[dict] = []
    channel.on("message", lambda m: events.append(json.loads(m)))
    frames: list[tuple[np.ndarray, int]] = []
    tasks: list[asyncio.Task] = []

    async def receive(track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            frames.append((frame.to_ndarray(format="rgb24"), frame.pts))

    pc.on("track", lambda t: t.kind == "video" and tasks.append(asyncio.ensure_future(receive(t))))
    try:
        await pc.setLocalDescription(await pc.createOffer())
        status, answer = await post_offer(http_url, {"sdp": pc.localDescription.sdp, "type": "offer", "mode": mode})
        assert status == 200, answer
        await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))
        await asyncio.sleep(seconds)
        channel.send(json.dumps({"type": "end"}))
        end = time.monotonic() + 10
        while not any(e["type"] == "summary" for e in events) and time.monotonic() < end:
            await asyncio.sleep(0.05)
    finally:
        await pc.close()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return {"answer": answer, "frames": frames, "sent": camera.sent, "events": events}


def sessions(server) -> int:
    async def count():
        return len(server.srv.sessions)

    end = time.monotonic() + 15
    while (n := server.call(count())) and time.monotonic() < end:
        time.sleep(0.2)
    return n


def test_camera_comes_back_through_the_codec(server):
    async def both():
        return await asyncio.gather(
            camera_session(server.http_url, 4.0), camera_session(server.http_url, 2.5, size=(120, 160))
        )

    square, wide = asyncio.run(asyncio.wait_for(both(), 60))
    frames, sent = square["frames"], square["sent"]
    assert len(frames) >= 10, len(frames)  # at most 100 sent; a busy machine drops some (counted below)
    assert {f.shape for f, _ in frames} == {(128, 128, 3)}  # the codec's size; a 4:3 camera comes back 128x96
    assert {f.shape for f, _ in wide["frames"]} == {(96, 128, 3)} and wide["frames"]
    pts = np.array([p for _, p in frames])
    assert pts[0] == 0 and (np.diff(pts) > 0).all() and (pts % TICKS == 0).all()  # the camera's own pts, kept
    # The pts say which sent frame each one is: find the first one's, and the rest follow from their pts.
    first = int(np.argmax([psnr(frames[0][0], s) for s in sent]))
    index = first + pts // TICKS
    quality = np.array([psnr(f, sent[i]) for (f, _), i in zip(frames, index, strict=True)])
    shifted = np.array([psnr(f, sent[i - 1]) for (f, _), i in zip(frames, index, strict=True) if i > 0])
    print(f"round-trip PSNR: median {np.median(quality):.1f} dB, min {quality.min():.1f} dB "
          f"(one frame off: {np.median(shifted):.1f} dB); {len(frames)}/{len(sent)} frames back")  # fmt: skip
    assert np.median(quality) > 20 and np.median(quality) > np.median(shifted) + 1
    stats = [e["video"] for e in square["events"] if e["type"] == "stats" and "video" in e]
    summary = next(e for e in square["events"] if e["type"] == "summary")
    assert stats and stats[-1]["frames_out"] > 0 and stats[-1]["codec_ms_p50"] > 0
    video = summary["video"]
    print(f"server video: {video}")
    assert video["frames_out"] - video["dropped_out"] >= len(frames)
    stage = summary["stages"]["video_codec"]
    assert stage["frames_in"] == video["frames_out"] and stage["drops"] == video["drops"]
    assert video["frames_in"] == video["frames_out"] + video["drops"]  # every frame was coded or counted
    assert not [e for e in square["events"] if e["type"] == "error"]
    metrics = urllib.request.urlopen(server.metrics_url).read().decode()
    assert 'talkstream_stage_frames_in_total{stage="video_codec"}' in metrics
    assert sessions(server) == 0


def test_chat_mode_takes_the_camera_for_the_thinker(server):
    r = asyncio.run(asyncio.wait_for(camera_session(server.http_url, 1.5, mode="chat"), 30))
    video = [m for m in r["answer"]["sdp"].split("m=")[1:] if m.startswith("video")]
    assert video and "a=recvonly" in video[0]  # the server reads the camera and sends no video back
    summary = next(e for e in r["events"] if e["type"] == "summary")
    assert not r["frames"] and summary["video"]["frames_in"] > 10  # coded to tokens, kept for the Thinker
    assert sessions(server) == 0
