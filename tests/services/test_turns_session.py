"""Semantic turn-taking over a real server (WebSocket, real time, the shipped turn heads, echo answers): a pause in
mid-sentence does not end the turn, a complete one ends sooner than silence alone would, a backchannel over the
reply lets it play on, an interruption stops it. Spoken by a held-out voice in sentences never trained on."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from talkstream.client import stream_audio
from talkstream.services.app import ServerConfig, TalkstreamServer

pytestmark = pytest.mark.slow  # real-time streams of several seconds each

RATE = 24_000
VOICE = ("espeak", "en-us+m8")  # an evaluation voice: the heads never trained on it


def spoken(text: str) -> np.ndarray:
    from talkstream.data.voices import Voice, synthesize

    x = synthesize(Voice(*VOICE), text)
    loud = np.flatnonzero(np.abs(x) > 0.01 * np.abs(x).max())
    return x[loud[0] : loud[-1] + 1]


def silence(s: float) -> np.ndarray:
    return np.zeros(int(s * RATE), np.float32)


def chat(models, audio: np.ndarray, turn_end: str, tail_s: float = 3.0):
    codec, vad = models

    async def main():
        async with TalkstreamServer(ServerConfig(port=0, thinker="echo", turn_end="semantic"), codec=codec,
                                    vad=vad) as srv:
            # echo_cancelled: these clients play nothing back (the echo cases are test_echo_session.py's), and the
            # server's AEC3 would take speech that begins in a reply's first second for echo (docs/turns.md)
            return await stream_audio(srv.url, audio, RATE, mode="chat", tail_s=tail_s,
                                      extra_hello={"turn_end": turn_end, "echo_cancelled": True})

    return asyncio.run(asyncio.wait_for(main(), 120))


def kinds(r, *types):
    return [(e["type"], e.get("state") or e.get("kind")) for e in r.events if e["type"] in types]


def test_a_mid_sentence_pause_holds_the_turn_where_silence_cuts_it(models):
    audio = np.concatenate([silence(0.5), spoken("I would like to book a table for"), silence(0.9),
                            spoken("four people at eight o'clock tonight."), silence(2.0)])
    semantic = chat(models, audio, "semantic")
    assert semantic.summary["turns"] == 1, kinds(semantic, "vad", "turn")
    assert ("turn", "held") in kinds(semantic, "turn")
    cut = chat(models, audio, "silence")
    assert cut.summary["turns"] == 2  # silence alone ends the turn at the pause


def test_a_backchannel_lets_the_reply_play_and_an_interruption_stops_it(models):
    question = spoken("Can you tell me how long it takes to get to the coast by train?")
    # The echo answerer plays the question back (about 3 s): speak over it 1 s into the reply.
    during = silence(1.0)
    bc = chat(models, np.concatenate([silence(0.3), question, silence(0.6), during, spoken("Mm-hm."),
                                      silence(4.0)]), "semantic", tail_s=2.0)
    assert ("barge_in", "backchannel") in kinds(bc, "barge_in"), kinds(bc, "vad", "barge_in", "reply")
    assert ("reply", "interrupted") not in kinds(bc, "reply")
    assert bc.summary["turns"] == 1  # the backchannel was not answered
    stop = chat(models, np.concatenate([silence(0.3), question, silence(0.6), during,
                                        spoken("Wait, no, I meant Tuesday."), silence(3.0)]), "semantic", tail_s=4.0)
    assert ("reply", "interrupted") in kinds(stop, "reply")
    assert ("barge_in", "interruption") in kinds(stop, "barge_in")
    assert stop.summary["turns"] == 2  # the interruption is answered
