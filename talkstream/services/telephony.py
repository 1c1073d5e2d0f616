"""The telephony transport: a phone call delivered by a platform's media stream (Twilio Media Streams, Telnyx), a thin
shell around the same `Session` as WebSocket and WebRTC.

    POST /twilio/voice   (HTTP port)      -> TwiML: <Connect><Stream url="wss://HOST/twilio"/>, signature checked
    WebSocket /twilio    (WebSocket port) <- connected, start, media, dtmf, mark, stop
                                          -> media (the reply, G.711 at 8 kHz, 20 ms a message against the clock),
                                             mark (after each reply), clear (barge-in)

Each call is a `PhoneCall`: the stream's JSON goes through the sans-I/O `MediaStream`
(talkstream/protocol/telephony.py); at `start` a session opens as if its hello said `mode: chat, sample_rate: 8000,
output: ["pcm"]` (the session resamples with soxr, as for any client at 8 kHz), caller audio goes to
`Session.feed_audio`, keys to `Session.feed_keys` (chat: the Thinker reads them as text). The call is the session's
`Sink`: reply PCM at 8 kHz is coded to G.711 into a `PhoneLine`, whose sender sends one 20 ms `media` message per 20
ms, and whose `LinePacer` is the session's pacer (one clock for the outbound audio, as a WebRTC track's). Barge-in
resets that pacer: the line drops what it holds and sends `clear`. A `mark` follows each reply once its audio has all
been sent; the platform echoes it when the caller has heard it.

The stream's `start` may carry parameters (TwiML <Parameter>; for Telnyx, the stream URL's query): `token` (the
server's --token, which the TwiML this server writes carries when one is set) and `mode` (`chat`, default, or `codec`:
the caller hears themself through the codec). The platform sends no events of ours: what the session says
(transcripts, replies) is logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import urllib.parse
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import websockets
from websockets.asyncio.server import ServerConnection

from talkstream.protocol import MODES, PROTOCOL_VERSION, Hello
from talkstream.protocol.telephony import (
    FRAME_SAMPLES,
    RATE,
    Audio,
    CallEnd,
    CallStart,
    Keys,
    MarkPlayed,
    MediaStream,
    StreamError,
)
from talkstream.services.registry import Refused
from talkstream.streaming.stages import MediaOut
from talkstream.streaming.tasks import TaskSet
from talkstream.streaming.video import VideoOut

if TYPE_CHECKING:
    from talkstream.services.ports import ServerPort
    from talkstream.services.session import Session

log = logging.getLogger(__name__)

PATHS = ("/twilio", "/telnyx")  # WebSocket paths of the media stream (one handler: the dialect is read from `start`)
FRAME_S = FRAME_SAMPLES / RATE
MAX_LIVE_S = 0.3  # codec echo: unpaced audio beyond this much in the line is dropped from its head
MARK_QUIET_FRAMES = 3  # the line sent nothing for this many frames after `reply end`: the reply's audio is all out


class PhoneLine:
    """Outbound audio of one call: G.711 bytes, one `media` message of 20 ms per 20 ms against the monotonic clock.

    A reply's audio is pushed `paced` (metered in by `LinePacer`, never dropped); codec echo's audio is live and a
    backlog past `MAX_LIVE_S` is trimmed. `reply_ended` asks for a mark once the line has run dry; `clear` (barge-in)
    drops what is held and sends `clear`."""

    def __init__(self, stream: MediaStream, send: Callable[[str], Awaitable[None]]):
        self.stream, self.send = stream, send
        self.buffer = bytearray()
        self.paced = 0  # bytes of the buffer that are a reply's
        self._mark_due = False
        self._dry = 0  # frames sent empty since `reply_ended`
        self._clear = False
        self.sent_frames = 0
        self.wake = asyncio.Event()

    @property
    def buffered_s(self) -> float:
        return len(self.buffer) / RATE

    def push(self, g711: bytes, paced: bool) -> None:
        self.buffer += g711
        if paced:
            self.paced += len(g711)
        elif not self.paced and len(self.buffer) > MAX_LIVE_S * RATE:
            del self.buffer[: len(self.buffer) - int(MAX_LIVE_S * RATE)]
        self.wake.set()

    def reply_ended(self) -> None:
        self._mark_due, self._dry = True, 0
        self.wake.set()  # an idle line still owes the mark

    def clear(self) -> None:
        """Barge-in: the reply still held goes, the platform is told to drop what it holds (`clear`)."""
        self.buffer.clear()
        self.paced = 0
        self._mark_due = False
        self._clear = True
        self.wake.set()

    async def run(self) -> None:
        """The sender: every 20 ms, the next 20 ms of audio (a last partial frame padded with silence)."""
        start, n = time.monotonic(), 0
        while True:
            if not self.buffer and not self._clear and not self._mark_due:
                self.wake.clear()
                await self.wake.wait()  # idle line: nothing is sent, and the clock restarts with the next audio
                start, n = time.monotonic(), 0
            wait = start + n * FRAME_S - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            elif wait < -0.2:  # the loop stalled: restart the clock rather than send a burst
                start, n = time.monotonic(), 0
            n += 1
            if self._clear:
                self._clear = False
                await self.send(self.stream.clear())
            if self.buffer:
                frame = bytes(self.buffer[:FRAME_SAMPLES])
                del self.buffer[:FRAME_SAMPLES]
                self.paced = max(0, self.paced - len(frame))
                await self.send(self.stream.media(frame + self.stream.silence(FRAME_SAMPLES - len(frame))))
                self.sent_frames += 1
                self._dry = 0
            elif self._mark_due:
                self._dry += 1
                if self._dry >= MARK_QUIET_FRAMES:  # the decoder's last block came and went: the reply is all out
                    self._mark_due = False
                    name, text = self.stream.mark()
                    await self.send(text)
                    assert self.stream.start is not None  # replies go out on a started stream (mark() checks it)
                    log.debug("stream %s: %s after the reply", self.stream.start.stream_id, name)


class LinePacer:
    """The session's pacer for a call: a chunk is handed to the line once it holds at most `lead_s` of audio; the
    line's own clock plays it. `reset` (barge-in) clears the line."""

    def __init__(self, line: PhoneLine, lead_s: float = 0.06):
        self.line, self.lead_s = line, lead_s

    @property
    def playhead(self) -> float | None:
        return time.monotonic() + self.line.buffered_s if self.line.paced else None

    async def wait(self, duration_s: float) -> None:
        while (ahead := self.line.buffered_s - self.lead_s) > 0:
            await asyncio.sleep(ahead)

    def reset(self) -> None:
        self.line.clear()


