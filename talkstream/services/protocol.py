"""The wire protocol, sans-I/O: parse what a client sent into typed messages, build what the server sends.

No sockets here: the WebSocket server and the WebRTC data channel are thin shells around these functions, and the
tests feed them bytes directly. docs/protocol.md is the user-facing table; keep the two in step.

Binary frames carry a 12-byte little-endian header, then the payload:

    byte 0   kind       1 = PCM16 audio, 2 = codec tokens, 3 = video codec tokens
    byte 1   version    1
    byte 2   codebooks  tokens: codebooks per frame (1..8); PCM16: 0; video tokens: video frames in the message
    byte 3   flags      bit 0: last frame of a segment
    4..7     seq        uint32, sender's frame counter
    8..11    timestamp  uint32 ms on the sender's clock; the server echoes the timestamp of the input frame that
                        completed each output frame, so a client measures round-trip latency with its own clock

PCM16 payloads are mono, little-endian, at the session's sample rate; token payloads are uint16, frame-major
(frame 0 codebooks 0..K-1, frame 1, ...). Video token payloads are uint16, frame by frame, each frame its grid's
tokens row-major (256 for the shipped 16x16 grid). No session takes video frames yet (answered with bad_header).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

PROTOCOL_VERSION = 1
HEADER = struct.Struct("<BBBBII")
KIND_PCM16 = 1
KIND_TOKENS = 2
KIND_VIDEO_TOKENS = 3
VIDEO_TOKENS_PER_FRAME, VIDEO_CODEBOOK_SIZE = 256, 1000  # the shipped video codec: 16x16 grid, FSQ 8x5x5x5
MAX_VIDEO_FRAMES = 25  # per video token message (1 s at 25 fps)
FLAG_END = 1
MODES = ("codec", "chat")
OUTPUTS = ("pcm", "tokens")
MIN_RATE, MAX_RATE = 8_000, 48_000

# Error codes (docs/protocol.md). Fatal ones close the connection after the error event.
FATAL = {"unauthorized", "bad_version", "busy", "idle_timeout", "session_too_long", "origin_not_allowed", "internal"}
MAX_TOKEN_FRAMES = 150  # per token message (2 s): one message must not hold the shared codec for long


class ProtocolError(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def fatal(self) -> bool:
        return self.code in FATAL


@dataclass
class Hello:
    version: int
    mode: str = "codec"
    sample_rate: int = 24_000
    codebooks: int = 8
    output: tuple[str, ...] = ("pcm",)
    input: str = "pcm"
    token: str | None = None


@dataclass
class Config:
    """Mid-session changes: only the fields present change."""

    changes: dict[str, Any] = field(default_factory=dict)


@dataclass
class End:
    pass


@dataclass
class Ping:
    t: Any = None


@dataclass
class BinaryFrame:
    kind: int
    codebooks: int
    flags: int
    seq: int
    timestamp: int
    payload: bytes

    def pcm(self) -> np.ndarray:
        """PCM16 payload -> float32 [T] in [-1, 1)."""
        return np.frombuffer(self.payload, "<i2").astype(np.float32) / 32768.0

    def tokens(self) -> np.ndarray:
        """Token payload -> int64 [K, F]."""
        return np.frombuffer(self.payload, "<u2").astype(np.int64).reshape(-1, self.codebooks).T.copy()

    def video_tokens(self) -> np.ndarray:
        """Video token payload -> int64 [F, N] (F = frames, N = tokens per frame, row-major over the grid)."""
        return np.frombuffer(self.payload, "<u2").astype(np.int64).reshape(self.codebooks, -1).copy()


def _check_fields(msg: dict, num_codebooks: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "mode" in msg:
        if msg["mode"] not in MODES:
            raise ProtocolError("bad_config", f"mode must be one of {list(MODES)}, got {msg['mode']!r}")
        out["mode"] = msg["mode"]
    if "sample_rate" in msg:
        sr = msg["sample_rate"]
        if not isinstance(sr, int) or isinstance(sr, bool) or not MIN_RATE <= sr <= MAX_RATE:
            raise ProtocolError("bad_config", f"sample_rate must be an integer {MIN_RATE}..{MAX_RATE}, got {sr!r}")
        out["sample_rate"] = sr
    if "codebooks" in msg:
        k = msg["codebooks"]
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= num_codebooks:
            raise ProtocolError("bad_config", f"codebooks must be an integer 1..{num_codebooks}, got {k!r}")
        out["codebooks"] = k
    if "output" in msg:
        o = msg["output"]
        o = [o] if isinstance(o, str) else o
        if not isinstance(o, list) or not o or any(x not in OUTPUTS for x in o):
            raise ProtocolError(
                "bad_config", f"output must be a list drawn from {list(OUTPUTS)}, got {msg['output']!r}"
            )
        out["output"] = tuple(dict.fromkeys(o))
    if "input" in msg:
        if msg["input"] not in ("pcm", "tokens"):
            raise ProtocolError("bad_config", f"input must be 'pcm' or 'tokens', got {msg['input']!r}")
        out["input"] = msg["input"]
    return out


def parse_text(text: str, num_codebooks: int = 8) -> Hello | Config | End | Ping:
    """A JSON control message -> a typed message; ProtocolError with the code to send back otherwise."""
    try:
        msg = json.loads(text)
    except (ValueError, RecursionError):  # JSONDecodeError is a ValueError; so are over-long integers
        raise ProtocolError("bad_json", "text messages must be JSON objects") from None
    if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
        raise ProtocolError("bad_json", "a text message must be a JSON object with a string 'type'")
    kind = msg["type"]
    if kind == "hello":
        version = msg.get("version")
        if version != PROTOCOL_VERSION:
            raise ProtocolError(
                "bad_version", f"protocol version {version!r} not supported; this server speaks {PROTOCOL_VERSION}"
            )
        token = msg.get("token")
        if token is not None and not isinstance(token, str):
            raise ProtocolError("bad_config", "token must be a string")
        return Hello(version=version, token=token, **_check_fields(msg, num_codebooks))
    if kind == "config":
        return Config(_check_fields(msg, num_codebooks))
    if kind == "end":
        return End()
    if kind == "ping":
        return Ping(msg.get("t"))
    raise ProtocolError("unknown_type", f"unknown message type {kind!r}")


def parse_binary(data: bytes, num_codebooks: int = 8, codebook_size: int = 1 << 16) -> BinaryFrame:
    """Header and payload checked against the codec (codebooks, code range), so a frame that parses is usable."""
    if len(data) < HEADER.size:
        raise ProtocolError("bad_header", f"binary frame of {len(data)} bytes is shorter than the 12-byte header")
    kind, version, k, flags, seq, ts = HEADER.unpack_from(data)
    if version != PROTOCOL_VERSION:
        raise ProtocolError("bad_header", f"binary frame version {version}, expected {PROTOCOL_VERSION}")
    payload = bytes(data[HEADER.size :])
    if kind == KIND_PCM16:
        if len(payload) % 2:
            raise ProtocolError("bad_header", "PCM16 payload has an odd number of bytes")
    elif kind == KIND_TOKENS:
        if not 1 <= k <= num_codebooks:
            raise ProtocolError("bad_header", f"token frame with {k} codebooks, expected 1..{num_codebooks}")
        if len(payload) % (2 * k):
            raise ProtocolError("bad_header", f"token payload is not a whole number of {k}-codebook frames")
        if len(payload) // (2 * k) > MAX_TOKEN_FRAMES:
            raise ProtocolError("bad_header", f"at most {MAX_TOKEN_FRAMES} token frames per message")
        if payload and int(np.frombuffer(payload, "<u2").max()) >= codebook_size:
            raise ProtocolError("bad_header", f"token value out of range 0..{codebook_size - 1}")
    elif kind == KIND_VIDEO_TOKENS:
        n = VIDEO_TOKENS_PER_FRAME
        if not 1 <= k <= MAX_VIDEO_FRAMES or len(payload) != 2 * n * k:
            raise ProtocolError("bad_header", f"video token frame must hold 1..{MAX_VIDEO_FRAMES} frames of {n} "
                                f"tokens, byte 2 says {k} and the payload is {len(payload)} bytes")
        if int(np.frombuffer(payload, "<u2").max()) >= VIDEO_CODEBOOK_SIZE:
            raise ProtocolError("bad_header", f"video token value out of range 0..{VIDEO_CODEBOOK_SIZE - 1}")
    else:
        raise ProtocolError("unknown_kind", f"unknown binary frame kind {kind}")
    return BinaryFrame(kind, k, flags, seq, ts, payload)


def pcm_frame(pcm: np.ndarray, seq: int, timestamp: int, flags: int = 0) -> bytes:
    """float [T] -> a PCM16 binary frame."""
    x = np.clip(np.asarray(pcm, np.float32).reshape(-1), -1.0, 32767 / 32768)
    return HEADER.pack(KIND_PCM16, PROTOCOL_VERSION, 0, flags, seq & 0xFFFFFFFF, timestamp & 0xFFFFFFFF) + (
        np.round(x * 32768).astype("<i2").tobytes()
    )


def token_frame(codes: np.ndarray, seq: int, timestamp: int, flags: int = 0) -> bytes:
    """int [K, F] -> a token binary frame."""
    codes = np.asarray(codes)
    return (
        HEADER.pack(KIND_TOKENS, PROTOCOL_VERSION, codes.shape[0], flags, seq & 0xFFFFFFFF, timestamp & 0xFFFFFFFF)
        + np.ascontiguousarray(codes.T).astype("<u2").tobytes()
    )


def video_token_frame(tokens: np.ndarray, seq: int, timestamp: int, flags: int = 0) -> bytes:
    """int [F, N] (F video frames of N tokens) -> a video token binary frame."""
    tokens = np.asarray(tokens)
    return (
        HEADER.pack(KIND_VIDEO_TOKENS, PROTOCOL_VERSION, tokens.shape[0], flags, seq & 0xFFFFFFFF,
                    timestamp & 0xFFFFFFFF)
        + np.ascontiguousarray(tokens).astype("<u2").tobytes()
    )


def event(kind: str, **fields: Any) -> str:
    return json.dumps({"type": kind, **fields}, separators=(",", ":"))


def error_event(code: str, message: str) -> str:
    return event("error", code=code, message=message, fatal=code in FATAL)
