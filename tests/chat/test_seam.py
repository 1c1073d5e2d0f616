"""The chat seam (talkstream.chat.protocol): every shipped chat model opens sessions that are `ChatSession`s, every
shipped Thinker is a `Thinker`, each declares its `ReplyFormat`, and a chat session written against the Protocol
alone (no base class, nothing probed) runs end to end through the server's own session code."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from talkstream.audio_io import load_audio
from talkstream.chat import ChatModel, ChatSession, EchoResponder, ReplyFormat, Thinker
from talkstream.chat.responder import BuiltinThinker, ChatResponder, Speaker
from talkstream.data import SAMPLE_WAV
from talkstream.models.ears_thinker import EarsThinker, V1Thinker
from talkstream.models.thinker import Thinker as ThinkerModel
from talkstream.models.thinker import ThinkerConfig
from talkstream.models.turn import Turn
from talkstream.protocol import Hello
from talkstream.services.session import Limits, Session
from talkstream.streaming.codec_engine import CodecEngine
from talkstream.streaming.vad import SileroVAD
from tests.models.tiny import tiny_talker, tiny_thinker
from tests.services.test_session_api import Sink

CODEBOOK = torch.randn(8, 1024, 16)


def builtin(video: bool = False) -> BuiltinThinker:
    model = tiny_thinker() if not video else ThinkerModel(ThinkerConfig(latent_dim=16, dim=32, layers=2, heads=2,
                                                                         video_features=8)).eval()
    return BuiltinThinker(model, CODEBOOK)


def ears(legacy=None) -> EarsThinker:
    """The ears Thinker over stand-in ears: the seam's members, not Whisper, are under test."""
    return EarsThinker(SimpleNamespace(), SimpleNamespace(sample_rate=24_000), legacy=legacy)


def openai(listener):
    pytest.importorskip("aiohttp")
    from talkstream.chat.openai_thinker import OpenAIThinker

    return OpenAIThinker("http://127.0.0.1:9/v1", listener)


# (a Thinker, what its chat model's sessions declare: sees_video, hears_ahead)
THINKERS = {
    "builtin": (lambda: builtin(), False, True),
    "builtin-video": (lambda: builtin(video=True), True, True),
    "v1": (lambda: V1Thinker(builtin(video=True), codec_v1=None), True, False),
    "ears": (lambda: ears(), False, True),
    "ears-v1-video": (lambda: ears(V1Thinker(builtin(video=True), codec_v1=None)), True, True),
    "openai": (lambda: openai(ears()), False, True),
}


@pytest.mark.parametrize("name", THINKERS)
def test_each_shipped_thinker_is_a_thinker_and_its_sessions_declare_what_it_does(name):
    make, sees_video, hears_ahead = THINKERS[name]
    thinker = make()
    assert isinstance(thinker, Thinker)
    model = ChatResponder(thinker, Speaker(tiny_talker(), block_frames=4), voice_codec=None)
    session = model.open_session()
    assert isinstance(model, ChatModel) and isinstance(session, ChatSession)
    assert session.reply_format == ReplyFormat(num_codebooks=3, voice_codec=None, sees_video=sees_video,
                                               reads_text=True, hears_ahead=hears_ahead)
    session.close()


def test_the_echo_is_a_chat_model_and_its_own_session_in_the_clients_codebooks():
    echo = EchoResponder()
    assert isinstance(echo, ChatModel) and isinstance(echo.open_session(), ChatSession)
    assert echo.open_session().reply_format == ReplyFormat()  # nothing declared: the client's codebooks, audio only


def test_a_thinker_that_hears_whole_turns_is_never_handed_a_turn_in_pieces():
    """V1Thinker re-encodes the whole turn: `listen_ahead` leaves it alone, and the turn is heard at its end."""
    thinker = V1Thinker(builtin(), codec_v1=None)
    heard = []
    hear = thinker.hear
    thinker.hear = lambda codes, video=None, pcm=None: heard.append(codes.shape[-1]) or hear(codes, video, pcm)
    chat = ChatResponder(thinker, Speaker(tiny_talker(), block_frames=4)).open_session()
    turn = torch.randint(0, 1024, (1, 8, 12))

    async def main():
        await chat.listen_ahead([turn[..., :4], turn[..., 4:8]])
        assert chat.committed_text() == ""
        return [x async for x in chat.respond(Turn(turn, None))]

    out = asyncio.run(main())
    assert heard == [12] and any(isinstance(x, dict) and x["type"] == "reply_text" for x in out)


