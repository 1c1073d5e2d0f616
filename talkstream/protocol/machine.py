"""The protocol's state machine, sans-I/O: client messages and clock ticks in, typed commands out.

As in websockets' `protocol.py`, nothing here touches a socket, a task or the clock: the caller passes the time it
read, feeds what arrived (`receive`), asks whether a deadline has passed (`expire`), reports a failure of its own
(`fail`), and carries out the commands that come back in order. Every input either becomes commands or an `Error`
command with a code (docs/protocol.md); nothing else ever leaves `receive`.

    AWAITING_HELLO --hello (version, token, codec, settings ok)--> OPEN --end--> CLOSED
          |                                                          |
          +-- a fatal error (bad_version, unauthorized, ...) --------+-- a fatal error, a limit, fail() --> CLOSED

Commands:
    Start(hello)          hello accepted: build the session with these settings, send `ready`
    Reconfigure(hello)    config accepted: the new settings in full; restart streaming state, send `ready`
    Media(frame)          a checked binary frame of a kind the session takes
    Pong(t)               answer a ping
    Error(code, message)  send an error event (and count it); fatal ones are followed by Close
    Finish()              `end`: drain what is queued, send `summary`
    Close(reason)         the session is over: the transport closes (reason: the error code, or "end")
"""

from __future__ import annotations

import dataclasses
import enum
import hmac
from dataclasses import dataclass
from typing import Any

from talkstream.protocol.wire import (
    FATAL,
    KIND_PCM16,
    KIND_RGB24,
    KIND_TOKENS,
    VIDEO_KINDS,
    BinaryFrame,
    Config,
    End,
    Hello,
    Ping,
    ProtocolError,
    parse_binary,
    parse_text,
)


class State(enum.Enum):
    AWAITING_HELLO = "awaiting_hello"
    OPEN = "open"
    CLOSED = "closed"


@dataclass(frozen=True)
class VideoFormat:
    """What video binary frames are checked against: the server's video codec."""

    frame_size: tuple[int, int] = (128, 128)
    tokens_per_frame: int = 256
    codebook_size: int = 1000


@dataclass(frozen=True)
class ServerRules:
    """What one server accepts: its codec's figures and its limits (the same for every session)."""

    num_codebooks: int = 8
    codebook_size: int = 1 << 16
    codec_id: str | None = None  # the audio codec's id; a hello naming another is refused (codec_mismatch)
    video: VideoFormat | None = None  # None: the server has no video codec, video frames are refused
    token: str | None = None  # shared secret a hello must carry
    max_message_bytes: int = 64 * 1024
    max_session_s: float = 3600.0
    idle_timeout_s: float = 30.0


@dataclass(frozen=True)
class Start:
    hello: Hello


@dataclass(frozen=True)
class Reconfigure:
    hello: Hello


@dataclass(frozen=True)
class Media:
    frame: BinaryFrame


@dataclass(frozen=True)
class Pong:
    t: Any = None


@dataclass(frozen=True)
class Error:
    code: str
    message: str

    @property
    def fatal(self) -> bool:
        return self.code in FATAL


@dataclass(frozen=True)
class Finish:
    pass


@dataclass(frozen=True)
class Close:
    reason: str


Command = Start | Reconfigure | Media | Pong | Error | Finish | Close


def check_settings(h: Hello) -> None:
    """Settings that parse but do not go together."""
    if h.mode == "chat" and h.input == "tokens":
        raise ProtocolError("bad_config", "chat mode takes PCM input")


