"""A WebSocket chat client without echo cancelling, over a real server on loopback: it plays every reply back into
its microphone (100 ms later, -10 dB), in real time. The server cancels that echo, so no reply interrupts itself;
the user's own voice over a reply still does."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
from websockets.asyncio.client import connect

from talkstream.audio_io import load_audio
from talkstream.checkpoint import load_audio_codec
from talkstream.data import SAMPLE_WAV
from talkstream.data.voices import Voice, synthesize
from talkstream.protocol import parse_binary, pcm_frame
from talkstream.services.app import ServerConfig, TalkstreamServer
from talkstream.streaming.vad import SileroVAD

SR, FRAME = 24_000, 480  # the client's rate; 20 ms frames
DELAY, GAIN = int(0.1 * SR), 10 ** (-10 / 20)  # what the client's room does to what it plays


@pytest.fixture(scope="module")
def models():
    return load_audio_codec(), SileroVAD()


async def speaker_into_mic(url: str, script: np.ndarray, hello: dict) -> tuple[dict, list[dict]]:
    """Send `script` (the user's voice) in real time with the client's own playback mixed in: received audio plays
    as it comes, and the microphone hears it DELAY later at GAIN. -> the ready event, the events (with `at`: the
    script's second when it came)."""
    events: list[dict] = []
    queued: list[np.ndarray] = []  # received, not yet played
    played = np.zeros(DELAY + script.size, np.float32)
    async with connect(url, max_size=2**22) as ws:
        await ws.send(json.dumps({"type": "hello", "version": 1, "mode": "chat", "sample_rate": SR, **hello}))
        ready = json.loads(await ws.recv())
        loop = asyncio.get_running_loop()
        t0 = loop.time()

        async def receive():
            async for msg in ws:
                if isinstance(msg, str):
                    events.append({**json.loads(msg), "at": loop.time() - t0})
                else:
                    queued.append(parse_binary(msg).pcm())

        receiving = asyncio.create_task(receive())
        for i in range(script.size // FRAME):
            await asyncio.sleep(max(0.0, t0 + i * FRAME / SR - loop.time()))
            pending = np.concatenate(queued) if queued else np.zeros(0, np.float32)
            out = pending[:FRAME]  # the speaker plays the next 20 ms
            queued[:] = [pending[FRAME:]] if pending.size > FRAME else []
            played[DELAY + i * FRAME : DELAY + i * FRAME + out.size] = out
            mic = script[i * FRAME : (i + 1) * FRAME] + GAIN * played[i * FRAME : (i + 1) * FRAME]
            await ws.send(pcm_frame(mic, i, 1000 + i * 20))
        await ws.send(json.dumps({"type": "end"}))
        await asyncio.wait_for(receiving, 30)
    return ready, events


@pytest.mark.slow  # 20 s; the canceller itself is tested fast in tests/streaming/test_echo_cancel.py
def test_a_reply_played_into_the_microphone_does_not_interrupt_itself(models):
    """Two turns, each answered (the echo thinker says them back) and played into the microphone; then, during the
    second answer, the user speaks over it in another voice: that, and only that, interrupts."""
    question = load_audio(SAMPLE_WAV, SR)[: 2 * SR]  # 2 s of the sample sentence
    barge = synthesize(Voice("espeak", "en-gb"), "Wait, stop, I meant Tuesday.")

    def silence(seconds: float) -> np.ndarray:
        return np.zeros(int(seconds * SR), np.float32)

    # the first answer plays in the 3.5 s after question 1; the user cuts into the second 1.2 s after question 2
    before_cut = [silence(0.5), question, silence(3.5), question, silence(1.2)]
    cut_in_s = sum(p.size for p in before_cut) / SR
    script = np.concatenate([*before_cut, barge, silence(2.0)])

    async def main():
        codec, vad = models
        config = ServerConfig(port=0, thinker="echo")
        async with TalkstreamServer(config, codec=codec, vad=vad) as srv:
            async with connect(srv.url) as ws:  # a client that cancels its own echo gets no server-side cancelling
                await ws.send(json.dumps({"type": "hello", "version": 1, "mode": "chat", "echo_cancelled": True}))
                cancels_itself = json.loads(await ws.recv())
            return cancels_itself, *await speaker_into_mic(srv.url, script, {})

    cancels_itself, ready, events = asyncio.run(asyncio.wait_for(main(), 120))
    assert cancels_itself["echo_cancel"] is False
    assert ready["echo_cancel"] is True  # a WebSocket client that did not say it cancels its echo
    replies = [(e["state"], round(e["at"], 2)) for e in events if e["type"] == "reply"]
    starts = [round(e["at"], 2) for e in events if e["type"] == "vad" and e["state"] == "start"]
    interrupted = [at for state, at in replies if state == "interrupted"]
    assert [s for s, _ in replies].count("start") == 3, replies  # the cut-in is a turn too, answered
    assert len(interrupted) == 1 and cut_in_s < interrupted[0] < cut_in_s + 1.0, (replies, starts, cut_in_s)
    assert len(starts) == 3, starts  # the two questions and the cut-in: no answer's echo was heard
