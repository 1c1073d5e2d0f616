"""The WebSocket server: a thin shell around `Session`, plus /metrics and /healthz over plain HTTP on the same port.

Models load and warm up before the port opens. One shared `CodecEngine` batches the codec work of every session;
everything else is per session. Limits (message size, session length, idle time, sessions, token, origin) are
enforced here and in the session, and every refusal is an error event with a code (docs/protocol.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from http import HTTPStatus

import websockets
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from talkstream.chat import ChatModel, EchoResponder
from talkstream.protocol import FLAG_KEY, error_event, pcm_frame, rgb_frame, token_frame, video_token_frame
from talkstream.services.registry import Refused, SessionRegistry
from talkstream.services.session import Limits, Session
from talkstream.streaming import video
from talkstream.streaming.codec_engine import CodecEngine
from talkstream.streaming.metrics import Metrics
from talkstream.streaming.stages import MediaOut
from talkstream.streaming.vad import SileroVAD
from talkstream.streaming.video import VideoOut

log = logging.getLogger(__name__)


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8765  # 0: any free port (tests)
    max_sessions: int = 64
    limits: Limits = field(default_factory=Limits)
    # Browsers send Origin; other clients do not. None: only pages served from localhost may connect.
    allowed_origins: list[str] | None = None
    weights: str | None = None  # codec checkpoint folder (default: the shipped weights)
    video_weights: str | None = None  # video codec checkpoint folder (default: the shipped weights)
    codec_threads: int = 1
    gather_ms: float = 0.0  # how long the codec engine waits to batch sessions' frames (see CodecEngine)
    backend: str = "onnx"  # codec steps in onnxruntime (2.8-4x faster per step) or torch eager
    onnx_options: dict = field(default_factory=dict)  # export_dir, precision, providers (OnnxCodecSteps)
    http_port: int | None = None  # the page, WebRTC signaling, /metrics (talkstream/services/http.py); 0: any free
    ice_servers: list = field(default_factory=list)  # aiortc RTCIceServer; empty: host candidates only
    thinker: str = "builtin"  # chat mode's answerer: builtin (shipped Thinker-Talker), openai, or echo (stand-in)
    thinker_url: str | None = None  # OpenAI-compatible /v1 endpoint for thinker="openai"
    thinker_model: str = "default"
    thinker_api_key: str | None = None
    talker_hidden: bool = False  # the Talker reads the Thinker's hidden states (the dual track; off: it measured worse)
    reuse_port: bool = False  # SO_REUSEPORT: worker processes share the ports (services/workers.py checks them once)


def _make_responder(c: ServerConfig, codec) -> ChatModel:
    if c.thinker == "echo":
        return EchoResponder()
    from talkstream.chat.responder import load_chat

    return load_chat(codec, c.thinker, c.thinker_url, c.thinker_model, c.thinker_api_key, backend=c.backend,
                     talker_hidden=c.talker_hidden)


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

        self.config = config or ServerConfig()
        self.metrics = Metrics()
        self.codec = codec or load_audio_codec(self.config.weights)
        self.video_codec = video_codec or load_video_codec(self.config.video_weights)
        self.vad = vad or SileroVAD()
        self.responder = responder or _make_responder(self.config, self.codec)
        self.engine = CodecEngine(
            self.codec,
            metrics=self.metrics,
            threads=self.config.codec_threads,
            gather_ms=self.config.gather_ms,
            backend=self.config.backend,
            onnx_options=self.config.onnx_options,
            frames_per_step=self.config.limits.frames_per_step,
        )
        c = self.config  # WebSocket and WebRTC sessions alike: one admission, one max_sessions, one count
        self.sessions = SessionRegistry(c.max_sessions, c.allowed_origins, c.limits.token, self.metrics)
        self._server: Server | None = None
        self.http = None  # HttpService when config.http_port is set

    @property
    def port(self) -> int:
        assert self._server is not None, "server not started"
        return self._server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"ws://{self.config.host}:{self.port}"

    def _check_ports_free(self) -> None:
        """A port another process holds is a one-line error now, not after the warm-up (tens of seconds)."""
        import socket

        c = self.config
        for port in (c.port, c.http_port):
            if not port:  # None: no HTTP; 0: any free port
                continue
            with socket.socket(socket.AF_INET6 if ":" in c.host else socket.AF_INET) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    probe.bind((c.host, port))
                except OSError as e:
                    raise ValueError(f"cannot listen on {c.host}:{port}: {e.strerror or e} (another server?)") from None

    async def start(self) -> None:
        t0 = time.perf_counter()
        if not self.config.reuse_port:
            self._check_ports_free()
        self.engine.warmup()  # every codec graph a client can reach: none is exported once the port is open
        self.vad.warmup()
        self.responder.warmup()
        video.warmup(self.video_codec)
        self.engine.start()
        c = self.config
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
            compression=None,
            reuse_port=c.reuse_port or None,
        )  # PCM and tokens do not deflate
        if c.http_port is not None:
            try:
                from talkstream.services.http import HttpService
            except ImportError as e:
                raise ValueError(
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
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        await self.engine.stop()

    async def __aenter__(self) -> TalkstreamServer:
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    def render_metrics(self) -> bytes:
        depth: dict[str, int] = {}
        for s in self.sessions:
            for p in (s.input, s.reply, s.video.pipeline):
                for name, n in (p.queue_depths() if p else {}).items():
                    depth[name] = depth.get(name, 0) + n
        for name, n in depth.items():
            self.metrics.queue_depth.labels(name).set(n)
        return self.metrics.render()

    def _http(self, connection: ServerConnection, request: Request) -> Response | None:
        if request.path == "/healthz":
            return connection.respond(HTTPStatus.OK, "ok\n")
        if request.path == "/metrics":
            body = self.render_metrics()
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
        c = self.config
        try:
            self.sessions.admit(origin=ws.request.headers.get("Origin"))
        except Refused as e:
            await self._refuse(ws, e)
            return

        async def abort(code: str, message: str) -> None:
            """A client that stopped reading gets no event: the close frame's reason is the code. It waits behind
            what the client left unread, so a client that reads nothing at all is cut off after send_timeout_s."""
            try:
                async with asyncio.timeout(c.limits.send_timeout_s):
                    await ws.close(1008, code)
            except TimeoutError:
                log.info("session %s: no close handshake after %.0f s; connection dropped", session.id,
                         c.limits.send_timeout_s)
                ws.transport.abort()

        session = Session(
            self.engine, self.vad, self.responder, c.limits, WireSink(ws), self.metrics, video_codec=self.video_codec,
            abort=abort,
        )

        async def shut_down() -> None:
            await session.shut_down()
            await ws.close(1001, "shutting_down")

        self.sessions.add(session, shut_down)
        try:
            while True:
                try:
                    timeout = session.protocol.deadline() - time.monotonic()
                    data = await asyncio.wait_for(ws.recv(), max(timeout, 0.001))
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
            self.sessions.remove(session)
            with contextlib.suppress(websockets.ConnectionClosed):
                await ws.close()


async def run_server(config: ServerConfig, ready: asyncio.Event | None = None) -> None:
    """Serve until cancelled (Ctrl-C)."""
    async with TalkstreamServer(config) as server:
        print(f"talkstream serving {server.url} (metrics: http://{config.host}:{server.port}/metrics); Ctrl-C stops")
        if server.http is not None:
            print(f"web page and WebRTC: {server.http.url}/")
        if ready is not None:
            ready.set()
        await asyncio.Future()
