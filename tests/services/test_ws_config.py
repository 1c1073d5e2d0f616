"""The protocol's state machine on a real server: a mid-session config that succeeds, and a session that outlives
its limit."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
import websockets
from websockets.asyncio.client import connect

from talkstream.checkpoint import load_audio_codec
from talkstream.protocol import KIND_TOKENS, parse_binary, pcm_frame
from talkstream.services.app import ServerConfig, TalkstreamServer
from talkstream.services.session import Limits
from talkstream.streaming.vad import SileroVAD


@pytest.fixture(scope="module")
def models():
    return load_audio_codec(), SileroVAD()


def serve(models, limits: Limits | None = None) -> TalkstreamServer:
    codec, vad = models
    return TalkstreamServer(ServerConfig(port=0, thinker="echo", limits=limits or Limits()), codec=codec, vad=vad)


async def next_of(ws, kind: str):
    """The next text event of `kind`, or the next token frame for kind "tokens"."""
    while True:
        msg = await ws.recv()
        if kind == "tokens" and isinstance(msg, bytes):
            frame = parse_binary(msg)
            if frame.kind == KIND_TOKENS:
                return frame
        elif isinstance(msg, str) and json.loads(msg)["type"] == kind:
            return json.loads(msg)


def test_a_mid_session_config_takes_effect(models):
    pcm = (np.sin(np.arange(960) / 7) * 0.3).astype(np.float32)

    async def main():
        async with serve(models) as srv, connect(srv.url) as ws:
            await ws.send(json.dumps({"type": "hello", "version": 1, "codebooks": 2, "output": ["tokens"]}))
            first = await next_of(ws, "ready")
            await ws.send(pcm_frame(pcm, 0, 1))
            before = await next_of(ws, "tokens")
            await ws.send(json.dumps({"type": "config", "codebooks": 5, "output": ["tokens", "pcm"]}))
            second = await next_of(ws, "ready")
            await ws.send(pcm_frame(pcm, 1, 2))
            after = await next_of(ws, "tokens")
            await ws.send('{"type": "end"}')
            summary = await next_of(ws, "summary")
            return first, before, second, after, summary

    first, before, second, after, summary = asyncio.run(asyncio.wait_for(main(), 120))
    assert (first["codebooks"], first["output"]) == (2, ["tokens"]) and first["session"] == second["session"]
    assert (second["codebooks"], second["output"]) == (5, ["tokens", "pcm"])
    assert before.codebooks == 2 and after.codebooks == 5 and after.timestamp == 2
    assert summary["errors"] == 0


def test_a_session_past_its_limit_is_closed_with_session_too_long(models):
    async def main():
        async with serve(models, Limits(max_session_s=1.0)) as srv, connect(srv.url) as ws:
            await ws.send(json.dumps({"type": "hello", "version": 1}))
            await next_of(ws, "ready")
            error = await next_of(ws, "error")  # the client sends nothing more: the server's clock ends it
            with pytest.raises(websockets.ConnectionClosed):
                while True:
                    await ws.recv()
            return error, len(srv.sessions) if await _freed(srv) else -1

    error, live = asyncio.run(asyncio.wait_for(main(), 60))
    assert error["code"] == "session_too_long" and error["fatal"] and live == 0


async def _freed(srv) -> bool:
    for _ in range(100):
        if not srv.sessions:
            return True
        await asyncio.sleep(0.05)
    return False
