"""A client sending faster than real time (hello `realtime: false`, `client --fast`) is slowed by the server, never
dropped: every sample comes back. A live client sending too fast still has its oldest audio dropped, and counted."""

from __future__ import annotations

import asyncio

import numpy as np

from talkstream.client import report, stream_audio
from talkstream.services.app import ServerConfig, TalkstreamServer


def run_on_server(models, *streams):
    """Each stream (url -> coroutine) in turn against one server on loopback."""
    codec, vad = models

    async def main():
        async with TalkstreamServer(ServerConfig(port=0, thinker="echo"), codec=codec, vad=vad) as srv:
            return [await stream(srv.url) for stream in streams]

    return asyncio.run(asyncio.wait_for(main(), 120))


def test_a_fast_client_gets_every_sample_back(models, speech):
    audio = np.tile(speech, 2)  # 7.3 s, sent as fast as the socket takes it
    (r,) = run_on_server(models, lambda url: stream_audio(url, audio, 24_000, realtime=False))
    assert r.ready["realtime"] is False and r.summary is not None and not r.errors()
    assert r.summary["drops"] == 0 and r.summary["frames_in"] == -(-audio.size // 480)
    assert abs(r.pcm.size - audio.size) <= models[0].frame_size  # every sample, within one codec frame
    print(f"fast: {audio.size / 24_000:.2f} s in, {r.pcm.size / 24_000:.2f} s back in {r.elapsed_s:.2f} s")
    assert "nothing" in report(r, 24_000, audio.size / 24_000)[-1]  # lost: nothing


def test_a_live_client_sending_too_fast_still_has_its_oldest_audio_dropped(models, speech):
    audio = np.tile(speech, 2)
    (r,) = run_on_server(models, lambda url: stream_audio(url, audio, 24_000, realtime=False,
                                                          extra_hello={"realtime": True}))
    assert r.ready["realtime"] is True and r.summary is not None
    # As before: live audio the server cannot keep up with is dropped oldest-first (late audio is worth less), and
    # counted; every packet was still read.
    assert r.summary["drops"] > 0 and r.pcm.size < audio.size and r.summary["frames_in"] == -(-audio.size // 480)
