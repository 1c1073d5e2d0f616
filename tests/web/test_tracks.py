"""The WebRTC transport's media pieces without a network: the paced outbound tracks and the microphone downmix."""

from __future__ import annotations

import asyncio
import time
from fractions import Fraction

import av
import numpy as np
import pytest
from aiortc.mediastreams import MediaStreamError

from talkstream.services.video_track import CodecVideoTrack
from talkstream.services.webrtc import FRAME, RATE, OpusPacedAudioTrack, PacedAudioTrack, TrackPacer, mono_s16
from talkstream.streaming.video import VideoStats


def test_outbound_track_paces_keeps_pts_and_fills_gaps_with_silence():
    ramp = np.arange(3 * FRAME // 2, dtype=np.int16)  # 30 ms, then nothing

    async def main():
        track = PacedAudioTrack()
        track.push(ramp, arrived=time.monotonic())
        t0 = time.monotonic()
        frames = [await track.recv() for _ in range(5)]
        return track, frames, time.monotonic() - t0

    track, frames, took = asyncio.run(main())
    assert [f.pts for f in frames] == [i * FRAME for i in range(5)]
    assert all(f.sample_rate == RATE and f.samples == FRAME for f in frames)
    out = np.concatenate([f.to_ndarray().reshape(-1) for f in frames])
    assert np.array_equal(out[: ramp.size], ramp) and not out[ramp.size :].any()
    assert took >= 0.07  # four 20 ms waits after the first frame, not a burst (a busy machine is only slower)
    assert len(track.latencies) == 1 and track.sent_samples == ramp.size


def test_the_served_track_sends_its_own_mono_opus_packets_with_the_frames_times():
    """What aiortc gets from the session's track: one Opus packet per 20 ms frame, stamped with the frame's pts at
    48 kHz (aiortc's RTP timestamp), mono, and decoding back to the pushed speech-band sweep (with Opus's delay)."""
    t = np.arange(RATE // 4) / RATE  # 250 ms (within the live buffer) sweeping 200 Hz -> 1.1 kHz: no period to slip by
    tone = (8000 * np.sin(2 * np.pi * (200 * t + 1800 * t * t))).astype(np.int16)

    async def main():
        track = OpusPacedAudioTrack()
        track.push(tone, arrived=time.monotonic())
        return [await track.recv() for _ in range(30)]  # 600 ms: the sweep, then silence

    packets = asyncio.run(main())
    assert all(isinstance(p, av.Packet) for p in packets)
    assert [p.pts for p in packets] == [i * FRAME for i in range(30)]
    assert all(p.time_base == Fraction(1, RATE) for p in packets)
    assert all(bytes(p)[0] & 0x04 == 0 for p in packets)  # the TOC byte's stereo flag is clear: mono
    decoder = av.CodecContext.create("libopus", "r")
    decoder.sample_rate, decoder.layout, decoder.format = RATE, "mono", "s16"
    out = np.concatenate([f.to_ndarray().reshape(-1) for p in packets for f in decoder.decode(p)]).astype(float)
    assert out.size == 30 * FRAME
    want = tone.astype(float)
    lag = max(range(int(0.02 * RATE)), key=lambda k: np.corrcoef(out[k : k + want.size], want)[0, 1])
    assert np.corrcoef(out[lag : lag + want.size], want)[0, 1] > 0.9  # Opus's own delay is a few ms
    assert np.abs(out[-5 * FRAME :]).max() < 50  # silence after the sweep


def test_outbound_track_trims_a_standing_backlog():
    async def main():
        track = PacedAudioTrack(slack_s=0.01)
        track.push(np.ones(int(0.2 * RATE), np.int16))  # a burst left 200 ms waiting
        for _ in range(26):
            await track.recv()
            track.push(np.ones(FRAME, np.int16))  # then audio at the rate it leaves
        return track

    track = asyncio.run(main())
    assert track.dropped_samples > 0.1 * RATE  # the backlog went at the half-second check
    assert track._buffered <= 0.03 * RATE


def test_a_reply_paced_by_the_track_is_never_trimmed_and_barge_in_drops_its_rest():
    """One pacer per outbound stream: a reply metered by the track's own clock (TrackPacer) comes out whole, sample
    for sample, though the track keeps a little of it queued all along (which the live backlog trim would cut); the
    pacer's reset (barge-in) drops what is still queued."""
    reply = (np.arange(int(1.2 * RATE)) % 30_000 + 1).astype(np.int16)  # 1.2 s, no zero sample
    chunk = int(0.08 * RATE)  # 80 ms blocks, as a reply is decoded

    async def main():
        track = PacedAudioTrack(slack_s=0.01)
        pacer, frames = TrackPacer(track), []

        async def play():
            while True:
                frames.append((await track.recv()).to_ndarray().reshape(-1))

        player = asyncio.ensure_future(play())
        for i in range(0, reply.size, chunk):
            await pacer.wait(chunk / RATE)
            track.push(reply[i : i + chunk], paced=True)
        queued = pacer.playhead is not None and track.paced_s > 0
        while track.paced_s:
            await asyncio.sleep(0.02)
        # A second reply, cut by barge-in at once: what the track held goes, and nothing more is played of it.
        track.push(reply[:chunk], paced=True)
        pacer.reset()
        cut = track.paced_s == 0 and pacer.playhead is None
        player.cancel()
        return track, np.concatenate(frames), queued, cut

    track, out, queued, cut = asyncio.run(main())
    assert queued and cut
    assert track.dropped_samples == 0
    assert np.array_equal(out[out != 0], reply)


def test_microphone_frames_are_downmixed_without_a_resampler():
    stereo = np.array([[100, 300, -5, 7, 32767, 32767]], np.int16)  # packed L, R as Opus decodes
    frame = av.AudioFrame.from_ndarray(stereo, format="s16", layout="stereo")
    frame.sample_rate = RATE
    assert mono_s16(frame, None)[0].tolist() == [200, 1, 32767]
    # Anything else (another rate, planar float) goes through the resampler to 48 kHz mono s16.
    other = av.AudioFrame.from_ndarray(np.zeros((1, 441), np.float32), format="flt", layout="mono")
    other.sample_rate, other.pts = 44_100, 0
    out = mono_s16(other, av.AudioResampler(format="s16", layout="mono", rate=RATE))
    assert all(x.dtype == np.int16 for x in out)


def test_video_track_keeps_pts_spaces_bursts_and_bounds_its_backlog():
    def frame(i: int) -> av.VideoFrame:
        f = av.VideoFrame(16, 16, "rgb24")
        f.pts, f.time_base = i * 3600, Fraction(1, 90_000)  # 25 fps
        return f

    async def main():
        stats = VideoStats()
        track = CodecVideoTrack(stats, max_backlog=2)
        for i in range(4):  # four frames at once: the two oldest go
            track.push(frame(i))
        t0 = time.monotonic()
        first, second = await track.recv(), await track.recv()
        spacing = time.monotonic() - t0
        waiting = asyncio.ensure_future(track.recv())  # nothing left: it waits, until the track stops
        await asyncio.sleep(0.01)
        track.stop()
        with pytest.raises(MediaStreamError):
            await waiting
        return stats, (first.pts, second.pts), spacing

    stats, pts, spacing = asyncio.run(main())
    assert stats.dropped_out == 2 and pts == (7200, 10800)
    assert spacing >= 0.75 * 0.040 - 0.002  # a burst leaves no faster than 4/3 of the frames' own rate


def test_the_served_track_falls_back_to_aiortc_encoding_rather_than_going_silent(caplog):
    """An encoder that gives no packet for a frame (never seen) must not end the stream: aiortc gets the frame."""

    class Silent:
        def encode(self, frame):
            return []

    async def main():
        track = OpusPacedAudioTrack()
        track.encoder = Silent()
        track.push(np.ones(FRAME, np.int16))
        return await track.recv()

    out = asyncio.run(main())
    assert isinstance(out, av.AudioFrame) and out.samples == FRAME
    assert "aiortc encodes this one" in caplog.text
