"""Per-turn OpenTelemetry spans (the `otel` extra), seen through the SDK's in-memory exporter on a real server."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from talkstream.audio_io import load_audio
from talkstream.checkpoint import load_audio_codec
from talkstream.client import stream_audio
from talkstream.data import SAMPLE_WAV
from talkstream.services.app import ServerConfig, TalkstreamServer
from talkstream.streaming.vad import SileroVAD

sdk = pytest.importorskip("opentelemetry.sdk.trace")
from opentelemetry import trace  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402

pytestmark = pytest.mark.slow  # docs/tests.md: the fast tier is -m 'not slow'

EXPORTER = InMemorySpanExporter()


@pytest.fixture(scope="module", autouse=True)
def provider():
    current = trace.get_tracer_provider()
    if not isinstance(current, sdk.TracerProvider):  # the global provider can be set once per process
        current = sdk.TracerProvider()
        trace.set_tracer_provider(current)
    current.add_span_processor(SimpleSpanProcessor(EXPORTER))
    yield


def test_each_chat_turn_is_a_span_with_the_moments_that_matter():
    speech = load_audio(SAMPLE_WAV, 24_000)
    gap = np.zeros(24_000, np.float32)
    audio = np.concatenate([gap[:9_000], speech, gap, gap, gap, speech, gap, gap, gap])
    EXPORTER.clear()

    async def run():
        server = TalkstreamServer(ServerConfig(port=0, thinker="echo"), codec=load_audio_codec(), vad=SileroVAD())
        await server.start()
        try:
            return await stream_audio(server.url, audio, 24_000, mode="chat", realtime=False, tail_s=4)
        finally:
            await server.stop()

    r = asyncio.run(asyncio.wait_for(run(), 180))
    turns = [e for e in r.events if e["type"] == "reply" and e["state"] == "start"]
    spans = [s for s in EXPORTER.get_finished_spans() if s.name == "talkstream.turn"]
    assert len(spans) == len(turns) >= 1
    for span in spans:
        names = [e.name for e in span.events]
        assert names[0] == "end_of_turn" and "first_audio" in names, names
        first_audio = next(e for e in span.events if e.name == "first_audio")
        ms = span.attributes["talkstream.first_audio_ms"]
        assert first_audio.attributes["latency_ms"] == ms  # the attribute is the events' distance, in ms
        assert abs(ms - (first_audio.timestamp - span.events[0].timestamp) / 1e6) < 50
        assert span.attributes["talkstream.turn_frames"] > 0
        assert span.end_time is not None  # every span is closed, the last one by the session's close
