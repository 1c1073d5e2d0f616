"""WebRTC transport: one aiortc peer connection per session, a thin shell around the same `Session` as WebSocket.

The browser's microphone track (Opus, 48 kHz) is decoded by aiortc, downmixed to mono PCM16 by av's resampler and
handed to `Session.feed_audio` at 48 kHz (the session resamples to the codec's rate, exactly as for a WebSocket
client at 48 kHz); no wire frames are made or parsed. The peer is the session's `Sink`: audio goes into
`OpusPacedAudioTrack` (the outbound track: 20 ms frames against the clock, as aiortc's own tracks pace themselves,
coded to mono Opus packets by the track itself),
video reconstructions to the camera echo's track, JSON events out on the data channel the client opened. The track
is the one clock of the outbound audio: a chat reply is metered by it (`TrackPacer`, the session's pacer here), never
by a second, wall-clock pacer beside it. Client
JSON on the data channel (ping, config, end) goes to the session too, so the data channel speaks docs/protocol.md's
text messages.

When the offer also sends video (a camera) in codec mode, the camera goes through the video codec and comes back on
an outbound video track (talkstream/services/video_track.py, "see what the codec sees"); in chat mode it is coded
to tokens and kept for the Thinker, which sees the frames of each turn's time span.

Signaling is one `POST /offer` (talkstream/services/http.py). No STUN or TURN server is ever contacted unless one is
configured (`--ice-server`): aiortc would otherwise use Google's public STUN server.
"""

from __future__ import annotations

import asyncio
import fractions
import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import av
import numpy as np
import numpy.typing as npt
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.sdp import SessionDescription

from talkstream.errors import UserError
from talkstream.protocol import MODES, PROTOCOL_VERSION, Hello, event
from talkstream.services.registry import Refused
from talkstream.services.video_track import CameraEcho
from talkstream.streaming.metrics import latency_fields
from talkstream.streaming.stages import MediaOut
from talkstream.streaming.tasks import TaskSet
from talkstream.streaming.video import VideoOut

if TYPE_CHECKING:
    from talkstream.services.ports import ServerPort

log = logging.getLogger(__name__)

REFUSAL_STATUS = {"unauthorized": 401, "busy": 503, "origin_not_allowed": 403}  # registry refusals as HTTP
RATE = 48_000  # WebRTC audio (Opus) runs at 48 kHz
PTIME = 0.020  # outbound frame duration
FRAME = int(RATE * PTIME)
OPUS_BITRATE = 48_000  # outbound mono speech; aiortc's own encoder sends 96 kbps stereo
MAX_SDP_BYTES = 64 * 1024
MAX_PENDING_EVENTS = 256  # events held until the data channel opens


class OfferError(Exception):
    """A refused offer: an HTTP status and a protocol-style error code and message."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def parse_ice_server(spec: str) -> RTCIceServer:
    """`URL[,USERNAME,CREDENTIAL]`, e.g. `stun:stun.example.org:3478` or `turn:turn.example.org:3478,user,secret`."""
    parts = spec.split(",")
    if len(parts) not in (1, 3) or not parts[0].startswith(("stun:", "turn:", "turns:")):
        raise UserError(f"--ice-server wants URL or URL,USERNAME,CREDENTIAL with a stun:/turn:/turns: URL: {spec!r}")
    if len(parts) == 3:
        return RTCIceServer(urls=parts[0], username=parts[1], credential=parts[2])
    return RTCIceServer(urls=parts[0])


def allow_loopback_candidates() -> None:
    """aioice gathers host candidates on every interface but loopback; add 127.0.0.1 so a machine with no other
    interface (a sandbox, a CI container) can still connect to itself. Harmless elsewhere: one more candidate pair."""
    import aioice.ice

    original = aioice.ice.get_host_addresses
    if getattr(original, "talkstream_loopback", False):
        return

    def get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        addresses = original(use_ipv4, use_ipv6)
        return addresses + ["127.0.0.1"] if use_ipv4 and "127.0.0.1" not in addresses else addresses

    get_host_addresses.talkstream_loopback = True  # type: ignore[attr-defined]
    aioice.ice.get_host_addresses = get_host_addresses


def set_jitter_frames(receiver, frames: int) -> bool:
    """aiortc holds 4 audio packets (80 ms) in each receiver's jitter buffer before decoding, for smooth playout. The
    server plays nothing out: its pipeline takes frames as they come and its outbound track paces itself, so holding
    one packet (only to put reordered packets back in order) takes 60 ms off mouth-to-ear for nothing. aiortc has
    no setting for it; this swaps the private buffer and says False if aiortc's internals have moved."""
    from aiortc.jitterbuffer import JitterBuffer

    name = "_RTCRtpReceiver__jitter_buffer"
    if not isinstance(getattr(receiver, name, None), JitterBuffer):
        return False
    setattr(receiver, name, JitterBuffer(capacity=16, prefetch=frames))
    return True


