"""The OpenAI-compatible Thinker against a small chat-completions server on loopback (aiohttp), and the Talker
speaking its words as they arrive."""

import asyncio
import json
from collections import deque

import pytest
import torch

aiohttp = pytest.importorskip("aiohttp")
from aiohttp import web  # noqa: E402

from talkstream.chat.openai_thinker import OpenAIThinker  # noqa: E402
from talkstream.chat.responder import BuiltinThinker, ChatResponder, Speaker  # noqa: E402
from talkstream.models.errors import ThinkerEndpointError  # noqa: E402
from tests.models.openai_stub import with_openai_stub  # noqa: E402
from tests.models.tiny import tiny_talker as _talker  # noqa: E402
from tests.models.tiny import tiny_thinker as _thinker  # noqa: E402


class FakeEndpoint:
    """Streams `deltas` as server-sent events, as llama.cpp / vLLM / Ollama do; records what it was asked."""

    def __init__(self, deltas, status=200, raw=None):
        self.deltas, self.status, self.raw, self.requests = deltas, status, raw, []

    async def handle(self, request):
        self.requests.append(await request.json())
        if self.status != 200:
            return web.Response(status=self.status, text="model not loaded")
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for d in self.deltas:
            chunk = {"choices": [{"index": 0, "delta": {"content": d}}]}
            await resp.write(f"data: {json.dumps(chunk)}\n\n".encode())
            await asyncio.sleep(0.01)
        if self.raw:
            await resp.write(self.raw)
        await resp.write(b"data: [DONE]\n\n")
        return resp


def _listener():
    return BuiltinThinker(_thinker(), torch.randn(8, 1024, 16))


def test_reply_streams_whole_words_with_numbers_spelled():
    endpoint = FakeEndpoint(["It is ", "1", "7 o'clock", ", see", " you."])

    async def body(url):
        thinker = OpenAIThinker(url, _listener(), model="tiny")
        heard = thinker.hear(torch.randint(0, 1024, (1, 8, 20)))
        pieces = [p async for p, h in thinker.reply(heard, history)]
        return thinker, heard, pieces

    history = deque()
    thinker, heard, pieces = asyncio.run(with_openai_stub(endpoint, body))
    assert "".join(pieces).strip() == "it is seventeen o'clock, see you."
    assert len(pieces) >= 3  # words left as they arrived, not at the end
    req = endpoint.requests[0]
    assert req["stream"] is True and req["model"] == "tiny"
    assert req["messages"][0]["role"] == "system" and req["messages"][-1]["content"] == thinker.transcript(heard)
    assert [m["role"] for m in history] == ["user", "assistant"]


def test_the_talker_speaks_the_endpoint_reply():
    endpoint = FakeEndpoint(["Hello ", "there, ", "seven."])

    async def body(url):
        responder = ChatResponder(OpenAIThinker(url, _listener()), Speaker(_talker(), block_frames=4))
        return [x async for x in responder.respond(torch.randint(0, 1024, (1, 8, 20)))]

    out = asyncio.run(with_openai_stub(endpoint, body))
    texts = [o["text"] for o in out if isinstance(o, dict) and o["type"] == "reply_text" and o["final"]]
    assert texts == ["hello there, seven."]
    assert sum(o.shape[-1] for o in out if isinstance(o, torch.Tensor)) > 0


@pytest.mark.parametrize("endpoint, match", [
    (FakeEndpoint([], status=503), "HTTP 503"),
    (FakeEndpoint(["ok "], raw=b"data: {not json}\n\n"), "malformed"),
])
def test_endpoint_failures_are_clear_errors(endpoint, match):
    async def body(url):
        thinker = OpenAIThinker(url, _listener())
        return [p async for p in thinker.reply(thinker.hear(torch.randint(0, 1024, (1, 8, 8))))]

    with pytest.raises(ThinkerEndpointError, match=match):
        asyncio.run(with_openai_stub(endpoint, body))


def test_unreachable_endpoint_is_a_clear_error():
    async def body():
        thinker = OpenAIThinker("http://127.0.0.1:9/v1", _listener(), timeout_s=5)
        return [p async for p in thinker.reply(thinker.hear(torch.randint(0, 1024, (1, 8, 8))))]

    with pytest.raises(ThinkerEndpointError, match="unreachable"):
        asyncio.run(body())


def test_a_bad_url_is_refused_when_the_thinker_is_made():
    with pytest.raises(ValueError, match="http"):
        OpenAIThinker("127.0.0.1:8080/v1", _listener())



def test_the_words_its_ears_commit_while_the_turn_is_spoken_reach_the_conversation():
    """docs/protocol.md: with `--thinker openai`, the words committed so far go out while the user speaks (the
    probe for `committed_text` found none on this Thinker before the seam was typed, so none were sent)."""
    from types import SimpleNamespace

    class Ears:  # commits a word per chunk heard
        def start_hearing(self):
            return SimpleNamespace(words=[])

        def frames_short_of_a_position(self, heard, new: int) -> bool:
            return False

        def hear_more(self, heard, codes, pcm=None):
            heard.words.append("seven")
            return heard

        def committed_text(self, heard) -> str:
            return " ".join(heard.words)

    chat = ChatResponder(OpenAIThinker("http://127.0.0.1:9/v1", Ears()), Speaker(_talker())).open_session()
    chunks = [torch.zeros(1, 8, 2, dtype=torch.long)]
    asyncio.run(chat.listen_ahead(chunks))
    chunks.append(torch.zeros(1, 8, 2, dtype=torch.long))
    asyncio.run(chat.listen_ahead(chunks))
    assert chat.reply_format.hears_ahead and chat.committed_text() == "seven seven"