class ServerProtocol:
    """One connection's protocol state, server side. `now` is any monotonic clock in seconds."""

    def __init__(self, rules: ServerRules, now: float):
        self.rules = rules
        self.state = State.AWAITING_HELLO
        self.hello: Hello | None = None  # the settings in force
        self.started = self.last_input = now
        self.close_reason: str | None = None

    @property
    def closed(self) -> bool:
        return self.state is State.CLOSED

    # -- input ------------------------------------------------------------------------------------------------
    def receive(self, data: bytes | str, now: float) -> list[Command]:
        """One message from the client -> the commands to carry out."""
        if self.closed:
            return []  # after the end nothing is read
        self.last_input = now
        if len(data) > self.rules.max_message_bytes:
            return [Error("too_large", f"message of {len(data)} bytes exceeds the limit of "
                                       f"{self.rules.max_message_bytes}; it was ignored")]
        if (out := self.expire(now)):
            return out
        try:
            return self._text(data) if isinstance(data, str) else self._binary(data)
        except ProtocolError as e:
            return self._error(e.code, e.message)

    def open(self, hello: Hello, now: float) -> list[Command]:
        """Settings that came by another way than a hello message (a WebRTC offer): checked as a hello's are."""
        if self.closed:
            return []
        self.last_input = now
        try:
            return self._hello(hello)
        except ProtocolError as e:
            return self._error(e.code, e.message)

    def activity(self, now: float) -> None:
        """Input that arrived by another way (a WebRTC media track) keeps the session from idling out."""
        self.last_input = now

    def deadline(self) -> float:
        """When `expire` will next have something to say (idle or session length), on the caller's clock."""
        return min(self.last_input + self.rules.idle_timeout_s, self.started + self.rules.max_session_s)

    def expire(self, now: float) -> list[Command]:
        """The limits of time: session_too_long, idle_timeout (fatal), or nothing while within them."""
        if self.closed:
            return []
        if now >= self.started + self.rules.max_session_s:
            return self._error("session_too_long", f"sessions last at most {self.rules.max_session_s:.0f} s")
        if now >= self.last_input + self.rules.idle_timeout_s:
            return self._error("idle_timeout", f"no message for {self.rules.idle_timeout_s:.0f} s")
        return []

    def fail(self, code: str, message: str) -> list[Command]:
        """The session itself failed (a stage died): report it and close. After `end` the session is still draining
        (its Finish runs before its Close): a failure then is reported too, once."""
        if self.closed and self.close_reason == "end":
            self.close_reason = code
            return [Error(code, message)]
        if self.closed:
            return []
        self.state = State.CLOSED
        self.close_reason = code
        return [Error(code, message), Close(code)]

    # -- the states -------------------------------------------------------------------------------------------
    def _error(self, code: str, message: str) -> list[Command]:
        if code not in FATAL:
            return [Error(code, message)]
        self.state = State.CLOSED
        self.close_reason = code
        return [Error(code, message), Close(code)]

    def _text(self, text: str) -> list[Command]:
        msg = parse_text(text, self.rules.num_codebooks)
        if isinstance(msg, Hello):
            return self._hello(msg)
        if self.hello is None:
            raise ProtocolError("not_ready", "send hello first")
        if isinstance(msg, Config):
            new = dataclasses.replace(self.hello, **msg.changes)
            check_settings(new)  # refused before anything changes: a bad config leaves the session as it was
            self.hello = new
            return [Reconfigure(new)]
        if isinstance(msg, Ping):
            return [Pong(msg.t)]
        assert isinstance(msg, End)
        self.state = State.CLOSED
        self.close_reason = "end"
        return [Finish(), Close("end")]

    def _hello(self, msg: Hello) -> list[Command]:
        if self.state is State.OPEN:
            raise ProtocolError("bad_config", "hello was already sent; use a config message to change settings")
        self._check_hello(msg)
        self.hello, self.state = msg, State.OPEN
        return [Start(msg)]

    def _check_hello(self, msg: Hello) -> None:
        r = self.rules
        if r.token is not None and not hmac.compare_digest((msg.token or "").encode(), r.token.encode()):
            raise ProtocolError("unauthorized", "missing or wrong token")
        if msg.codec_id is not None and r.codec_id is not None and msg.codec_id != r.codec_id:
            raise ProtocolError("codec_mismatch", f"this server's audio codec is {r.codec_id!r}, not "
                                f"{msg.codec_id!r}: its tokens would decode to wrong audio")
        check_settings(msg)

    def _binary(self, data: bytes) -> list[Command]:
        h = self.hello
        if h is None:
            raise ProtocolError("not_ready", "binary frame before hello; it was dropped")
        r = self.rules
        v = r.video or VideoFormat()
        frame = parse_binary(data, r.num_codebooks, r.codebook_size, v.frame_size, v.tokens_per_frame,
                             v.codebook_size)
        if frame.kind in VIDEO_KINDS:
            if r.video is None:
                raise ProtocolError("bad_header", "this server has no video codec; video frames are refused")
            if (frame.kind == KIND_RGB24) != (h.video_input == "rgb"):
                raise ProtocolError("bad_header", f"this session takes video_input {h.video_input!r}; "
                                    "set video_input in hello or config")
            return [Media(frame)]
        want = KIND_TOKENS if h.input == "tokens" else KIND_PCM16
        if frame.kind != want:
            raise ProtocolError("bad_header", f"this session takes {h.input} frames (set input in hello)")
        return [Media(frame)]