class PacedAudioTrack(MediaStreamTrack):
    """Outbound audio: 20 ms mono PCM16 frames at 48 kHz against the clock (pts/time_base kept), silence on underrun.

    `push` adds audio with the monotonic time its input arrived at the server; when the first sample of a pushed
    chunk leaves, the delay since that arrival is recorded (the server's share of mouth-to-ear latency).

    Live audio (codec echo) comes in at the rate it goes out, so a backlog left by one late burst would stay for
    good: when the buffer never ran below `slack_s` during the last half second, the excess is dropped from its head
    (counted), and beyond `max_buffer_s` the oldest audio goes at once. Paced audio (a reply, pushed with
    `paced=True` through `TrackPacer`, which waits for room) is never dropped: while any is queued, nothing is.
    """

    kind = "audio"

    def __init__(self, max_buffer_s: float = 0.3, slack_s: float = 0.01):
        super().__init__()
        self.max_samples = int(max_buffer_s * RATE)
        self.slack = int(slack_s * RATE)
        self._floor: int | None = None  # the least audio left after a frame, this half second
        self._chunks: deque[tuple[np.ndarray, float | None, bool]] = deque()  # (pcm, arrived, paced)
        self._buffered = 0
        self._paced = 0  # of which paced
        self._start: float | None = None
        self._pts = 0
        self.latencies: deque[float] = deque(maxlen=500)
        self.dropped_samples = 0
        self.sent_samples = 0  # non-silent samples sent

    @property
    def buffered_s(self) -> float:
        return self._buffered / RATE

    @property
    def paced_s(self) -> float:
        return self._paced / RATE

    def push(self, pcm: np.ndarray, arrived: float | None = None, paced: bool = False) -> None:
        self._chunks.append((pcm, arrived, paced))
        self._buffered += pcm.size
        self._paced += pcm.size if paced else 0
        if self._buffered > self.max_samples:
            self._drop(self._buffered - self.max_samples)

    def _drop(self, n: int) -> None:
        """Live audio too far behind: n samples go from the head (none while paced audio is queued)."""
        if self._paced:
            return
        while n > 0 and self._chunks:
            old, _, _ = self._chunks[0]
            k = min(n, old.size)
            if k == old.size:
                self._chunks.popleft()
            else:
                self._chunks[0] = (old[k:], None, False)
            self._buffered -= k
            self.dropped_samples += k
            n -= k

    def clear_paced(self) -> int:
        """Barge-in: the paced audio still queued (the rest of a reply) goes; returns how many samples."""
        if not self._paced:
            return 0
        cut = self._paced
        self._chunks = deque(c for c in self._chunks if not c[2])
        self._buffered -= cut
        self._paced = 0
        return cut

    async def recv(self) -> av.AudioFrame | av.Packet:
        return await self.next_frame()

    async def next_frame(self) -> av.AudioFrame:
        """The next 20 ms frame, when the clock says it is due (what `recv` sends)."""
        if self.readyState != "live":
            raise MediaStreamError
        now = time.monotonic()
        if self._start is None:
            self._start = now
        else:
            wait = self._start + self._pts / RATE - now
            if wait > 0:
                await asyncio.sleep(wait)
            elif wait < -0.2:  # the loop stalled: restart the clock rather than send a burst to catch up
                self._start = now - self._pts / RATE
        out = np.zeros(FRAME, np.int16)
        filled = 0
        while filled < FRAME and self._chunks:
            pcm, arrived, paced = self._chunks[0]
            if arrived is not None:  # this chunk's first sample leaves now
                self.latencies.append(time.monotonic() - arrived)
            n = min(FRAME - filled, pcm.size)
            out[filled : filled + n] = pcm[:n]
            filled += n
            self._buffered -= n
            self._paced -= n if paced else 0
            if n == pcm.size:
                self._chunks.popleft()
            else:
                self._chunks[0] = (pcm[n:], None, paced)
        self.sent_samples += filled
        self._floor = self._buffered if self._floor is None else min(self._floor, self._buffered)
        if self._pts // FRAME % 25 == 24:  # every half second: trim a standing backlog
            if self._floor > self.slack:
                self._drop(self._floor - self.slack // 2)
            self._floor = None
        frame = av.AudioFrame.from_ndarray(out[None], format="s16", layout="mono")
        frame.sample_rate = RATE
        frame.pts = self._pts
        frame.time_base = fractions.Fraction(1, RATE)
        self._pts += FRAME
        return frame


class OpusPacedAudioTrack(PacedAudioTrack):
    """`PacedAudioTrack` that hands aiortc Opus packets it encoded itself, so aiortc only packs them into RTP.

    aiortc's own encoder upmixes every 20 ms frame to stereo through a resampler and codes it at 96 kbps with the
    most complex setting, in an executor hop per frame (one-off timing: 0.35 ms a frame); the session's audio is
    mono speech, coded here as mono at `OPUS_BITRATE` (0.1 ms a frame). Mono packets are valid on the negotiated
    opus/48000/2 stream: every Opus decoder takes both (RFC 7587). Each packet carries its frame's pts at 48 kHz,
    which aiortc turns into the RTP timestamp.
    """

    def __init__(self, max_buffer_s: float = 0.3, slack_s: float = 0.01):
        super().__init__(max_buffer_s, slack_s)
        self.encoder = av.CodecContext.create("libopus", "w")
        self.encoder.bit_rate = OPUS_BITRATE
        self.encoder.format = "s16"
        self.encoder.layout = "mono"
        self.encoder.sample_rate = RATE
        self.encoder.time_base = fractions.Fraction(1, RATE)
        self.encoder.options = {"application": "voip", "frame_duration": "20"}

    async def recv(self) -> av.Packet | av.AudioFrame:
        frame = await self.next_frame()
        packets = self.encoder.encode(frame)  # one 20 ms frame in, one packet out (libopus buffers nothing here)
        if len(packets) != 1:
            # Never seen; if it were, an exception would end the RTP loop and the audio with it, so the frame goes
            # to aiortc's own encoder instead (louder in the log than in the client's ears).
            log.warning("Opus encoder gave %d packets for one 20 ms frame; aiortc encodes this one", len(packets))
            return frame
        packet = packets[0]
        assert frame.time_base is not None  # next_frame stamps every frame
        packet.pts, packet.time_base = frame.pts, frame.time_base  # the frame's time, whatever the encoder's delay
        return packet


class TrackPacer:
    """A session's pacer for audio going out on a `PacedAudioTrack`: the track's own clock, not a second one.

    A chunk is handed over once the track holds at most `lead_s` of audio (enough that a late decode step does not
    underrun it); the track plays it at 20 ms a frame and never trims it. `playhead` is when what the track holds
    ends playing; `reset` (barge-in) drops the reply audio it still holds."""

    def __init__(self, track: PacedAudioTrack, lead_s: float = 0.06):
        self.track, self.lead_s = track, lead_s

    @property
    def playhead(self) -> float | None:
        return time.monotonic() + self.track.paced_s if self.track.paced_s else None

    async def wait(self, duration_s: float) -> None:
        while self.track.readyState == "live" and (ahead := self.track.buffered_s - self.lead_s) > 0:
            await asyncio.sleep(ahead)

    def reset(self) -> None:
        self.track.clear_paced()


@dataclass
class OfferParams:
    sdp: str
    mode: str = "codec"
    codebooks: int = 8
    session: str | None = None
    token: str | None = None


def parse_offer(body: object, num_codebooks: int) -> OfferParams:
    """The JSON body of POST /offer -> checked parameters; OfferError (400) otherwise."""
    if not isinstance(body, dict):
        raise OfferError(400, "bad_offer", "the body must be a JSON object {sdp, type, mode, codebooks}")
    sdp, kind = body.get("sdp"), body.get("type")
    if kind != "offer":
        raise OfferError(400, "bad_offer", f"type must be 'offer', got {kind!r}")
    if not isinstance(sdp, str) or not sdp.strip():
        raise OfferError(400, "bad_sdp", "sdp must be a non-empty string")
    if len(sdp) > MAX_SDP_BYTES:
        raise OfferError(413, "bad_sdp", f"sdp of {len(sdp)} bytes exceeds {MAX_SDP_BYTES}")
    mode = body.get("mode", "codec")
    if mode not in MODES:
        raise OfferError(400, "bad_config", f"mode must be one of {list(MODES)}, got {mode!r}")
    k = body.get("codebooks", num_codebooks)
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= num_codebooks:
        raise OfferError(400, "bad_config", f"codebooks must be an integer 1..{num_codebooks}, got {k!r}")
    session = body.get("session")
    if session is not None and not isinstance(session, str):
        raise OfferError(400, "bad_offer", "session must be a string")
    token = body.get("token")
    if token is not None and not isinstance(token, str):
        raise OfferError(400, "bad_offer", "token must be a string")
    try:
        parsed = SessionDescription.parse(sdp)
    except Exception as e:  # aiortc's parser raises whatever the bad line provokes
        raise OfferError(400, "bad_sdp", f"malformed SDP: {type(e).__name__}: {e}") from None
    if not parsed.media:
        raise OfferError(400, "bad_sdp", "malformed SDP: no media sections")
    if not any(m.kind == "audio" and m.direction in (None, "sendrecv", "sendonly") for m in parsed.media):
        raise OfferError(400, "no_audio", "the offer sends no audio: add a microphone track (sendrecv audio)")
    if not all(m.dtls is not None and m.dtls.fingerprints for m in parsed.media):
        raise OfferError(400, "bad_sdp", "the offer has no DTLS fingerprint, so it cannot be secured")
    return OfferParams(sdp, mode, k, session, token)


def mono_s16(frame: av.AudioFrame, resampler: av.AudioResampler) -> list[np.ndarray]:
    """A decoded frame -> mono PCM16 at 48 kHz. Opus gives packed s16 at 48 kHz: a numpy downmix, no resampler."""
    if frame.format.name == "s16" and frame.sample_rate == RATE:
        x = cast(npt.NDArray[np.int16], frame.to_ndarray()).reshape(-1, len(frame.layout.channels))  # s16 samples
        if x.shape[1] == 1:
            return [x[:, 0].copy()]
        return [((x[:, 0].astype(np.int32) + x[:, 1]) >> 1).astype("<i2")]  # Opus decodes to stereo: average L, R
    return [f.to_ndarray().reshape(-1).astype("<i2") for f in resampler.resample(frame)]


class PeerSession:
    """One browser (or aiortc) peer: its connection, its `Session`, the outbound track and the data channel."""

    def __init__(self, service: WebRTCService, params: OfferParams):
        self.service = service
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=list(service.ice_servers)))
        self.track = OpusPacedAudioTrack()
        self.session = service.server.open_session(self)
        self.camera = CameraEcho(self.session.video.stats)
        self._camera_used = False
        self.id = self.session.id
        self.params = params
        self.channel = None
        self._pending: deque[str] = deque(maxlen=MAX_PENDING_EVENTS)
        self._tasks = TaskSet(f"peer {self.session.id}")
        self._t0 = time.monotonic()
        self.closed = False
        self._pumping = False
        self.dropped_in = 0  # microphone samples dropped because the server was behind
        self.pc.on("track", self._on_track)
        self.pc.on("datachannel", self._on_datachannel)
        self.pc.on("connectionstatechange", self._on_state)

    # -- signaling ----------------------------------------------------------------------------------------------
    async def answer(self) -> RTCSessionDescription:
        try:
            await self.pc.setRemoteDescription(RTCSessionDescription(self.params.sdp, "offer"))
        except Exception as e:  # a parseable SDP aiortc still cannot use (no ICE credentials, no common codec)
            raise OfferError(400, "bad_sdp", f"unusable offer: {type(e).__name__}: {e}") from None
        self.pc.addTrack(self.track)  # takes the offer's audio transceiver: sendrecv
        for t in self.pc.getTransceivers():
            if t.kind == "audio":
                set_jitter_frames(t.receiver, self.service.jitter_frames)
        video = [t for t in self.pc.getTransceivers() if t.kind == "video"]
        if video and self.params.mode == "codec":
            self.pc.addTrack(self.camera.track)  # takes the first video transceiver: the camera comes back on it
        elif video and self.params.mode == "chat":
            video[0].direction = "recvonly"  # the Thinker watches; nothing is sent back
        for t in video:
            if t.sender.track is None and t.direction != "recvonly":  # a second camera: nobody reads it
                t.direction = "inactive"
        p = self.params  # the token is checked by the session too, as a WebSocket hello's
        # A browser cancels the echo of what it plays (getUserMedia's echoCancellation): the server need not.
        hello = Hello(PROTOCOL_VERSION, p.mode, RATE, p.codebooks, output=("pcm",), token=p.token, echo_cancelled=True)
        if not await self.session.open(hello):
            raise OfferError(500, "internal", "the session did not start")
        await self.pc.setLocalDescription(await self.pc.createAnswer())  # gathers every candidate (no trickle)
        self._spawn(self._latency_loop())
        self._spawn(self._connect_deadline())
        return self.pc.localDescription

    # -- media and events ---------------------------------------------------------------------------------------
    def _spawn(self, coro) -> asyncio.Task:
        return self._tasks.spawn(coro)

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio" and not self._pumping:
            self._pumping = True
            self._spawn(self._pump(track))  # one microphone per session: a second audio track is ignored
        elif track.kind == "video" and not self._camera_used:
            self._camera_used = True  # one camera per session: its transceiver is the one the reconstruction takes
            self._spawn(self.camera.pump(track, self.session))
        else:
            track.stop()

    async def _pump(self, track: MediaStreamTrack) -> None:
        """Microphone frames -> mono PCM at 48 kHz -> the session (its typed input: no wire frames)."""
        resampler = av.AudioResampler(format="s16", layout="mono", rate=RATE)
        # A browser sends audio packets all the time, silence included: none for a few seconds means the tab is
        # gone (closed, crashed, offline) well before ICE consent (30 s) would tell.
        idle = min(self.service.server.config.limits.idle_timeout_s, self.service.media_timeout_s)
        try:
            while not self.closed:
                try:
                    async with asyncio.timeout(idle):  # not wait_for: no task of its own per packet (Python 3.11)
                        frame = await track.recv()
                except TimeoutError:
                    await self.session.send_error("idle_timeout", f"no audio for {idle:.0f} s")
                    break
                for pcm in mono_s16(cast(av.AudioFrame, frame), resampler):  # an audio track's frames
                    if self.session.protocol.closed:  # `end` or an error ended it: whoever did closes the peer
                        return  # (closing here would cancel the draining that ends in the summary)
                    if self._behind():
                        self.dropped_in += pcm.size  # an overloaded server drops speech rather than fall behind
                        continue
                    now = time.monotonic()
                    ts = int((now - self._t0) * 1000) & 0xFFFFFFFF
                    if not await self.session.feed_audio(pcm.astype(np.float32) / 32768.0, ts, now):
                        self.service.spawn(self.close())  # this audio ended the session (its time was up)
                        return
        except MediaStreamError:
            pass  # the peer stopped sending
        self.service.spawn(self.close())

    def _behind(self) -> bool:
        """Codec echo, and more than `max_backlog_frames` items wait in the session's pipeline: the server is not
        keeping up. The pipeline's own queues would hold over a second of audio before dropping any, which an echo
        cannot afford. Chat keeps every word instead: a late answer is better than an answer to half a question."""
        p = self.session.input
        if p is None or self.params.mode != "codec":
            return False
        return sum(p.queue_depths().values()) > self.service.max_backlog_frames

    # -- the session's sink: audio to the outbound track, video to the camera track, events to the data channel
    def pacer(self) -> TrackPacer:
        return TrackPacer(self.track)

    async def media(self, out: MediaOut) -> None:
        if out.pcm is not None:
            x = np.clip(out.pcm, -1.0, 32767 / 32768)
            self.track.push(np.round(x * 32768).astype(np.int16), out.arrived, paced=out.paced)

    async def video(self, out: VideoOut) -> None:
        await self.camera.show(out)

    async def event(self, text: str) -> None:
        """A JSON event on the data channel. A client that stops reading it fills the channel's send buffer (SCTP
        keeps what is unacknowledged): past `max_channel_buffer` bytes the send waits, as a WebSocket's does, so
        the session's send timeout closes a client that takes nothing (`slow_consumer`) and the server's memory
        stays bounded."""
        channel = self.channel
        if channel is None or channel.readyState != "open":
            self._pending.append(text)
            return
        while channel.bufferedAmount > self.service.max_channel_buffer and channel.readyState == "open":
            await asyncio.sleep(0.02)
        if channel.readyState == "open":
            channel.send(text)

    def _on_datachannel(self, channel) -> None:
        self.channel = channel

        def flush() -> None:
            while self._pending and channel.readyState == "open":
                channel.send(self._pending.popleft())

        channel.on("open", flush)
        channel.on("message", lambda m: self._spawn(self._on_channel_message(m)))
        flush()

    async def _on_channel_message(self, message: bytes | str) -> None:
        if isinstance(message, bytes):
            if len(message) <= self.session.limits.max_message_bytes:
                await self.session.send_error("bad_header", "WebRTC sessions take audio on the media track only")
                return
        if not await self.session.on_message(message):
            await self.close()

    async def _connect_deadline(self) -> None:
        """An answer nobody connects to (the page went away during ICE) must not hold a session slot."""
        await asyncio.sleep(self.service.connect_timeout_s)
        if self.pc.connectionState != "connected":
            log.info("peer %s: not connected after %.0f s", self.id, self.service.connect_timeout_s)
            self.service.spawn(self.close())

    async def _latency_loop(self) -> None:
        """Every second: the server's share of mouth-to-ear latency (input arrival -> echo leaving the track)."""
        while True:
            await asyncio.sleep(self.service.server.config.limits.stats_interval_s)
            lat = list(self.track.latencies)
            if lat:
                await self.session.send(
                    event(
                        "latency",
                        **latency_fields(lat, "server_ms", digits=1),
                        frames=len(lat),
                        sent_s=round(self.track.sent_samples / RATE, 2),
                        dropped_s=round(self.track.dropped_samples / RATE, 3),
                        dropped_in_s=round(self.dropped_in / RATE, 3),
                    )
                )

    def _on_state(self) -> None:
        state = self.pc.connectionState
        log.info("peer %s: %s", self.id, state)
        if state in ("failed", "closed") and not self.closed:
            self.service.spawn(self.close())

    # -- ending -------------------------------------------------------------------------------------------------
    async def shut_down(self) -> None:
        """The server is stopping: the client is told on the data channel (`shutting_down`), then all is freed."""
        if not self.closed:
            await self.session.execute(self.session.protocol.fail("shutting_down", "the server is stopping"))
        await self.close()

    async def close(self) -> None:
        """Free everything, however the session ended (failed ICE, closed tab, `end`, shutdown, an error)."""
        if self.closed:
            return
        self.closed = True
        await self._tasks.cancel()
        await self.session.close()
        for _ in range(25):  # let the last events (summary, a fatal error) leave before the connection goes
            if self.channel is None or self.channel.readyState != "open" or not self.channel.bufferedAmount:
                break
            await asyncio.sleep(0.02)
        self.track.stop()
        self.camera.track.stop()
        await self.pc.close()
        self.service.forget(self)


