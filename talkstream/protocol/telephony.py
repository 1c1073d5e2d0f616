"""Phone calls, sans-I/O: a telephony platform's media stream (Twilio Media Streams; Telnyx's variant) and its webhook.

A call's audio arrives over a WebSocket as JSON text: `connected`, `start` (the stream's ids and media format),
`media` (base64 G.711 at 8 kHz mono, 20 ms each), `dtmf` (a key pressed), `mark` (audio we sent has played), `stop`.
`MediaStream` takes each text message and returns typed events; it builds the messages we send back (`media`,
`mark`, `clear`). No socket, task or clock here: talkstream/services/telephony.py is the asyncio shell.

    stream = MediaStream()
    for e in stream.receive(text):   # CallStart, Audio (float32 PCM at 8 kHz), Keys, MarkPlayed, CallEnd, StreamError
        ...
    text = stream.media(stream.encode(pcm))   # our audio, G.711 as the call's format says
    name, text = stream.mark()                # echoed back as MarkPlayed(name) once the audio before it has played
    text = stream.clear()                     # the platform drops the audio it still holds (barge-in)

Telnyx sends the same events with snake_case fields (`stream_id`, `media_format`, `sample_rate`) and PCMU/PCMA for
the encoding; the dialect is read from `start`, and our messages follow it.

The webhook side: `twiml(stream_url)` is the TwiML that connects a call to the stream, `signature` and
`valid_signature` check `X-Twilio-Signature` (base64 HMAC-SHA1 of the full URL followed by the POST parameters
sorted by name, each name then value, keyed by the account's auth token).

G.711 is the standard library's `audioop` (Python 3.11, 3.12) or its registry copy `audioop-lts` (3.13 on).
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
import json
import warnings
from dataclasses import dataclass, field
from xml.sax.saxutils import quoteattr

import numpy as np

with warnings.catch_warnings():  # 3.11/3.12: "deprecated, removed in 3.13", where audioop-lts provides it
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

RATE = 8000  # G.711 telephony audio
FRAME_MS = 20
FRAME_SAMPLES = RATE * FRAME_MS // 1000  # 160 samples, 160 bytes of G.711
MAX_MESSAGE_BYTES = 64 * 1024
# encoding name -> (decode, encode) between G.711 bytes and PCM16 bytes
_G711 = {
    "audio/x-mulaw": "ulaw", "PCMU": "ulaw", "audio/x-alaw": "alaw", "PCMA": "alaw",
}
SILENCE = {"ulaw": b"\xff", "alaw": b"\xd5"}  # one sample of digital silence
DTMF_KEYS = set("0123456789*#ABCD")
FATAL = {"bad_media_format"}


def _check_encoding(encoding: str) -> None:
    if encoding not in SILENCE:
        raise ValueError(f"G.711 encoding must be 'ulaw' or 'alaw', got {encoding!r}")


def g711_decode(data: bytes, encoding: str) -> np.ndarray:
    """G.711 bytes ("ulaw" or "alaw") -> float32 [T]."""
    _check_encoding(encoding)
    pcm16 = audioop.ulaw2lin(data, 2) if encoding == "ulaw" else audioop.alaw2lin(data, 2)
    return np.frombuffer(pcm16, "<i2").astype(np.float32) / 32768.0


def g711_encode(pcm: np.ndarray, encoding: str) -> bytes:
    """float32 [T] -> G.711 bytes ("ulaw" or "alaw"), one per sample."""
    _check_encoding(encoding)
    x = np.round(np.clip(pcm, -1.0, 32767 / 32768) * 32768).astype("<i2").tobytes()
    return audioop.lin2ulaw(x, 2) if encoding == "ulaw" else audioop.lin2alaw(x, 2)


class CallState(enum.Enum):
    CONNECTING = "connecting"  # before `start`
    STREAMING = "streaming"
    ENDED = "ended"  # `stop`, or a fatal error


@dataclass(frozen=True)
class CallStart:
    stream_id: str
    call_id: str
    params: dict[str, str]  # Twilio's <Parameter>s (customParameters); Telnyx's client_state, if any
    encoding: str  # "ulaw" | "alaw"
    dialect: str  # "twilio" | "telnyx"


@dataclass(frozen=True)
class Audio:
    pcm: np.ndarray  # float32 [T] at 8 kHz, in [-1, 1)
    timestamp: int  # ms since the stream began, the platform's clock


@dataclass(frozen=True)
class Keys:
    digits: str  # one DTMF key: 0-9, *, #, A-D


@dataclass(frozen=True)
class MarkPlayed:
    name: str  # a mark we sent: the audio before it has played (or was cleared)


@dataclass(frozen=True)
class CallEnd:
    reason: str  # "stop" or a fatal error's code


@dataclass(frozen=True)
class StreamError:
    code: str
    message: str

    @property
    def fatal(self) -> bool:
        return self.code in FATAL


Event = CallStart | Audio | Keys | MarkPlayed | CallEnd | StreamError


class _Bad(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


def _get(d: dict, *names: str):
    """The first of `names` present in d (Twilio's camelCase, Telnyx's snake_case)."""
    for n in names:
        if n in d:
            return d[n]
    return None


@dataclass
class MediaStream:
    """One call's media stream, server side."""

    state: CallState = CallState.CONNECTING
    start: CallStart | None = None
    pending_marks: list[str] = field(default_factory=list)  # sent, not yet played, in order
    marks_sent: int = 0
    errors: int = 0

    # -- in ------------------------------------------------------------------------------------------------------
    def receive(self, text: str | bytes) -> list[Event]:
        """One message from the platform -> events. A malformed message is a `StreamError` and the call goes on; a
        media format we cannot speak ends it (fatal)."""
        if self.state is CallState.ENDED:
            return []
        try:
            return self._receive(text)
        except _Bad as e:
            self.errors += 1
            out: list[Event] = [StreamError(e.code, e.message)]
            if e.code in FATAL:
                self.state = CallState.ENDED
                out.append(CallEnd(e.code))
            return out

    def _receive(self, text: str | bytes) -> list[Event]:
        if isinstance(text, bytes):
            raise _Bad("bad_json", "binary message: a media stream speaks JSON text")
        if len(text) > MAX_MESSAGE_BYTES:
            raise _Bad("too_large", f"message of {len(text)} bytes exceeds {MAX_MESSAGE_BYTES}")
        try:
            msg = json.loads(text)
        except json.JSONDecodeError as e:
            raise _Bad("bad_json", f"not JSON: {e}") from None
        if not isinstance(msg, dict) or not isinstance(msg.get("event"), str):
            raise _Bad("bad_json", "a message must be a JSON object with a string 'event'")
        kind = msg["event"]
        if kind == "connected":
            return []
        if kind == "start":
            return self._start(msg)
        if kind == "stop":
            self.state = CallState.ENDED
            return [CallEnd("stop")]
        if kind not in ("media", "dtmf", "mark"):
            raise _Bad("unknown_event", f"unknown event {kind!r}")
        if self.state is not CallState.STREAMING:
            raise _Bad("not_started", f"{kind!r} before 'start'; it was dropped")
        body = msg.get(kind)
        if not isinstance(body, dict):
            raise _Bad("bad_event", f"{kind!r} without its {kind!r} object")
        if kind == "media":
            return self._media(body)
        if kind == "dtmf":
            digit = body.get("digit")
            if not isinstance(digit, str) or digit not in DTMF_KEYS:
                raise _Bad("bad_event", f"dtmf digit must be one of 0-9 * # A-D, got {digit!r}")
            return [Keys(digit)]
        name = body.get("name")
        if name not in self.pending_marks:
            raise _Bad("bad_event", f"mark {name!r} was never sent")
        # Marks play in order: one that comes back means every mark before it has played too.
        self.pending_marks = self.pending_marks[self.pending_marks.index(name) + 1 :]
        return [MarkPlayed(name)]

    def _start(self, msg: dict) -> list[Event]:
        if self.state is not CallState.CONNECTING:
            raise _Bad("bad_event", "a second 'start'; it was ignored")
        body = msg.get("start")
        if not isinstance(body, dict):
            raise _Bad("bad_event", "'start' without its 'start' object")
        dialect = "telnyx" if "stream_id" in msg or "media_format" in body else "twilio"
        fmt = _get(body, "mediaFormat", "media_format")
        if not isinstance(fmt, dict):
            raise _Bad("bad_media_format", "'start' has no mediaFormat")
        encoding, rate = fmt.get("encoding"), _get(fmt, "sampleRate", "sample_rate")
        channels = fmt.get("channels", 1)
        if encoding not in _G711 or rate != RATE or channels != 1:
            raise _Bad("bad_media_format", f"this server speaks G.711 (audio/x-mulaw, PCMU or PCMA) at 8000 Hz mono, "
                       f"not {encoding!r} at {rate!r} Hz with {channels!r} channels")
        stream_id = _get(msg, "streamSid", "stream_id") or _get(body, "streamSid", "stream_id")
        if not isinstance(stream_id, str) or not stream_id:
            raise _Bad("bad_event", "'start' carries no stream id (streamSid)")
        call_id = _get(body, "callSid", "call_control_id") or ""
        params = body.get("customParameters") or {}
        if dialect == "telnyx" and isinstance(body.get("client_state"), str):
            params = {"client_state": body["client_state"]}
        if not isinstance(params, dict):
            raise _Bad("bad_event", "customParameters must be an object")
        self.start = CallStart(stream_id, str(call_id), {str(k): str(v) for k, v in params.items()},
                               _G711[encoding], dialect)
        self.state = CallState.STREAMING
        return [self.start]

    def _media(self, body: dict) -> list[Event]:
        if body.get("track", "inbound") not in ("inbound", "inbound_track"):
            return []  # the platform's copy of what we sent (a both-tracks stream): not the caller's voice
        payload = body.get("payload")
        if not isinstance(payload, str) or not payload:
            raise _Bad("bad_media", "media without a base64 payload")
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise _Bad("bad_media", "media payload is not base64") from None
        try:
            ts = int(body.get("timestamp", 0))
        except (TypeError, ValueError):
            raise _Bad("bad_media", f"media timestamp must be a number of ms, got {body.get('timestamp')!r}") from None
        return [Audio(self.decode(data), ts & 0xFFFFFFFF)]

    # -- G.711 ---------------------------------------------------------------------------------------------------
    @property
    def encoding(self) -> str:
        return self.start.encoding if self.start is not None else "ulaw"

    def decode(self, data: bytes) -> np.ndarray:
        """G.711 bytes -> float32 [T] at 8 kHz."""
        return g711_decode(data, self.encoding)

    def encode(self, pcm: np.ndarray) -> bytes:
        """float32 [T] at 8 kHz -> G.711 bytes (one per sample)."""
        return g711_encode(pcm, self.encoding)

    def silence(self, samples: int) -> bytes:
        return SILENCE[self.encoding] * samples

    # -- out -----------------------------------------------------------------------------------------------------
    def _out(self, kind: str, **body) -> str:
        assert self.start is not None, "nothing is sent before the stream has started"
        msg: dict = {"event": kind}
        if self.start.dialect == "twilio":
            msg["streamSid"] = self.start.stream_id
        else:
            msg["stream_id"] = self.start.stream_id
        msg.update(body)
        return json.dumps(msg)

    def media(self, g711: bytes) -> str:
        """Our audio (G.711 bytes, 20 ms = 160 of them per message as the platform's own) as a `media` message."""
        return self._out("media", media={"payload": base64.b64encode(g711).decode()})

    def mark(self) -> tuple[str, str]:
        """A mark after the audio sent so far: (its name, the message). The platform echoes it once that audio has
        played (or has been cleared)."""
        self.marks_sent += 1
        name = f"reply-{self.marks_sent}"
        self.pending_marks.append(name)
        return name, self._out("mark", mark={"name": name})

    def clear(self) -> str:
        """The platform drops the audio it still holds; it sends back every pending mark."""
        return self._out("clear")


