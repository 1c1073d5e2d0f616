"""The wire protocol, sans-I/O: parse what a client sent into typed messages, build what the server sends.

No sockets here: the WebSocket server and the WebRTC data channel are thin shells around these functions, and the
tests feed them bytes directly. docs/protocol.md is the user-facing table; keep the two in step.

Binary frames carry a 12-byte little-endian header, then the payload:

    byte 0   kind       1 = PCM16 audio, 2 = codec tokens, 3 = video codec tokens, 4 = RGB24 video frame
    byte 1   version    1
    byte 2   codebooks  tokens: codebooks per frame (1..8); PCM16: 0; video: video frames in the message (RGB24: 1)
    byte 3   flags      bit 0: last frame of a segment; bit 1 (video): key frame, the codec state restarts here
    4..7     seq        uint32, sender's frame counter
    8..11    timestamp  uint32 ms on the sender's clock; the server echoes the timestamp of the input frame that
                        completed each output frame, so a client measures round-trip latency with its own clock

PCM16 payloads are mono, little-endian, at the session's sample rate; token payloads are uint16, frame-major
(frame 0 codebooks 0..K-1, frame 1, ...). Video token payloads are uint16, frame by frame, each frame its grid's
tokens row-major (256 for the shipped 16x16 grid). An RGB24 payload is one frame at the video codec's size, uint8,
row-major, RGB interleaved (128 x 128 x 3 = 49,152 bytes for the shipped codec). Video kinds were added within
version 1: they are new kinds and new optional hello fields, so version-1 clients that do not use them see no change.
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
KIND_RGB24 = 4
VIDEO_KINDS = (KIND_VIDEO_TOKENS, KIND_RGB24)
# The shipped video codec (talkstream/codecs/video): 128x128 frames, a 16x16 token grid, FSQ 8x5x5x5. A server
# passes its codec's own figures to parse_binary; these are the defaults.
VIDEO_FRAME_SIZE, VIDEO_TOKENS_PER_FRAME, VIDEO_CODEBOOK_SIZE = (128, 128), 256, 1000
MAX_VIDEO_FRAMES = 25  # per video token message (1 s at 25 fps)
FLAG_END = 1
FLAG_KEY = 2  # video: the video codec's state was reset before this frame; a decoder resets too
MODES = ("codec", "chat")
OUTPUTS = ("pcm", "tokens")
VIDEO_INPUTS, VIDEO_OUTPUTS = ("rgb", "tokens"), ("rgb", "tokens")
TURN_ENDS = ("semantic", "silence")  # chat: how a turn ends (docs/protocol.md)
MIN_RATE, MAX_RATE = 8_000, 48_000

# Error codes (docs/protocol.md). Fatal ones close the connection after the error event.
FATAL = {"unauthorized", "bad_version", "codec_mismatch", "busy", "idle_timeout", "session_too_long",
         "origin_not_allowed", "internal", "shutting_down"}
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
    video_input: str = "rgb"  # codec mode: RGB24 frames in (-> video_output), or video tokens in (-> RGB24 out)
    video_output: tuple[str, ...] = ("rgb",)
    token: str | None = None
    codec_id: str | None = None  # the audio codec whose tokens the client speaks; refused when it is not the server's
    # The client cancels the echo of what it plays itself (browsers do); when not, the server cancels it with the
    # reply as reference (streaming/echo_cancel.py). None: the transport decides (WebRTC yes; WebSocket, phone no).
    echo_cancelled: bool | None = None
    turn_end: str | None = None  # chat: "semantic" (turn heads) or "silence" (silence alone); None: the server's
    # PCM input is live (a microphone): when the server is behind, the oldest waiting audio is dropped. False (audio
    # from a file, sent as fast as it goes): nothing is dropped; the server reads no faster than it processes.
    realtime: bool = True


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

    def rgb(self, size: tuple[int, int] = VIDEO_FRAME_SIZE) -> np.ndarray:
        """RGB24 payload -> uint8 [H, W, 3] (the size parse_binary checked it against)."""
        return np.frombuffer(self.payload, np.uint8).reshape(size[0], size[1], 3).copy()


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
        out["output"] = _outputs(msg, "output", OUTPUTS)
    if "input" in msg:
        if msg["input"] not in ("pcm", "tokens"):
            raise ProtocolError("bad_config", f"input must be 'pcm' or 'tokens', got {msg['input']!r}")
        out["input"] = msg["input"]
    if "video_input" in msg:
        if msg["video_input"] not in VIDEO_INPUTS:
            raise ProtocolError("bad_config", f"video_input must be 'rgb' or 'tokens', got {msg['video_input']!r}")
        out["video_input"] = msg["video_input"]
    if "video_output" in msg:
        out["video_output"] = _outputs(msg, "video_output", VIDEO_OUTPUTS)
    if "turn_end" in msg:
        if msg["turn_end"] not in TURN_ENDS:
            raise ProtocolError("bad_config", f"turn_end must be one of {list(TURN_ENDS)}, got {msg['turn_end']!r}")
        out["turn_end"] = msg["turn_end"]
    return out


def _outputs(msg: dict, key: str, allowed) -> tuple[str, ...]:
    """An output choice: one name or a non-empty list of names from `allowed` -> the names, once each, in order."""
    o = msg[key]
    o = [o] if isinstance(o, str) else o
    if not isinstance(o, list) or not o or any(not isinstance(x, str) or x not in allowed for x in o):
        raise ProtocolError("bad_config", f"{key} must be a list drawn from {list(allowed)}, got {msg[key]!r}")
    return tuple(dict.fromkeys(o))


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
        codec_id = msg.get("codec_id")
        if codec_id is not None and not isinstance(codec_id, str):
            raise ProtocolError("bad_config", "codec_id must be a string")
        echo_cancelled = msg.get("echo_cancelled")
        if echo_cancelled is not None and not isinstance(echo_cancelled, bool):
            raise ProtocolError("bad_config", f"echo_cancelled must be true or false, got {echo_cancelled!r}")
        realtime = msg.get("realtime", True)
        if not isinstance(realtime, bool):
            raise ProtocolError("bad_config", f"realtime must be true or false, got {realtime!r}")
        return Hello(version=version, token=token, codec_id=codec_id, echo_cancelled=echo_cancelled,
                     realtime=realtime, **_check_fields(msg, num_codebooks))
    if kind == "config":
        return Config(_check_fields(msg, num_codebooks))
    if kind == "end":
        return End()
    if kind == "ping":
        return Ping(msg.get("t"))
    raise ProtocolError("unknown_type", f"unknown message type {kind!r}")


def parse_binary(
    data: bytes,
    num_codebooks: int = 8,
    codebook_size: int = 1 << 16,
    video_frame_size: tuple[int, int] = VIDEO_FRAME_SIZE,
    video_tokens_per_frame: int = VIDEO_TOKENS_PER_FRAME,
    video_codebook_size: int = VIDEO_CODEBOOK_SIZE,
) -> BinaryFrame:
    """Header and payload checked against the codecs (codebooks, code range, frame size), so a frame that parses is
    usable."""
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
        n = video_tokens_per_frame
        if not 1 <= k <= MAX_VIDEO_FRAMES or len(payload) != 2 * n * k:
            raise ProtocolError(
                "bad_header",
                f"video token frame must hold 1..{MAX_VIDEO_FRAMES} frames of {n} "
                f"tokens, byte 2 says {k} and the payload is {len(payload)} bytes",
            )
        if int(np.frombuffer(payload, "<u2").max()) >= video_codebook_size:
            raise ProtocolError("bad_header", f"video token value out of range 0..{video_codebook_size - 1}")
    elif kind == KIND_RGB24:
        h, w = video_frame_size
        if k != 1 or len(payload) != h * w * 3:
            raise ProtocolError(
                "bad_header",
                f"an RGB24 frame holds one {w}x{h} frame ({h * w * 3} bytes, byte 2 = 1)"
                f"; byte 2 says {k} and the payload is {len(payload)} bytes",
            )
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
        HEADER.pack(
            KIND_VIDEO_TOKENS, PROTOCOL_VERSION, tokens.shape[0], flags, seq & 0xFFFFFFFF, timestamp & 0xFFFFFFFF
        )
        + np.ascontiguousarray(tokens).astype("<u2").tobytes()
    )


def rgb_frame(rgb: np.ndarray, seq: int, timestamp: int, flags: int = 0) -> bytes:
    """uint8 [H, W, 3] -> an RGB24 video binary frame."""
    return HEADER.pack(KIND_RGB24, PROTOCOL_VERSION, 1, flags, seq & 0xFFFFFFFF, timestamp & 0xFFFFFFFF) + (
        np.ascontiguousarray(rgb, np.uint8).tobytes()
    )


def event(kind: str, /, **fields: Any) -> str:
    """A JSON event. `kind` is positional-only: an event may have a field named `kind` (`barge_in` has)."""
    return json.dumps({"type": kind, **fields}, separators=(",", ":"))


def error_event(code: str, message: str) -> str:
    return event("error", code=code, message=message, fatal=code in FATAL)