class WebRTCService:
    """The registry of peer sessions of one server; sessions count against the server's `max_sessions`."""

    def __init__(
        self,
        server: ServerPort,
        ice_servers: list[RTCIceServer] | None = None,
        loopback: bool = True,
        jitter_frames: int = 1,
        connect_timeout_s: float = 20.0,
        media_timeout_s: float = 5.0,
        max_backlog_frames: int = 8,
        max_channel_buffer: int = 1 << 20,
    ):
        self.server = server
        self.jitter_frames = jitter_frames
        self.connect_timeout_s = connect_timeout_s
        self.media_timeout_s = media_timeout_s
        self.max_backlog_frames = max_backlog_frames
        self.max_channel_buffer = max_channel_buffer  # bytes the data channel may hold unread before sends wait
        self.ice_servers = list(ice_servers or [])  # empty: host candidates only, nothing outside is contacted
        self.peers: dict[str, PeerSession] = {}
        self.closed_ids: deque[str] = deque(maxlen=4096)  # to tell "closed" from "unknown" on a second offer
        self._tasks = TaskSet("webrtc")
        if loopback:
            allow_loopback_candidates()

    def spawn(self, coro) -> asyncio.Task:
        return self._tasks.spawn(coro)

    async def offer(self, body: object, origin: str | None = None) -> dict:
        """origin: the Origin header of the POST (a browser's page; None from other clients)."""
        srv = self.server
        sid = body.get("session") if isinstance(body, dict) else None
        if isinstance(sid, str):  # an offer for an existing session: refused whatever its SDP
            if sid in self.peers:
                raise OfferError(
                    409,
                    "renegotiation",
                    f"session {sid} is live; renegotiation is not supported: close it and post a new offer "
                    "without 'session'",
                )
            state = "closed" if sid in self.closed_ids else "unknown"
            raise OfferError(
                404, "session_closed", f"session {sid} is {state}; post a new offer without 'session' to start another"
            )
        params = parse_offer(body, srv.codec.num_codebooks)
        try:
            srv.sessions.admit(origin=origin, token=params.token, check_token=True)
        except Refused as e:
            raise OfferError(REFUSAL_STATUS[e.code], e.code, e.message) from None
        peer = PeerSession(self, params)
        self.peers[peer.id] = peer
        srv.sessions.add(peer.session, peer.shut_down)
        try:
            answer = await peer.answer()
        except BaseException as e:
            await peer.close()
            if isinstance(e, OfferError):
                srv.metrics.errors.labels(e.code).inc()
                raise
            if isinstance(e, Exception):
                log.exception("offer failed")
                raise OfferError(500, "internal", f"{type(e).__name__}: {e}") from None
            raise
        return {"sdp": answer.sdp, "type": answer.type, "session": peer.id}

    def forget(self, peer: PeerSession) -> None:
        if self.peers.pop(peer.id, None) is not None:
            self.closed_ids.append(peer.id)
        self.server.sessions.remove(peer.session)

    async def close_all(self) -> None:
        await asyncio.gather(*(p.close() for p in list(self.peers.values())), return_exceptions=True)
        await self._tasks.wait()