# -- the webhook ------------------------------------------------------------------------------------------------
def twiml(stream_url: str, params: dict[str, str] | None = None) -> str:
    """The TwiML that answers a call by connecting it to our media stream (bidirectional: <Connect><Stream>)."""
    inner = "".join(f"<Parameter name={quoteattr(k)} value={quoteattr(v)}/>" for k, v in (params or {}).items())
    url = quoteattr(stream_url)
    stream = f"<Stream url={url}>{inner}</Stream>" if inner else f"<Stream url={url}/>"
    return f'<?xml version="1.0" encoding="UTF-8"?>\n<Response><Connect>{stream}</Connect></Response>\n'


def signature(auth_token: str, url: str, params: dict[str, str] | list[tuple[str, str]]) -> str:
    """Twilio's X-Twilio-Signature for a POST to `url` with form `params`: base64(HMAC-SHA1(token, url + each
    name+value, sorted by name))."""
    items = sorted(params.items() if isinstance(params, dict) else params)
    data = url + "".join(k + v for k, v in items)
    return base64.b64encode(hmac.new(auth_token.encode(), data.encode(), hashlib.sha1).digest()).decode()


def valid_signature(auth_token: str, url: str, params: dict[str, str] | list[tuple[str, str]],
                    header: str | None) -> bool:
    """Does the request's X-Twilio-Signature header match? (A missing header does not.)"""
    if not header:
        return False
    return hmac.compare_digest(signature(auth_token, url, params).encode(), header.encode())
