"""The Thinker hears the user's turn while it is spoken: the collector hands it the turn so far, and the answer at
the end of the turn is the same as hearing the whole turn then, with only the last frames left to read."""

import asyncio
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from talkstream.chat.responder import BuiltinThinker, ChatResponder, Speaker
from talkstream.streaming.stages import CodecOut, TurnCollector
from talkstream.streaming.vad import VADEvent
from tests.models.tiny import tiny_talker, tiny_thinker


def _out(codes, *events):
    return CodecOut(codes, None, 0, 0.0, [VADEvent(kind, 0.0, 0.9) for kind in events])


def test_the_collector_hands_over_each_turn_so_far_while_it_is_spoken():
    seen = []

    async def on_speech(chunks, pcm):
        assert sum(p.size for p in pcm) == 320 * sum(c.shape[-1] for c in chunks)  # the audio beside its codes
        seen.append((chunks, sum(c.shape[-1] for c in chunks)))  # the list itself: ids get reused

    collector = TurnCollector(SimpleNamespace(frame_rate=75.0, frame_size=320), preroll_s=0.04, on_speech=on_speech)

    async def run():
        chunk = torch.zeros(1, 2, 2, dtype=torch.long)
        turns = []
        for events in [(), (), ("start",), (), (), ("end",), (), ("start",), (), ("end",)]:
            turns += await collector.process(_out(chunk, *events))
        return turns

    turns = asyncio.run(run())
    # Pre-roll: whole chunks until 3 frames precede the starting chunk (2 before the first turn, 1 before the second).
    assert [t.shape[-1] for t in turns] == [12, 8]
    assert [t.pcm.size for t in turns] == [12 * 320, 8 * 320]  # each turn carries the audio its codes came from
    first, second = [n for c, n in seen if c is seen[0][0]], [n for c, n in seen if c is seen[-1][0]]
    assert first == [6, 8, 10] and second == [4, 6]  # grows while spoken; the ending chunk comes with the turn
    assert seen[0][0] is not seen[-1][0]  # a new list per turn


def _responder():
    thinker = BuiltinThinker(tiny_thinker(), torch.randn(8, 1024, 16))
    return ChatResponder(thinker, Speaker(tiny_talker(), block_frames=4))


async def _answer(responder, turn):
    return [x if isinstance(x, torch.Tensor) else {k: v for k, v in x.items() if k != "first_packet_ms"}
            async for x in responder.respond(turn)]


def test_hearing_during_the_turn_gives_the_same_answer_with_less_left_to_read():
    torch.manual_seed(3)
    turn = torch.randint(0, 1024, (1, 8, 37))  # not a whole number of Thinker positions: the end is padded
    plain = asyncio.run(_answer(_responder(), turn))

    responder = _responder()
    heard_at_end = []
    original = responder.thinker.finish_hearing
    responder.thinker.finish_hearing = lambda heard, rest: heard_at_end.append(rest.shape[-1]) or original(heard, rest)
    calls = []
    more = responder.thinker.hear_more
    responder.thinker.hear_more = lambda heard, codes: calls.append(codes.shape[-1]) or more(heard, codes)
    chunks = []
    conversation = responder.open_session()

    async def speak_then_answer():
        for start in range(0, 33, 3):  # the collector's list grows 3 frames at a time; the last 4 come at the end
            chunks.append(turn[..., start : min(start + 3, 33)])
            await conversation.listen_ahead(chunks)
        return await _answer(conversation, turn)

    ahead = asyncio.run(speak_then_answer())
    assert heard_at_end == [4] and conversation.heard_ahead == responder.heard_ahead == 1
    # Read only when a whole Thinker position (4 frames) is there: 8 worker calls for 11 chunks, no frame skipped.
    assert calls == [6, 3, 3, 6, 3, 3, 6, 3] and sum(calls) == 33
    assert len(ahead) == len(plain)
    for a, b in zip(ahead, plain, strict=True):
        assert torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b


def test_a_turn_that_does_not_begin_with_what_was_heard_is_heard_from_the_start():
    torch.manual_seed(4)
    conversation = _responder().open_session()
    other = [torch.randint(0, 1024, (1, 8, 12))]
    turn = torch.randint(0, 1024, (1, 8, 20))
    asyncio.run(conversation.listen_ahead(other))  # the next turn already began while this one is answered
    plain = asyncio.run(_answer(_responder(), turn))
    got = asyncio.run(_answer(conversation, turn))
    assert conversation.heard_ahead == 0 and len(got) == len(plain)
    assert all(torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b for a, b in zip(got, plain, strict=True))
    assert conversation._ahead is not None  # the next turn's early hearing is kept for it


def test_each_conversation_hears_its_own_turn():
    """Two users speaking at once over one chat model: each conversation's early hearing is its own."""
    torch.manual_seed(5)
    responder = _responder()
    a, b = responder.open_session(), responder.open_session()
    turn_a, turn_b = torch.randint(0, 1024, (1, 8, 24)), torch.randint(0, 1024, (1, 8, 24))

    async def both_speak():
        chunks_a, chunks_b = [], []
        for start in range(0, 24, 4):  # interleaved, as two live sessions would be
            chunks_a.append(turn_a[..., start : start + 4])
            await a.listen_ahead(chunks_a)
            chunks_b.append(turn_b[..., start : start + 4])
            await b.listen_ahead(chunks_b)
        return await _answer(a, turn_a), await _answer(b, turn_b)

    got_a, got_b = asyncio.run(both_speak())
    assert a.heard_ahead == b.heard_ahead == 1 and responder.heard_ahead == 2
    for got, turn in ((got_a, turn_a), (got_b, turn_b)):
        plain = asyncio.run(_answer(_responder(), turn))
        assert all(torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y
                   for x, y in zip(got, plain, strict=True))


@pytest.mark.slow
def test_the_server_hears_a_spoken_turn_while_it_is_spoken():
    """A real session on loopback: the collector feeds the responder during the turn and the answer uses it."""
    from talkstream.audio_io import load_audio
    from talkstream.checkpoint import load_audio_codec
    from talkstream.client import stream_audio
    from talkstream.data import SAMPLE_WAV
    from talkstream.services.app import ServerConfig, TalkstreamServer
    from talkstream.streaming.vad import SileroVAD

    codec = load_audio_codec()
    responder = ChatResponder(BuiltinThinker(tiny_thinker(), torch.randn(8, 1024, 16)),
                              Speaker(tiny_talker(), block_frames=4))
    speech = load_audio(SAMPLE_WAV, 24_000)
    silence = np.zeros(15_000, np.float32)

    async def main():
        async with TalkstreamServer(ServerConfig(port=0), codec=codec, vad=SileroVAD(), responder=responder) as srv:
            return await stream_audio(srv.url, np.concatenate([silence, speech, silence]), 24_000, mode="chat",
                                      realtime=True, tail_s=3)

    r = asyncio.run(asyncio.wait_for(main(), 120))
    assert r.summary["turns"] == 1 and responder.heard_ahead == 1
    assert any(e["type"] == "transcript" for e in r.events)
