"""The server: what every transport shares, built and warmed once, with the transports composed beside it.

`TalkstreamServer` loads the models (codec, video codec, VAD, the chat model), warms every graph a client can reach
before a port opens, and owns the one `CodecEngine` (batched codec work, no session state), the one
`SessionRegistry` (admission and accounting for every transport) and the one `Metrics`. It makes every session
(`open_session`) and starts the transports side by side: the WebSocket listener (ws.py, which also answers
/healthz and the one /metrics on its port) and, when `http_port` is set, the HTTP app (http.py: the page, WebRTC
signaling, a phone call's webhook) and the phone calls' media streams (telephony.py, on the WebSocket port's
/twilio). A transport only adapts its wire to a `Session`; it holds no model and makes no session of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from talkstream.chat import ChatModel, EchoResponder
from talkstream.errors import UserError
from talkstream.models.turn_head import load_turn_judge
from talkstream.services.ports import ServerConfig
from talkstream.services.registry import ConversationSlots, SessionRegistry
from talkstream.services.session import Session, Sink
from talkstream.services.telephony import TelephonyTransport
from talkstream.services.ws import WebSocketTransport
from talkstream.streaming import video
from talkstream.streaming.codec_engine import CodecEngine
from talkstream.streaming.metrics import Metrics
from talkstream.streaming.turn_taking import TurnTaking
from talkstream.streaming.vad import SileroVAD

if TYPE_CHECKING:
    from talkstream.services.http import HttpService

log = logging.getLogger(__name__)


def _make_responder(c: ServerConfig, codec) -> ChatModel:
    if c.thinker == "echo":
        return EchoResponder()
    from talkstream.chat.responder import load_chat

    return load_chat(codec, c.thinker, c.thinker_url, c.thinker_model, c.thinker_api_key, backend=c.backend,
                     talker_hidden=c.talker_hidden)


class TalkstreamServer:
    def __init__(
        self,
        config: ServerConfig | None = None,
        responder: ChatModel | None = None,
        codec=None,
        vad: SileroVAD | None = None,
        video_codec=None,
    ):
        from talkstream.checkpoint import load_audio_codec, load_video_codec

        self.config = c = config or ServerConfig()
        self.metrics = Metrics()
        self.codec = codec or load_audio_codec(c.weights)
        self.video_codec = video_codec or load_video_codec(c.video_weights)
        self.vad = vad or SileroVAD()
        # The turn heads, shared by every session (stateless); loaded whatever the default, since a hello may ask.
        self.turn_taking = TurnTaking(load_turn_judge())
        self.responder = responder or _make_responder(c, self.codec)
        self.engine = CodecEngine(
            self.codec,
            metrics=self.metrics,
            threads=c.codec_threads,
            gather_ms=c.gather_ms,
            step_interval_ms=c.step_interval_ms,
            interval_follows_load=not c.step_interval_fixed,
            backend=c.backend,
            onnx_options=c.onnx_options,
            frames_per_step=c.limits.frames_per_step,
        )
        # WebSocket and WebRTC sessions alike: one admission, one max_sessions, one count.
        self.sessions = SessionRegistry(c.max_sessions, c.allowed_origins, c.limits.token, self.metrics)
        self.conversations = ConversationSlots(c.max_conversations)
        self.ws = WebSocketTransport(self)
        self.telephony = TelephonyTransport(self)  # phone calls' media streams, on the WebSocket port's /twilio
        self.http: HttpService | None = None  # when config.http_port is set

    @property
    def port(self) -> int:
        return self.ws.port

    @property
    def url(self) -> str:
        return self.ws.url

    def open_session(self, sink: Sink, abort: Callable[[str, str], Awaitable[None]] | None = None) -> Session:
        """A new session over the server's shared engine and models, its output going to the transport's sink.
        Admission (`sessions.admit`) comes first and accounting (`sessions.add`) after; the transport does both."""
        return Session(self.engine, self.vad, self.responder, self.config.limits, sink, self.metrics,
                       video_codec=self.video_codec, abort=abort, turn_taking=self.turn_taking,
                       turn_end=self.config.turn_end, conversations=self.conversations)

    def _check_ports_free(self) -> None:
        """A port another process holds is a one-line error now, not after the warm-up (tens of seconds)."""
        c = self.config
        for port in (c.port, c.http_port):
            if not port:  # None: no HTTP; 0: any free port
                continue
            with socket.socket(socket.AF_INET6 if ":" in c.host else socket.AF_INET) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    probe.bind((c.host, port))
                except OSError as e:
                    raise UserError(f"cannot listen on {c.host}:{port}: {e.strerror or e} (another server?)") from None

    async def start(self) -> None:
        t0 = time.perf_counter()
        if not self.config.reuse_port:
            self._check_ports_free()
        self.engine.warmup()  # every codec graph a client can reach: none is exported once the port is open
        self.vad.warmup()
        self.responder.warmup()
        video.warmup(self.video_codec)
        self.engine.start()
        await self.ws.start()
        if self.config.http_port is not None:
            try:
                from talkstream.services.http import HttpService
            except ImportError as e:
                raise UserError(
                    f"the web page and WebRTC need aiohttp and aiortc (pip install 'talkstream[webrtc]'), or pass "
                    f"--no-http: {e}"
                ) from None

            self.http = HttpService(self)
            await self.http.start()
        log.info("warm in %.2f s; listening on %s", time.perf_counter() - t0, self.url)

    async def stop(self) -> None:
        """Every live session of either transport is told (`shutting_down`) and closed, then the ports close."""
        await self.sessions.close_all()
        if self.http is not None:
            await self.http.stop()
        await self.ws.stop()
        await self.engine.stop()

    async def __aenter__(self) -> TalkstreamServer:
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    def render_metrics(self) -> bytes:
        depth: dict[str, int] = {}
        for s in self.sessions:
            for p in s.pipelines():
                for name, n in p.queue_depths().items():
                    depth[name] = depth.get(name, 0) + n
        for name, n in depth.items():
            self.metrics.queue_depth.labels(name).set(n)
        with contextlib.suppress(RuntimeError):  # no running loop (a caller outside the server): leave it
            self.metrics.tasks.set(len(asyncio.all_tasks()))
        self.metrics.threads.set(threading.active_count())
        with contextlib.suppress(OSError):
            self.metrics.open_fds.set(len(os.listdir("/proc/self/fd")))
        return self.metrics.render()


async def run_server(config: ServerConfig, ready: asyncio.Event | None = None) -> None:
    """Serve until cancelled (Ctrl-C)."""
    async with TalkstreamServer(config) as server:
        print(f"talkstream serving {server.url} (metrics: http://{config.host}:{server.port}/metrics); Ctrl-C stops")
        if server.http is not None:
            print(f"web page and WebRTC: {server.http.url}/")
        if ready is not None:
            ready.set()
        await asyncio.Future()