class Parrot:
    """A third party's chat session, written against `ChatModel`/`ChatSession` alone: it says a block of silence
    per turn in a codebook count of its own, and records what the server's session code handed it."""

    def __init__(self, fmt: ReplyFormat):
        self.reply_format = fmt
        self.ahead: list[int] = []  # frames heard so far, per `listen_ahead` call
        self.typed: list[str] = []
        self.turns: list[Turn] = []

    def warmup(self) -> None:
        pass

    def open_session(self) -> Parrot:
        return self

    async def listen_ahead(self, chunks: list[torch.Tensor], pcm_chunks: list[np.ndarray] | None = None) -> None:
        self.ahead.append(sum(c.shape[-1] for c in chunks))

    def committed_text(self) -> str:
        return "so far" if self.ahead else ""

    def type_text(self, text: str) -> None:
        self.typed.append(text)

    async def respond(self, turn: Turn, video: torch.Tensor | None = None):
        self.turns.append(turn)
        yield {"type": "transcript", "text": "heard", "final": True}
        yield torch.zeros(1, self.reply_format.num_codebooks, 6, dtype=torch.long)

    def close(self) -> None:
        pass


@pytest.mark.parametrize("reads", [True, False], ids=["hears-ahead-reads-text", "audio-only"])
def test_a_session_written_against_the_protocol_runs_through_the_servers_session_code(tiny_codec, reads):
    """A spoken turn, then keys pressed in silence: the reply's blocks (3 codebooks, the client's are 2) are decoded
    and sent; the turn is heard while spoken and the keys are a turn of their own only where the format says so."""
    parrot = Parrot(ReplyFormat(num_codebooks=3, hears_ahead=reads, reads_text=reads))
    sink = Sink()
    audio = np.concatenate([load_audio(SAMPLE_WAV, 16_000)[:32_000], np.zeros(16_000, np.float32)])

    async def main():
        engine = CodecEngine(tiny_codec)
        engine.start()
        session = Session(engine, SileroVAD(), parrot, Limits(), sink)
        try:
            assert await session.open(Hello(1, "chat", 16_000, 2, realtime=False, turn_end="silence"))
            assert session.turns.reply.stages[0].num_codebooks == 3  # the reply is decoded in its own codebooks
            for i in range(0, audio.size - 320, 320):
                await session.feed_audio(audio[i : i + 320], timestamp=i // 16)
            for _ in range(200):  # the turn is answered
                if any(e["type"] == "reply" and e["state"] == "end" for e in sink.events_):
                    break
                await asyncio.sleep(0.02)
            await session.feed_keys("5#")
            await asyncio.sleep(0.3)
            await asyncio.wait_for(session.on_message('{"type": "end"}'), 30)
        finally:
            await session.close()
            await engine.stop()

    asyncio.run(asyncio.wait_for(main(), 60))
    partial = [e["text"] for e in sink.events_ if e["type"] == "transcript" and not e["final"]]
    assert all(isinstance(t, Turn) for t in parrot.turns)
    assert parrot.turns[0].shape[:2] == (1, 2) and parrot.turns[0].pcm is not None  # the client's codes, and audio
    if reads:
        assert parrot.ahead and partial == ["so far"]
        assert parrot.typed == ["5"] and parrot.turns[-1].shape == (1, 3, 0)  # keys alone: no frames, its codebooks
    else:
        assert not parrot.ahead and not partial and not parrot.typed and len(parrot.turns) == 1
    assert sum(o.pcm.size for o in sink.outs if o.pcm is not None) > 0  # the replies were decoded and sent
    assert sink.events_[-1]["type"] == "summary" and not [e for e in sink.events_ if e["type"] == "error"]
