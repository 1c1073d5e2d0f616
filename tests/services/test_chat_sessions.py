"""Chat sessions on a real server on loopback, with the OpenAI-compatible Thinker against a stand-in endpoint: each
connection has its own conversation, and a failing answer is an error event after which the next turn works."""

from __future__ import annotations

import asyncio
import json
import logging

import numpy as np
import pytest
import torch

aiohttp = pytest.importorskip("aiohttp")
from aiohttp import web  # noqa: E402

from talkstream.audio_io import load_audio  # noqa: E402
from talkstream.chat.openai_thinker import OpenAIThinker  # noqa: E402
from talkstream.chat.responder import BuiltinThinker, ChatResponder, Speaker  # noqa: E402
from talkstream.checkpoint import load_audio_codec  # noqa: E402
from talkstream.client import stream_audio  # noqa: E402
from talkstream.data import SAMPLE_WAV  # noqa: E402
from talkstream.services.app import ServerConfig, TalkstreamServer  # noqa: E402
from talkstream.streaming.vad import SileroVAD  # noqa: E402
from tests.chat.stubs import StubModel  # noqa: E402
from tests.models.openai_stub import with_openai_stub  # noqa: E402
from tests.models.tiny import tiny_talker, tiny_thinker  # noqa: E402

pytestmark = pytest.mark.slow  # docs/tests.md: the fast tier is -m 'not slow'

WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"]


class Endpoint:
    """A chat-completions stand-in: the n-th request is answered with a word of its own (or fails with 503 when
    `fail` holds n); records each request with its answer."""

    def __init__(self, fail: tuple[int, ...] = ()):
        self.fail, self.requests = fail, []

    async def handle(self, request):
        n = len(self.requests)
        answer = f"{WORDS[n % len(WORDS)]} {n}."
        self.requests.append((await request.json(), answer))
        if n in self.fail:
            return web.Response(status=503, text="model not loaded")
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for word in answer.split(" "):
            chunk = {"choices": [{"index": 0, "delta": {"content": word + " "}}]}
            await resp.write(f"data: {json.dumps(chunk)}\n\n".encode())
        await resp.write(b"data: [DONE]\n\n")
        return resp


@pytest.fixture(scope="module")
def models():
    return load_audio_codec(), SileroVAD()


def two_turns() -> np.ndarray:
    speech = load_audio(SAMPLE_WAV, 24_000)
    gap = np.zeros(48_000, np.float32)  # 2 s: the first answer has played before the second turn begins
    return np.concatenate([gap[:9_000], speech, gap, speech, gap])


async def serve_chat(models, endpoint, body):
    async def with_server(url):
        codec, vad = models
        listener = BuiltinThinker(tiny_thinker(), torch.randn(8, 1024, 16))
        chat = ChatResponder(OpenAIThinker(url, listener, model="tiny"), Speaker(tiny_talker(), block_frames=4))
        async with TalkstreamServer(ServerConfig(port=0), codec=codec, vad=vad, responder=chat) as srv:
            return await body(srv)

    return await with_openai_stub(endpoint, with_server)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 180))


def finals(result) -> list[str]:
    return [e["text"] for e in result.events if e["type"] == "reply_text" and e["final"]]


def test_two_chat_sessions_at_once_keep_their_conversations_apart(models):
    endpoint = Endpoint()
    audio = two_turns()

    async def body(srv):
        talk = [stream_audio(srv.url, audio, 24_000, mode="chat", realtime=True, tail_s=3) for _ in range(2)]
        return await asyncio.gather(*talk)

    a, b = run(serve_chat(models, endpoint, body))
    assert a.summary["turns"] == b.summary["turns"] == 2 and not a.errors() and not b.errors()
    said = {id(a): " ".join(finals(a)), id(b): " ".join(finals(b))}
    assert len(endpoint.requests) == 4 and all(len(finals(r)) == 2 for r in (a, b))
    for request, answer in endpoint.requests:
        word = answer.split(" ")[0]
        mine, other = (a, b) if word in said[id(a)] else (b, a)
        assert word in said[id(mine)] and word not in said[id(other)]
        prompt = json.dumps(request["messages"])
        # The prompt carries this user's earlier exchange only: none of the other user's words.
        assert not any(w.split(" ")[0] in prompt for w in finals(other)), (prompt, finals(other))
        earlier = [m for m in request["messages"] if m["role"] == "assistant"]
        assert len(earlier) <= 1 and all(m["content"].split(" ")[0] in said[id(mine)] for m in earlier)
    assert sum(1 for r, _ in endpoint.requests if any(m["role"] == "assistant" for m in r["messages"])) == 2


