"""Chat replies over WebRTC against real aiortc peers: a reply is as long as the same reply over WebSocket (nothing
cut by the outbound track), and the user speaking over a reply cuts it (barge-in) with a `reply interrupted` event.

The answerer is a stand-in that says the same fixed reply to every turn: a steady tone put through the codec, audible
from its first frame to its last, so the length of what came back can be read off the received audio. (Codec v3, a
vocoder trained on speech, renders a steady tone about 20 dB quieter than it went in, RMS about 0.015 after Opus;
the silence around it is digital zero, so the threshold sits well between the two.)
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
import torch

from talkstream.audio_io import load_audio
from talkstream.bench.webrtc import FRAME, RATE, rtc_session
from talkstream.chat.protocol import ReplyFormat
from talkstream.client import stream_audio
from talkstream.data import SAMPLE_WAV
from talkstream.services.app import ServerConfig
from tests.chat.stubs import StubModel

pytestmark = pytest.mark.slow  # docs/tests.md: the fast tier is -m 'not slow'

REPLY_S = 3.0
BLOCK = RATE // 200  # 5 ms


class FixedReply(StubModel):
    """Answers every turn with the same codec tokens, in blocks of 6 frames, as a model streams its reply."""

    def __init__(self, tokens: torch.Tensor, block_frames: int = 6):
        super().__init__()
        self.tokens, self.block_frames = tokens, block_frames  # long [1, K, F]
        self.reply_format = ReplyFormat(num_codebooks=tokens.shape[1])

    async def respond(self, turn, video=None):
        for i in range(0, self.tokens.shape[-1], self.block_frames):
            yield self.tokens[..., i : i + self.block_frames]
            await asyncio.sleep(0)


def tone(seconds: float, rate: int) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.25 * np.sin(2 * np.pi * 220 * t) + 0.1 * np.sin(2 * np.pi * 660 * t)).astype(np.float32)


def loud_runs(pcm: np.ndarray, rate: int, threshold: float = 0.004, gap_s: float = 0.1) -> list[tuple[int, int]]:
    """[start, end) sample spans (at 48 kHz) of audio louder than `threshold` in 5 ms blocks, a run ending at a gap
    of `gap_s` or more."""
    if rate != RATE:
        pcm = np.interp(np.arange(int(pcm.size * RATE / rate)) * rate / RATE, np.arange(pcm.size), pcm)
    n = pcm.size // BLOCK
    level = np.sqrt((pcm[: n * BLOCK].reshape(n, BLOCK) ** 2).mean(1))
    loud = np.flatnonzero(level > threshold)
    runs: list[tuple[int, int]] = []
    for b in loud:
        if runs and b * BLOCK - runs[-1][1] < gap_s * RATE:
            runs[-1] = (runs[-1][0], (b + 1) * BLOCK)
        else:
            runs.append((b * BLOCK, (b + 1) * BLOCK))
    return runs


@pytest.fixture(scope="module")
def reply(rtc_models) -> FixedReply:
    codec = rtc_models[0]
    with torch.no_grad():
        tokens = codec.encode(torch.from_numpy(tone(REPLY_S, codec.sample_rate))[None, None])
    return FixedReply(tokens)


@pytest.fixture(scope="module")
def server(start_server, reply):
    st = start_server(ServerConfig(port=0, http_port=0, max_sessions=4), reply)
    yield st
    st.stop()


@pytest.fixture(scope="module")
def speech48():
    return load_audio(SAMPLE_WAV, RATE)


def run(coro, timeout=120):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def after_reply_end(wait_s: float, n: int = 1):
    """An `until` for rtc_session: the n-th reply's last tokens were generated (`reply end`; it comes as soon as
    they are, before they have played), and `wait_s` has passed for it to play."""
    ended: list[float] = []

    def done(events: list[dict]) -> bool:
        if not ended and sum(e["type"] == "reply" and e["state"] == "end" for e in events) >= n:
            ended.append(time.monotonic())
        return bool(ended) and time.monotonic() - ended[0] > wait_s

    return done


def test_a_reply_over_webrtc_is_as_long_as_over_websocket(server, speech48):
    """The same reply to one spoken turn over each transport: the audio that came back lasts as long, to within one
    20 ms WebRTC frame. (The outbound track once trimmed what it took for a standing backlog: the session's pacer
    keeps a little audio queued ahead on purpose, and that was cut every half second.)"""
    speech = speech48[: int(1.5 * RATE)]
    signal = np.concatenate([speech, np.zeros(int(12 * RATE), np.float32)])
    r = run(rtc_session(server.http_url, signal, 15.0, mode="chat", until=after_reply_end(REPLY_S + 1.0)))
    assert not r.of_type("error"), r.events
    assert [e["state"] for e in r.of_type("reply")][:2] == ["start", "end"], r.events
    rtc_runs = loud_runs(r.pcm, RATE)

    speech24 = load_audio(SAMPLE_WAV, 24_000)[: int(1.5 * 24_000)]
    audio24 = np.concatenate([speech24, np.zeros(24_000, np.float32)])
    w = run(stream_audio(server.srv.url, audio24, 24_000, mode="chat", realtime=True, tail_s=1.0))
    assert not w.errors(), w.events
    ws_runs = loud_runs(w.pcm, 24_000)

    assert len(rtc_runs) == len(ws_runs) == 1, (rtc_runs, ws_runs)  # one reply, unbroken
    rtc_len, ws_len = (e - s for s, e in (rtc_runs[0], ws_runs[0]))
    print(f"\nreply: WebRTC {rtc_len / RATE:.3f} s, WebSocket {ws_len / RATE:.3f} s (tone {REPLY_S:.1f} s)")
    assert abs(rtc_len - ws_len) <= FRAME, (rtc_len / RATE, ws_len / RATE)
    assert ws_len > (REPLY_S - 0.1) * RATE


def test_barge_in_over_webrtc_cuts_the_reply(server, speech48):
    """Speak, pause (the reply starts playing), speak again over it: a `reply interrupted` event comes after the
    user's voice was heard, and the reply's audio stops well short of its full length."""
    first = speech48[: int(1.5 * RATE)]
    again = speech48[int(1.5 * RATE) : int(3.0 * RATE)]
    gap = np.zeros(int(1.2 * RATE), np.float32)  # the turn ends after 0.48 s of silence; the reply starts in this gap
    signal = np.concatenate([first, gap, again, np.zeros(int(10 * RATE), np.float32)])

    # The first reply's `end` comes before it is cut (its tokens are all made at once), so wait for the second's.
    r = run(rtc_session(server.http_url, signal, 20.0, mode="chat", until=after_reply_end(REPLY_S + 1.0, n=2)))
    kinds = [(e["type"], e.get("state")) for e in r.events if e["type"] in ("vad", "reply")]
    assert ("reply", "interrupted") in kinds, kinds
    i = kinds.index(("reply", "interrupted"))
    assert ("vad", "start") in kinds[:i] and kinds[i - 1] == ("vad", "start"), kinds  # the user's voice cut it
    assert kinds.count(("reply", "start")) == 2, kinds  # and the second turn was answered
    runs = loud_runs(r.pcm, RATE)
    assert len(runs) == 2, runs  # the cut reply, then the whole second one
    cut, whole = (e - s for s, e in runs)
    print(f"\nbarge-in: the first reply played {cut / RATE:.3f} s of {whole / RATE:.3f} s")
    assert cut < whole - 0.5 * RATE, (cut / RATE, whole / RATE)
    assert abs(whole - REPLY_S * RATE) <= FRAME, whole / RATE  # the reply after it played whole
