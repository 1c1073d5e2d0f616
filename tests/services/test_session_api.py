"""The typed Session API with no transport at all: open with settings, feed audio with timestamps, control text in,
typed media and JSON events out through a sink; no wire frames anywhere."""

from __future__ import annotations

import asyncio
import json

import numpy as np

from talkstream.chat import EchoResponder
from talkstream.protocol import Hello
from talkstream.services.session import Limits, Session
from talkstream.streaming.codec_engine import CodecEngine
from talkstream.streaming.stages import MediaOut, TurnCollector
from talkstream.streaming.vad import SileroVAD
from tests.conftest import speechlike


class Sink:
    """Collects what a session sends (its lists are named apart from the Sink protocol's methods)."""

    def __init__(self):
        self.outs: list[MediaOut] = []
        self.events_: list[dict] = []

    async def media(self, out: MediaOut) -> None:
        self.outs.append(out)

    async def event(self, text: str) -> None:
        self.events_.append(json.loads(text))

    async def video(self, out) -> None:
        raise AssertionError("no video was sent")


def started_session(codec, sink, vad=None) -> tuple[CodecEngine, Session]:
    """A running codec engine and a session on it with the echo responder and default limits."""
    engine = CodecEngine(codec)
    engine.start()
    return engine, Session(engine, vad or SileroVAD(), EchoResponder(), Limits(), sink)


def test_open_feed_and_control_without_a_transport(tiny_codec):
    sink = Sink()
    audio = speechlike(0.5, 16_000)

    async def main():
        engine, session = started_session(tiny_codec, sink)
        try:
            assert await session.open(Hello(1, "codec", 16_000, 2, output=("pcm", "tokens")))
            for i in range(0, audio.size - 320, 320):  # 20 ms at 16 kHz, timestamps in ms
                assert await session.feed_audio(audio[i : i + 320], timestamp=i // 16)
            assert await session.on_message('{"type": "ping", "t": 3}')
            assert not await session.on_message('{"type": "end"}')  # drained, summary sent, over
        finally:
            await session.close()
            await engine.stop()

    asyncio.run(asyncio.wait_for(main(), 60))
    kinds = [e["type"] for e in sink.events_]
    assert kinds[0] == "ready" and "pong" in kinds and kinds[-1] == "summary"
    assert sink.events_[0]["codebooks"] == 2 and sink.events_[0]["sample_rate"] == 16_000
    assert sink.outs and all(isinstance(o, MediaOut) for o in sink.outs)
    with_tokens = [o for o in sink.outs if o.tokens is not None]
    assert with_tokens and all(o.tokens.shape[0] == 2 for o in with_tokens)
    pcm = np.concatenate([o.pcm for o in sink.outs if o.pcm is not None])
    assert pcm.dtype == np.float32 and abs(pcm.size - audio.size) < 16_000 * 0.1  # at the client's rate
    assert [o.timestamp for o in sink.outs] == sorted(o.timestamp for o in sink.outs)
    assert sink.events_[-1]["frames_in"] == len(range(0, audio.size - 320, 320))


def test_a_refused_open_says_why(tiny_codec):
    sink = Sink()

    async def main():
        engine = CodecEngine(tiny_codec)
        session = Session(engine, SileroVAD(), EchoResponder(), Limits(token="s3cret"), sink)
        opened = await session.open(Hello(1, token="wrong"))
        fed = await session.feed_audio(np.zeros(320, np.float32), 0)
        await session.close()
        return opened, fed

    opened, fed = asyncio.run(main())
    assert not opened and not fed
    assert [e["code"] for e in sink.events_] == ["unauthorized"]


class SlowVAD(SileroVAD):
    """A VAD that takes 60 ms per call and hears speech at once (a loaded VAD thread, made certain)."""

    def step_many(self, items):
        import time

        time.sleep(0.06)
        return super().step_many(items)


class BrokenVAD(SileroVAD):
    def step_many(self, items):
        raise RuntimeError("vad model gone")


def _codec_session(tiny_codec, vad, sink, audio, chunk=320):
    async def main():
        engine, session = started_session(tiny_codec, sink, vad)
        try:
            await session.open(Hello(1, "codec", 16_000, 2, output=("pcm",)))
            for i in range(0, audio.size - chunk, chunk):
                if not await session.feed_audio(audio[i : i + chunk], timestamp=i // 16):
                    break
                await asyncio.sleep(0.02)  # real time
            await session.on_message('{"type": "end"}')
            return list(session.frame_latencies)
        finally:
            await session.close()
            await engine.stop()

    return asyncio.run(asyncio.wait_for(main(), 60))


def test_codec_echo_does_not_wait_for_the_vad_whose_events_still_arrive_before_the_summary(tiny_codec):
    """Codec mode runs the VAD on a branch beside the codec: a VAD slower than real time delays no echo, and its
    events are all sent before the summary."""
    sink = Sink()
    latencies = _codec_session(tiny_codec, SlowVAD(), sink, speechlike(2.0, 16_000))
    kinds = [e["type"] for e in sink.events_]
    assert kinds[-1] == "summary" and "vad" in kinds
    # In front of the codec, 60 ms of VAD per 20 ms packet would put every echo seconds behind.
    assert latencies and float(np.median(latencies)) < 0.3
    assert sink.events_[-1]["stages"]["vad"]["frames_in"] >= 1


def test_a_vad_that_fails_in_codec_mode_ends_the_session_with_an_error(tiny_codec):
    sink = Sink()
    _codec_session(tiny_codec, BrokenVAD(), sink, speechlike(1.0, 16_000))
    errors = [e for e in sink.events_ if e["type"] == "error"]
    assert errors and errors[0]["code"] == "internal" and "voice activity stopped" in errors[0]["message"]


def test_a_chat_turn_collector_whose_flush_fails_ends_the_session_with_an_error(tiny_codec, monkeypatch):
    """The last stage of chat's input pipeline fails at the end of input: `finish` reports it, and does not hang."""

    async def broken_flush(self):
        raise RuntimeError("turn lost")

    monkeypatch.setattr(TurnCollector, "flush", broken_flush)
    sink = Sink()
    audio = speechlike(0.5, 16_000)

    async def main():
        engine, session = started_session(tiny_codec, sink)
        try:
            assert await session.open(Hello(1, "chat", 16_000, 2))
            for i in range(0, audio.size - 320, 320):
                await session.feed_audio(audio[i : i + 320], timestamp=i // 16)
            return await asyncio.wait_for(session.on_message('{"type": "end"}'), 30)  # a hang guard
        finally:
            await session.close()
            await engine.stop()

    assert not asyncio.run(main())  # the session is over
    errors = [e for e in sink.events_ if e["type"] == "error"]
    assert errors and errors[0]["code"] == "internal" and "turn lost" in errors[0]["message"]