def test_a_failing_answer_is_an_error_event_and_the_next_turn_works(models, caplog):
    endpoint = Endpoint(fail=(0,))  # the endpoint is down for the first turn, back for the second

    async def body(srv):
        return await stream_audio(srv.url, two_turns(), 24_000, mode="chat", realtime=True, tail_s=3)

    with caplog.at_level(logging.WARNING, logger="talkstream.services.session"):
        r = run(serve_chat(models, endpoint, body))
    errors = r.errors()
    assert [e["code"] for e in errors] == ["thinker_unavailable"] and not errors[0]["fatal"]
    assert "HTTP 503" in errors[0]["message"]
    assert any("endpoint failed" in rec.getMessage() for rec in caplog.records)
    kinds = [(e["type"], e.get("state", e.get("code"))) for e in r.events if e["type"] in ("reply", "error")]
    assert kinds == [("reply", "start"), ("error", "thinker_unavailable"), ("reply", "end"),
                     ("reply", "start"), ("reply", "end")]
    assert r.summary["turns"] == 2 and [t.strip() for t in finals(r)] == [f"{WORDS[1]} one."]
    assert r.pcm.size > 0  # the second answer was spoken


class FailsFirst(StubModel):
    """A chat model whose answer raises on the first turn (a model error), and says each later turn back."""

    async def respond(self, turn, video=None):
        self.turns += 1
        yield turn.codes[..., :6]
        if self.turns == 1:
            raise RuntimeError("the Thinker broke")
        yield turn.codes[..., 6:]


def test_a_model_error_mid_answer_is_an_error_event_and_the_next_turn_works(models, caplog):
    codec, vad = models

    async def main():
        async with TalkstreamServer(ServerConfig(port=0), codec=codec, vad=vad, responder=FailsFirst()) as srv:
            return await stream_audio(srv.url, two_turns(), 24_000, mode="chat", realtime=True, tail_s=3)

    with caplog.at_level(logging.ERROR, logger="talkstream.services.session"):
        r = run(main())
    errors = r.errors()
    assert [e["code"] for e in errors] == ["reply_failed"] and "the Thinker broke" in errors[0]["message"]
    assert any(rec.exc_info and "the Thinker broke" in str(rec.exc_info[1]) for rec in caplog.records)
    kinds = [(e["type"], e.get("state", e.get("code"))) for e in r.events if e["type"] in ("reply", "error")]
    assert kinds == [("reply", "start"), ("error", "reply_failed"), ("reply", "end"),
                     ("reply", "start"), ("reply", "end")]
    assert r.summary["turns"] == 2 and r.summary["errors"] == 1


class SlowFirst(StubModel):
    """A chat model that says its first answer only after 3 s (an overloaded server), and each later one at once."""

    def __init__(self):
        super().__init__()
        self.closed_early = False

    async def respond(self, turn, video=None):
        self.turns += 1
        yield {"type": "transcript", "text": "heard", "final": True}
        if self.turns == 1:
            try:
                await asyncio.sleep(3.0)
            except asyncio.CancelledError:
                self.closed_early = True
                raise
        yield turn.codes[..., :6]


def test_an_answer_not_ready_in_time_is_given_up_with_an_error_and_the_next_turn_works(models):
    """Limits.answer_timeout_s: no answer audio that long after the turn is a `reply_timeout` error event (never a
    silent turn, never an answer seconds late); the answer is cancelled and the next turn is answered."""
    from talkstream.services.session import Limits

    codec, vad = models
    slow = SlowFirst()

    async def main():
        config = ServerConfig(port=0, limits=Limits(answer_timeout_s=0.8))
        async with TalkstreamServer(config, codec=codec, vad=vad, responder=slow) as srv:
            return await stream_audio(srv.url, two_turns(), 24_000, mode="chat", realtime=True, tail_s=3)

    r = run(main())
    kinds = [(e["type"], e.get("state", e.get("code"))) for e in r.events if e["type"] in ("reply", "error")]
    assert kinds == [("reply", "start"), ("error", "reply_timeout"), ("reply", "end"),
                     ("reply", "start"), ("reply", "end")], kinds
    assert slow.closed_early  # the late answer was cancelled, not left running
    assert r.summary["turns"] == 2 and r.pcm.size > 0  # the second answer was spoken
