"""What a transport may use of the server: a typed port, so that no transport imports `services.app` (which
composes them) and the server's own configuration, which transports read.

`TalkstreamServer` (app.py) satisfies `ServerPort`; transports (ws.py, http.py, webrtc.py, telephony.py) take a
`ServerPort`, so the dependency runs one way: app -> transports -> ports.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from talkstream.services.registry import SessionRegistry
from talkstream.services.session import Limits, Session, Sink
from talkstream.streaming.metrics import Metrics


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8765  # 0: any free port (tests)
    max_sessions: int = 64
    # Chat conversations at once per worker before a new one is refused `busy` (None: no limit). Each costs the
    # ears, the Thinker and the Talker; see `talkstream bench chat` and docs/scaling.md for what a core holds.
    max_conversations: int | None = None
    limits: Limits = field(default_factory=Limits)
    # Browsers send Origin; other clients do not. None: only pages served from localhost may connect.
    allowed_origins: list[str] | None = None
    weights: str | None = None  # codec checkpoint folder (default: the shipped weights)
    video_weights: str | None = None  # video codec checkpoint folder (default: the shipped weights)
    codec_threads: int = 1
    gather_ms: float = 0.0  # how long the codec engine waits to batch sessions' frames (see CodecEngine)
    # The least time between the starts of two batched codec steps, scaled by the codec thread's busy share (see
    # CodecEngine). Off by default: 12 ms saves WebSocket sessions 5-25% of the server's CPU, but with it one worker's
    # 8th WebRTC session missed its budget in most runs (bench serve / bench webrtc --step-interval-ms 0 12,
    # docs/benchmarks.md).
    step_interval_ms: float = 0.0
    step_interval_fixed: bool = False  # False: the interval scales with how busy the codec thread is (CodecEngine)
    backend: str = "onnx"  # codec steps in onnxruntime (2.8-4x faster per step) or torch eager
    onnx_options: dict = field(default_factory=dict)  # export_dir, precision, providers (OnnxCodecSteps)
    http_port: int | None = None  # the page and WebRTC signaling (talkstream/services/http.py); 0: any free port
    ice_servers: list = field(default_factory=list)  # aiortc RTCIceServer; empty: host candidates only
    thinker: str = "builtin"  # chat mode's answerer: builtin (shipped Thinker-Talker), openai, or echo (stand-in)
    thinker_url: str | None = None  # OpenAI-compatible /v1 endpoint for thinker="openai"
    thinker_model: str = "default"
    thinker_api_key: str | None = None
    talker_hidden: bool = False  # the Talker reads the Thinker's hidden states (the dual track; off: it measured worse)
    public_host: str | None = None  # phone calls: the host the platform reaches the WebSocket port at (TwiML's wss URL)
    twilio_auth_token: str | None = None  # phone calls: POST /twilio/voice must carry Twilio's signature made with it
    reuse_port: bool = False  # SO_REUSEPORT: worker processes share the ports (services/workers.py checks them once)
    # Chat: how a user's turn ends by default (a hello's `turn_end` chooses per session). "semantic": the turn heads
    # (models/turn_head.py) judge at each pause whether the turn is complete, and whether speech over a reply is a
    # backchannel; "silence": 480 ms of silence ends a turn and any speech over a reply interrupts it.
    turn_end: str = "silence"


class PhoneStreams(Protocol):
    """The phone calls' media streams (telephony.py), handed a WebSocket on their paths."""

    async def handle(self, ws: Any) -> None: ...


class ServerPort(Protocol):
    """The server as its transports see it (app.TalkstreamServer)."""

    @property
    def config(self) -> ServerConfig: ...

    @property
    def metrics(self) -> Metrics: ...

    @property
    def sessions(self) -> SessionRegistry: ...

    @property
    def telephony(self) -> PhoneStreams: ...

    @property
    def codec(self) -> Any: ...  # the audio codec, torch or onnx backend: the codec contract's properties are read

    @property
    def port(self) -> int: ...

    def open_session(self, sink: Sink, abort: Callable[[str, str], Awaitable[None]] | None = None) -> Session: ...

    def render_metrics(self) -> bytes: ...
