"""Stopping a server with live sessions of both transports: every client is told (`shutting_down`), the server's
stop returns, and nothing is left running."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
import websockets
from websockets.asyncio.client import connect

from talkstream.bench.webrtc import RATE, rtc_session
from talkstream.services.app import ServerConfig

pytestmark = pytest.mark.slow  # docs/tests.md: the fast tier is -m 'not slow'


def test_stopping_the_server_tells_every_client(start_server):
    server = start_server(ServerConfig(port=0, http_port=0, thinker="echo"))
    ws_url, http_url = server.srv.url, server.http_url

    async def ws_client(mode: str) -> tuple[list[dict], int | None]:
        events, code = [], None
        async with connect(ws_url) as ws:
            await ws.send(json.dumps({"type": "hello", "version": 1, "mode": mode}))
            try:
                while True:
                    msg = await ws.recv()
                    if isinstance(msg, str):
                        events.append(json.loads(msg))
            except websockets.ConnectionClosed as e:
                code = e.rcvd.code if e.rcvd else None
        return events, code

    def told(events) -> bool:
        return any(e.get("type") == "error" and e.get("code") == "shutting_down" for e in events)

    async def main():
        clients = [asyncio.ensure_future(ws_client(m)) for m in ("codec", "chat")]
        rtc = asyncio.ensure_future(rtc_session(http_url, np.zeros(RATE * 60, np.float32), 60, until=told))
        loop = asyncio.get_running_loop()
        while not await loop.run_in_executor(None, server.call, _live(server)):
            await asyncio.sleep(0.1)
        await loop.run_in_executor(None, server.stop)  # returns once the server's loop has finished
        return await asyncio.gather(*clients), await rtc

    (codec, chat), rtc = asyncio.run(asyncio.wait_for(main(), 120))
    assert not server._thread.is_alive(), "the server's stop returned"
    for events, code in (codec, chat):
        assert events[0]["type"] == "ready" and told(events), events
        error = [e for e in events if e["type"] == "error"][-1]
        assert error["fatal"] and error["message"] and code == 1001
    assert told(rtc.events) and rtc.of_type("ready")


async def _live(server) -> bool:
    """Three sessions, the WebRTC one's data channel open (its events have a way to the client)."""
    peers = list(server.srv.http.rtc.peers.values())
    channel_open = bool(peers) and all(p.channel is not None and p.channel.readyState == "open" for p in peers)
    return len(server.srv.sessions) == 3 and channel_open
