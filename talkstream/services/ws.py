"""The WebSocket transport: the protocol's wire frames in and out of a `Session`, plus /healthz and /metrics over
plain HTTP on the same port (the server's one metrics endpoint, there whether or not the HTTP app runs).

A thin adapter: admission and accounting go through the server's `SessionRegistry`, the session comes from
`ServerPort.open_session`, and what the session sends leaves through `WireSink`. Wire bytes are parsed by the
session's sans-I/O protocol machine (talkstream/protocol/), not here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from http import HTTPStatus
from typing import TYPE_CHECKING

import websockets
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from talkstream.protocol import FLAG_KEY, error_event, pcm_frame, rgb_frame, token_frame, video_token_frame
from talkstream.services.registry import Refused
from talkstream.services.telephony import PATHS as TELEPHONY_PATHS
from talkstream.streaming.stages import MediaOut
from talkstream.streaming.video import VideoOut

if TYPE_CHECKING:
    from talkstream.services.ports import ServerPort

log = logging.getLogger(__name__)


class WireSink:
    """A session's output as the protocol's WebSocket messages: binary frames for media, text for events."""

    def __init__(self, ws: ServerConnection):
        self.ws = ws
        self.seq = self.video_seq = 0

    async def media(self, out: MediaOut) -> None:
        if out.tokens is not None:
            await self.ws.send(token_frame(out.tokens, self.seq, out.timestamp))
        if out.pcm is not None:
            await self.ws.send(pcm_frame(out.pcm, self.seq, out.timestamp))
        self.seq += 1

    async def event(self, text: str) -> None:
        await self.ws.send(text)

    async def video(self, out: VideoOut) -> None:
        flags = FLAG_KEY if out.key else 0
        if out.tokens is not None:
            await self.ws.send(video_token_frame(out.tokens[None], self.video_seq, out.timestamp, flags))
        if out.rgb is not None:
            await self.ws.send(rgb_frame(out.rgb, self.video_seq, out.timestamp, flags))
        self.video_seq += 1


class WebSocketTransport:
    def __init__(self, server: ServerPort):
        self.server = server
        self._server: Server | None = None

    @property
    def port(self) -> int:
        assert self._server is not None, "server not started"
        return self._server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"ws://{self.server.config.host}:{self.port}"

    @property
    def serving(self) -> bool:
        return self._server is not None and self._server.is_serving()

    async def start(self) -> None:
        c = self.server.config
        # websockets closes (1009) above max_size; below it, the session answers oversize messages with an error
        # event and keeps the connection, so the hard cap sits well above the protocol's limit.
        self._server = await serve(
            self._handle,
            c.host,
            c.port,
            process_request=self._http,
            max_size=4 * c.limits.max_message_bytes,
            ping_interval=20,
            ping_timeout=20,
            write_limit=2**16,
            compression=None,  # PCM and tokens do not deflate
            reuse_port=c.reuse_port or None,
        )

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def _http(self, connection: ServerConnection, request: Request) -> Response | None:
        if request.path == "/healthz":
            return connection.respond(HTTPStatus.OK, "ok\n")
        if request.path == "/metrics":
            body = self.server.render_metrics()
            headers = Headers(
                [("Content-Type", "text/plain; version=0.0.4; charset=utf-8"), ("Content-Length", str(len(body)))]
            )
            return Response(200, "OK", headers, body)
        return None  # a WebSocket upgrade: carry on with the handshake

    async def _refuse(self, ws: ServerConnection, refused: Refused) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            await ws.send(error_event(refused.code, refused.message))
            await ws.close(1008, refused.code)

    async def _handle(self, ws: ServerConnection) -> None:
        assert ws.request is not None  # websockets calls the handler after the handshake
        if ws.request.path.split("?")[0] in TELEPHONY_PATHS:  # a phone call's media stream (telephony.py)
            await self.server.telephony.handle(ws)
            return
        limits, registry = self.server.config.limits, self.server.sessions
        try:
            registry.admit(origin=ws.request.headers.get("Origin"))
        except Refused as e:
            await self._refuse(ws, e)
            return

        async def abort(code: str, message: str) -> None:
            """A client that stopped reading gets no event: the close frame's reason is the code. It waits behind
            what the client left unread, so a client that reads nothing at all is cut off after send_timeout_s."""
            try:
                async with asyncio.timeout(limits.send_timeout_s):
                    await ws.close(1008, code)
            except TimeoutError:
                log.info("session %s: no close handshake after %.0f s; connection dropped", session.id,
                         limits.send_timeout_s)
                ws.transport.abort()

        session = self.server.open_session(WireSink(ws), abort)

        async def shut_down() -> None:
            await session.shut_down()
            await ws.close(1001, "shutting_down")

        registry.add(session, shut_down)
        try:
            while True:
                try:
                    # asyncio.timeout, not wait_for: on Python 3.11 wait_for wraps every receive in a task of its
                    # own, one more task per packet per session on the loop that carries them all.
                    async with asyncio.timeout(max(session.protocol.deadline() - time.monotonic(), 0.001)):
                        data = await ws.recv()
                except TimeoutError:
                    if not await session.expire():
                        break
                    continue
                if not await session.on_message(data):
                    break
        except websockets.ConnectionClosed:
            log.info("session %s: client went away", session.id)  # vanished mid-stream: free everything below
        finally:
            await session.close()
            registry.remove(session)
            with contextlib.suppress(websockets.ConnectionClosed):
                await ws.close()