class PhoneCall:
    """One call: its WebSocket, its `MediaStream`, its `Session` (made at `start`), its outbound `PhoneLine`."""

    def __init__(self, transport: TelephonyTransport, ws: ServerConnection):
        self.transport, self.server, self.ws = transport, transport.server, ws
        self.stream = MediaStream()
        self.session: Session | None = None
        self.line = PhoneLine(self.stream, self._send)
        self.events: deque[dict] = deque(maxlen=256)  # what the session said (the platform takes none of it)
        self.played: list[str] = []  # marks the platform says have played
        self._tasks = TaskSet("phone call")
        self.closed = False

    async def _send(self, text: str) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):  # the platform went away: the reader ends the call
            await self.ws.send(text)

    # -- the session's sink ----------------------------------------------------------------------------------------
    def pacer(self) -> LinePacer:
        return LinePacer(self.line)

    async def media(self, out: MediaOut) -> None:
        if out.pcm is not None:
            self.line.push(self.stream.encode(out.pcm), out.paced)

    async def video(self, out: VideoOut) -> None:
        pass  # a phone has no screen (and a call's session takes no video)

    async def event(self, text: str) -> None:
        e = json.loads(text)
        self.events.append(e)
        kind = e.get("type")
        if kind == "reply" and e.get("state") == "end":
            self.line.reply_ended()
        elif kind in ("transcript", "reply_text") and e.get("final"):
            log.info("call %s: %s: %s", self.id, kind, e.get("text"))
        elif kind == "error":
            log.log(logging.WARNING if e.get("fatal") else logging.INFO, "call %s: %s: %s", self.id, e.get("code"),
                    e.get("message"))

    @property
    def id(self) -> str:
        return self.session.id if self.session is not None else "-"

    # -- the call ----------------------------------------------------------------------------------------------------
    async def run(self) -> None:
        """Read the stream until the call ends (stop, a fatal error, the session's end, the platform gone)."""
        limits = self.server.config.limits
        opened = time.monotonic()
        while True:
            deadline = self.session.protocol.deadline() if self.session else opened + limits.idle_timeout_s
            try:
                async with asyncio.timeout(max(deadline - time.monotonic(), 0.001)):
                    data = await self.ws.recv()
            except TimeoutError:
                if self.session is None:
                    log.info("media stream: no 'start' within %.0f s", limits.idle_timeout_s)
                    return
                if not await self.session.expire():
                    return
                continue
            for e in self.stream.receive(data):
                if not await self._on(e):
                    return

    async def _on(self, e) -> bool:
        """One stream event; False when the call is over."""
        if isinstance(e, Audio | Keys):
            assert self.session is not None  # opened at CallStart: the stream refuses media and keys before it
            if isinstance(e, Audio):
                return await self.session.feed_audio(e.pcm, e.timestamp)
            return await self.session.feed_keys(e.digits)
        if isinstance(e, MarkPlayed):
            self.played.append(e.name)
            return True
        if isinstance(e, CallStart):
            return await self._open(e)
        if isinstance(e, StreamError):
            self.server.metrics.errors.labels(e.code).inc()
            log.log(logging.WARNING if e.fatal else logging.INFO, "call %s: %s: %s", self.id, e.code, e.message)
            return True  # a fatal one is followed by CallEnd
        assert isinstance(e, CallEnd)
        log.info("call %s: ended (%s)", self.id, e.reason)
        return False

    async def _open(self, start: CallStart) -> bool:
        # Parameters come in `start` (Twilio's <Parameter>s) or in the stream URL's query (Telnyx has no others).
        assert self.ws.request is not None  # the handshake is done
        query = urllib.parse.parse_qsl(urllib.parse.urlsplit(self.ws.request.path).query)
        params = {**dict(query), **start.params}
        mode = params.get("mode", "chat")
        registry = self.server.sessions
        try:
            if mode not in MODES:
                raise Refused("bad_config", f"stream parameter mode must be one of {list(MODES)}, got {mode!r}")
            registry.admit(token=params.get("token"), check_token=True)
        except Refused as e:
            log.warning("call %s refused: %s: %s", start.call_id, e.code, e.message)
            return False
        session = self.session = self.server.open_session(self, self._abort)
        registry.add(session, self.shut_down)
        self.transport.calls[session.id] = self
        self._tasks.spawn(self.line.run())
        # A phone line may carry the reply back (speakerphones, cheap handsets): the server cancels that echo.
        hello = Hello(PROTOCOL_VERSION, mode, RATE, self.server.codec.num_codebooks, output=("pcm",),
                      token=params.get("token"), echo_cancelled=False)
        log.info("call %s: stream %s (%s, %s) is session %s", start.call_id, start.stream_id, start.dialect,
                 start.encoding, session.id)
        return await session.open(hello)

    async def _abort(self, code: str, message: str) -> None:
        """The platform stopped reading: close the stream with the code as its reason."""
        with contextlib.suppress(Exception):
            async with asyncio.timeout(self.server.config.limits.send_timeout_s):
                await self.ws.close(1008, code)

    async def shut_down(self) -> None:
        """The server is stopping: the call ends (the platform hangs up or moves to the TwiML's next verb)."""
        if self.session is not None:
            await self.session.shut_down()
        await self.ws.close(1001, "shutting_down")

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.session is not None:
            await self.session.close()
            self.server.sessions.remove(self.session)
        await self._tasks.cancel()
        with contextlib.suppress(websockets.ConnectionClosed):
            await self.ws.close()


class TelephonyTransport:
    """The server's calls: one `PhoneCall` per media-stream WebSocket (ws.py hands over the paths in `PATHS`)."""

    def __init__(self, server: ServerPort):
        self.server = server
        self.calls: dict[str, PhoneCall] = {}  # by session id, while live
        self.ended: deque[PhoneCall] = deque(maxlen=16)  # the last calls that ended (tests read what they said)

    async def handle(self, ws: ServerConnection) -> None:
        call = PhoneCall(self, ws)
        try:
            await call.run()
        except websockets.ConnectionClosed:
            log.info("call %s: the platform went away", call.id)
        finally:
            await call.close()
            if call.session is not None:
                self.calls.pop(call.session.id, None)
                self.ended.append(call)
