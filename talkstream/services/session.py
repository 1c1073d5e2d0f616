"""One client session, transport-agnostic: typed input in, a `Sink` of audio, video and events out.

Two ways in: a transport with the protocol's wire frames (WebSocket) hands every message to `on_message`; one with
its own media (WebRTC) calls `open(hello)`, `feed_audio(pcm, timestamp)` and `on_message` for control text only.
Either way the protocol's state machine (talkstream/protocol/machine.py) decides, and the transport closes when a
call returns False. Output leaves through the transport's `Sink` as `MediaOut` (tokens and/or float PCM at the
client's rate), `VideoOut` and JSON events; no wire bytes are made or parsed inside the session. A session owns
all its state (pipelines, codec, VAD, reply); the only thing shared between sessions is the batched `CodecEngine`,
which keeps no session state.

Modes:
- codec: PCM in -> tokens and/or reconstructed PCM out, frame by frame; or tokens in -> PCM out.
- chat: speech in -> VAD end of turn -> `self.turns` (session_chat.py): the session's own `ChatSession` (opened from
  the server's `ChatModel`: the Thinker-Talker, or `EchoResponder`, which says each turn back through the same token
  path) answers with codec tokens -> SlidingWindowDecoder -> paced PCM out; the user speaking during the answer
  interrupts it (barge-in).

Video (codec mode, when the server has a video codec) runs beside the audio in `self.video` (session_video.py):
RGB frames in -> video tokens and/or the reconstruction out, or video tokens in -> RGB out.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np

from talkstream.chat import ChatModel
from talkstream.protocol import (
    KIND_TOKENS,
    PROTOCOL_VERSION,
    VIDEO_KINDS,
    BinaryFrame,
    Command,
    Error,
    Finish,
    Hello,
    Media,
    Pong,
    Reconfigure,
    ServerProtocol,
    ServerRules,
    Start,
    VideoFormat,
    error_event,
    event,
)
from talkstream.services.registry import ConversationSlots
from talkstream.services.session_chat import ChatTurns
from talkstream.services.session_video import SessionVideo
from talkstream.streaming.codec_engine import CodecEngine
from talkstream.streaming.echo_cancel import EchoCancelStage
from talkstream.streaming.metrics import Metrics, latency_fields
from talkstream.streaming.pacing import Pacer, Pacing
from talkstream.streaming.pipeline import Pipeline, PipelineFailed, Stage
from talkstream.streaming.stages import (
    AudioChunk,
    CodecStage,
    MediaOut,
    OutputStage,
    ResampleIn,
    TokenDecodeStage,
    TokensIn,
    VoiceActivity,
    VoiceActivityTap,
)
from talkstream.streaming.tasks import TaskSet
from talkstream.streaming.turn_taking import TurnTaking
from talkstream.streaming.vad import SileroVAD, VADEvent
from talkstream.streaming.video import VideoOut

log = logging.getLogger(__name__)
_ABORTS = TaskSet("session aborts")  # transports closing a session: not the session's own tasks, which close cancels
# Codec mode hands its VAD branch audio in blocks of two VAD windows (64 ms): its events only inform the client, and
# a call per packet was most of the VAD thread's cost (VoiceActivityTap).
VAD_TAP_BLOCK_S = 0.064


@dataclass
class Limits:
    max_message_bytes: int = 64 * 1024
    max_session_s: float = 3600.0
    idle_timeout_s: float = 30.0
    token: str | None = None  # shared secret checked in hello, before any audio is accepted
    stats_interval_s: float = 1.0
    frames_per_step: int = 2  # codec frames per step: 1 = lowest latency, more = more sessions per core
    send_timeout_s: float = 10.0  # a client that takes no message for this long is closed (slow_consumer)
    # Chat: an answer whose first audio is not ready this long after its turn ended (an overloaded server, a stuck
    # endpoint) is given up with a `reply_timeout` error: a late answer is no answer in a conversation.
    answer_timeout_s: float = 10.0


def _rules(codec, video_codec, limits: Limits) -> ServerRules:
    """What the protocol checks a session's messages against: the server's codecs and limits."""
    video = None if video_codec is None else VideoFormat(
        tuple(video_codec.frame_size), video_codec.num_codebooks, video_codec.codebook_size)
    return ServerRules(
        num_codebooks=codec.num_codebooks, codebook_size=codec.codebook_size, codec_id=codec.cfg.codec_id,
        video=video, token=limits.token, max_message_bytes=limits.max_message_bytes,
        max_session_s=limits.max_session_s, idle_timeout_s=limits.idle_timeout_s,
    )


class Sink(Protocol):
    """Where a session's output goes: its transport. Each call may wait while the client's buffer is full.

    A sink whose audio plays against a clock of its own (a WebRTC track) also has `pacer() -> Pacing`, bound to that
    clock: the session meters replies with it and makes no wall-clock `Pacer` (one pacer per outbound stream).
    Output metered so comes with `MediaOut.paced` set, and the sink must not drop it."""

    async def media(self, out: MediaOut) -> None: ...  # audio and/or tokens at the client's settings

    async def event(self, text: str) -> None: ...  # a JSON event (docs/protocol.md)

    async def video(self, out: VideoOut) -> None: ...  # codec mode: video tokens and/or the reconstruction


class Session:
    def __init__(
        self,
        engine: CodecEngine,
        vad: SileroVAD,
        responder: ChatModel,
        limits: Limits,
        sink: Sink,
        metrics: Metrics | None = None,
        video_codec=None,
        abort: Callable[[str, str], Awaitable[None]] | None = None,
        turn_taking: TurnTaking | None = None,
        turn_end: str = "silence",
        conversations: ConversationSlots | None = None,
    ):
        """video_codec: a VideoCodec (None: the session refuses video frames). abort(code, message): the transport
        closes the connection with that reason (a client that stopped reading cannot be sent an error event)."""
        self.id = uuid.uuid4().hex[:12]
        self.engine, self.vad, self.responder = engine, vad, responder
        # Chat: the turn heads (shared, stateless) and the server's default for a hello that names no `turn_end`.
        self.turn_taking, self.turn_end_default = turn_taking, turn_end
        self.conversations = conversations  # the worker's chat slots (None: no limit); a chat hello takes one
        self.codec = engine.codec
        self.limits, self.metrics = limits, metrics
        self.sink, self._abort = sink, abort
        self.protocol = ServerProtocol(_rules(self.codec, video_codec, limits), time.monotonic())
        self.hello: Hello | None = None  # the settings in force (the protocol's, once the session has built them)
        self.started = self.protocol.started
        self.input: Pipeline | None = None
        self.vad_branch: Pipeline | None = None  # codec mode: the VAD beside the codec path
        self.echo: EchoCancelStage | None = None  # chat mode, a client that does not cancel its own echo
        self._branch_drained: asyncio.Task | None = None  # the task that reads the branch to its end
        self._tasks = TaskSet(f"session {self.id}", on_error=self._task_failed)
        self.new_pacer: Callable[[], Pacing] = getattr(sink, "pacer", None) or Pacer
        self._senders: list[asyncio.Task] = []
        self.frame_latencies: deque[float] = deque(maxlen=2000)  # bounded however long the call
        self.counts = {"frames_in": 0, "frames_out": 0, "errors": 0, "turns": 0, "interruptions": 0}
        self.closed = False
        self.turns = ChatTurns(self, responder)  # chat mode's conversation (session_chat.py)
        self.video = SessionVideo(video_codec, metrics, lambda out: self._deliver(self.sink.video(out)),
                                  self._video_failed)

    # -- sending ----------------------------------------------------------------------------------------------
    async def send(self, text: str) -> None:
        """A JSON event to the client."""
        await self._deliver(self.sink.event(text))

    async def _deliver(self, sending: Coroutine[Any, Any, None]) -> None:
        if self.closed:
            sending.close()  # a coroutine never awaited
            return
        try:
            # The transport waits while its buffer is full: a client that stops reading holds every send here, so
            # what the server keeps for it stays bounded (the queues behind fill, live input drops), and past the
            # timeout the session is closed.
            async with asyncio.timeout(self.limits.send_timeout_s):
                await sending
        except TimeoutError:
            if self.closed:  # another send timed out first and has closed the session
                return
            log.warning("session %s: the client took nothing for %.0f s; closing it", self.id,
                        self.limits.send_timeout_s)
            self.closed = True
            if self.metrics is not None:
                self.metrics.errors.labels("slow_consumer").inc()
            if self._abort is not None:
                self._spawn_abort(f"the client read nothing for {self.limits.send_timeout_s:.0f} s")
        except Exception as e:  # the transport is gone (client vanished): stop sending; the transport cleans up
            log.info("session %s: send failed (%s); no more output", self.id, type(e).__name__)
            self.closed = True

    def _spawn_abort(self, message: str) -> None:
        # Not one of the session's tasks: closing the session (which cancels those) must not cancel its own abort.
        assert self._abort is not None  # the caller checks
        _ABORTS.spawn(self._abort("slow_consumer", message))

    async def send_error(self, code: str, message: str) -> None:
        self.counts["errors"] += 1
        if self.metrics is not None:
            self.metrics.errors.labels(code).inc()
        await self.send(error_event(code, message))

    def spawn(self, coro: Awaitable) -> asyncio.Task:
        """A task of this session's: cancelled when it closes; a failure is logged and counted, never silent."""
        return self._tasks.spawn(coro)

    def _task_failed(self, e: BaseException) -> None:
        """The tasks report what they expect, so a task's failure is a bug: logged (by TaskSet) and counted."""
        self.counts["errors"] += 1

    async def send_media(self, pipeline: Pipeline, pacer: Pacing | None) -> None:
        """A pipeline's output to the client until it ends, metered by `pacer` when there is one."""
        while (out := await pipeline.get()) is not None:
            if pacer is not None:
                if out.audio_s:
                    await pacer.wait(out.audio_s)
                out = replace(out, paced=True)
            await self._deliver(self.sink.media(out))
            if self.echo is not None and out.pcm is not None:
                self.echo.play(out.pcm, time.monotonic())  # the reference: what the client's microphone may hear
            self.counts["frames_out"] += (out.tokens is not None) + (out.pcm is not None)
            if out.arrived is not None and out.audio_s:
                dt = time.monotonic() - out.arrived
                self.frame_latencies.append(dt)
                if self.metrics is not None:
                    self.metrics.frame_latency.observe(dt)
        if pipeline.error is not None:
            await self.fail(f"stream stopped: {pipeline.error}")

    async def fail(self, message: str) -> None:
        """Something inside the session broke: a fatal `internal` error to the client, and the session ends."""
        await self.execute(self.protocol.fail("internal", message))

    # -- receiving --------------------------------------------------------------------------------------------
    async def on_message(self, data: bytes | str) -> bool:
        """Handle one message; False when the session is over (the transport then closes)."""
        return await self.execute(self.protocol.receive(data, time.monotonic()))

    async def expire(self) -> bool:
        """The transport's clock ran out (`protocol.deadline()`): False when a limit ended the session."""
        return await self.execute(self.protocol.expire(time.monotonic()))

    async def execute(self, commands: list[Command]) -> bool:
        """Carry out the protocol's commands; False when the session is over."""
        try:
            for cmd in commands:
                await self._execute(cmd)
        except PipelineFailed as e:
            await self.execute(self.protocol.fail("internal", f"stream stopped: {e}"))
        except Exception as e:  # never a traceback to the client, never a silently dead session
            log.exception("session %s failed", self.id)
            await self.execute(self.protocol.fail("internal", f"{type(e).__name__}: {e}"))
        return not self.protocol.closed

    async def _execute(self, cmd: Command) -> None:
        if isinstance(cmd, Media):
            await self._on_frame(cmd.frame)
        elif isinstance(cmd, Error):
            await self.send_error(cmd.code, cmd.message)
        elif isinstance(cmd, Start):
            if not await self._admit(cmd.hello):
                return
            self.hello = cmd.hello
            await self._build()
            await self.send(self._ready_event())
        elif isinstance(cmd, Reconfigure):
            if not await self._admit(cmd.hello):
                return
            await self._teardown()
            self.hello = cmd.hello
            await self._build()
            await self.send(self._ready_event())
        elif isinstance(cmd, Pong):
            await self.send(event("pong", t=cmd.t))
        elif isinstance(cmd, Finish):
            await self.finish()

    async def _admit(self, hello: Hello) -> bool:
        """A chat hello takes one of the worker's conversation slots (a codec one gives back any it held); when all
        are taken the session ends with a fatal `busy`, before anything is built."""
        if self.conversations is None:
            return True
        if hello.mode != "chat":
            self.conversations.release(self)
            return True
        if self.conversations.take(self):
            return True
        await self.execute(self.protocol.fail(
            "busy", f"this server holds {self.conversations.limit} conversations at once and all are taken; try "
            "again shortly"))
        return False

    async def _on_frame(self, frame: BinaryFrame) -> None:
        """A checked wire frame -> the typed input below."""
        if frame.kind in VIDEO_KINDS:
            await self.video.on_frame(frame, self.hello)
        elif frame.kind == KIND_TOKENS:
            await self._tokens(TokensIn(frame.tokens(), frame.timestamp, time.monotonic()))
        else:
            await self._audio(AudioChunk(frame.pcm(), frame.timestamp, time.monotonic()))

    # -- the typed API: what a transport without wire frames calls ----------------------------------------------
    async def open(self, hello: Hello) -> bool:
        """Open with the client's settings (checked as a hello message's are); False when refused (the error was
        sent)."""
        return await self.execute(self.protocol.open(hello, time.monotonic()))

    async def feed_audio(self, pcm: np.ndarray, timestamp: int, arrived: float | None = None) -> bool:
        """Audio at the session's sample rate (float32 [T] in [-1, 1)), with the client's timestamp in ms. Live
        audio (hello `realtime`, the default) is dropped oldest-first when the server is behind; other audio waits
        for room. False when the session is over."""
        now = time.monotonic()
        self.protocol.activity(now)
        if not await self.execute(self.protocol.expire(now)):
            return False
        if self.hello is None or self.input is None:
            return await self.execute([Error("not_ready", "audio before the session was opened; it was dropped")])
        if self.hello.input != "pcm":
            return await self.execute([Error("bad_header", "this session takes tokens (set input to pcm)")])
        await self._audio(AudioChunk(pcm, timestamp, now if arrived is None else arrived))
        return True

    async def feed_keys(self, keys: str) -> bool:
        """Keys the user pressed (a phone's DTMF: 0-9 * # A-D). Chat mode hands them to the Thinker as text
        (`ChatTurns.on_keys`); codec mode has no use for them. False when the session is over."""
        now = time.monotonic()
        self.protocol.activity(now)
        if not await self.execute(self.protocol.expire(now)):
            return False
        if self.hello is not None and self.hello.mode == "chat":
            self.turns.on_keys(keys)
        return True

    async def _audio(self, chunk: AudioChunk) -> None:
        assert self.input is not None  # built at the hello: the protocol refuses media before it
        self.counts["frames_in"] += 1
        if self.input.live:
            self.input.feed(chunk)  # live audio: the oldest is dropped when behind
        else:
            await self.input.put(chunk)  # audio sent faster than real time: wait (the transport stops reading)

    async def _tokens(self, item: TokensIn) -> None:
        assert self.input is not None  # built at the hello: the protocol refuses media before it
        self.counts["frames_in"] += 1
        await self.input.put(item)  # tokens are never dropped: wait when full

    # -- pipelines --------------------------------------------------------------------------------------------
    def _ready_event(self) -> str:
        c, h = self.codec, self.hello
        assert h is not None  # sent once the hello is in force
        return event(
            "ready",
            version=PROTOCOL_VERSION,
            session=self.id,
            worker=os.getpid(),  # the server process holding it (serve --workers N)
            mode=h.mode,
            sample_rate=h.sample_rate,
            codebooks=h.codebooks,
            output=list(h.output),
            input=h.input,
            echo_cancel=self.echo is not None,
            realtime=h.realtime,
            codec={
                "codec_id": c.cfg.codec_id,
                "sample_rate": c.sample_rate,
                "frame_rate": c.frame_rate,
                "frame_size": c.frame_size,
                "num_codebooks": c.num_codebooks,
                "codebook_size": c.codebook_size,
                "algorithmic_latency_ms": c.algorithmic_latency_ms,
            },
            limits={
                "max_message_bytes": self.limits.max_message_bytes,
                "max_session_s": self.limits.max_session_s,
                "idle_timeout_s": self.limits.idle_timeout_s,
            },
            **self.video.ready_fields(h),
        )

    async def _build(self) -> None:
        h, sr = self.hello, self.codec.sample_rate
        assert h is not None  # built for the hello in force
        stages: list[Stage]
        if h.input == "tokens":
            stages = [TokenDecodeStage(self.engine, h.codebooks), OutputStage(sr, h.sample_rate, False, True)]
            self.input = Pipeline(stages, self.metrics, live=False)
        elif h.mode == "codec" and not h.realtime:
            # Audio sent faster than real time: the VAD in line, so that nothing waits where it could drop; the
            # pipeline's input waits when full, and the transport with it (backpressure to the client).
            stages = [
                ResampleIn(h.sample_rate, sr),
                VoiceActivity(self.vad, sr, self._on_vad, self.engine),
                CodecStage(self.engine, h.codebooks, "pcm" in h.output, self.limits.frames_per_step),
                OutputStage(sr, h.sample_rate, "tokens" in h.output, "pcm" in h.output),
            ]
            self.input = Pipeline(stages, self.metrics, live=False, fused=True)
        elif h.mode == "codec":
            # One task per session for the whole echo path (fused), and the VAD on a branch of its own: a codec
            # echo waits for nothing but the codec (docs/benchmarks.md: where a loaded worker's time went).
            self.vad_branch = Pipeline([VoiceActivity(self.vad, sr, self._on_vad, self.engine, pass_through=False)],
                                       self.metrics)
            self.vad_branch.start()
            self._branch_drained = self.spawn(self._drain_branch(self.vad_branch))
            stages = [
                ResampleIn(h.sample_rate, sr),
                VoiceActivityTap(self.vad_branch.feed, min_samples=int(VAD_TAP_BLOCK_S * sr)),
                CodecStage(self.engine, h.codebooks, "pcm" in h.output, self.limits.frames_per_step),
                OutputStage(sr, h.sample_rate, "tokens" in h.output, "pcm" in h.output),
            ]
            self.input = Pipeline(stages, self.metrics, fused=True)
        else:
            # A client that does not cancel its echo (WebSocket, phone) has the reply taken out of its microphone.
            self.echo = None if h.echo_cancelled else EchoCancelStage(h.sample_rate, sr)
            stages = [
                ResampleIn(h.sample_rate, sr),
                *([self.echo] if self.echo is not None else []),
                VoiceActivity(self.vad, sr, self._on_vad, self.engine,
                              turn_taking=self.turn_taking if self.turn_end() == "semantic" else None,
                              replying=self.turns.playing),
                CodecStage(self.engine, h.codebooks, False, self.limits.frames_per_step),
                self.turns.collector(),
            ]
            self.input = Pipeline(stages, self.metrics, live=h.realtime)
        self.input.start()
        if h.mode == "chat":
            self.turns.start(h.codebooks, h.sample_rate)
            self._senders = [self.spawn(self.turns.take_turns(self.input))]
        else:
            # Live PCM in: output follows the input's own clock, so it goes out as it is made. A pacer here would
            # ratchet: every late input frame moves its playhead forward for good, and on a loaded server the
            # echo drifted 200-400 ms behind. Token input can run ahead of real time: that is paced.
            pacer = self.new_pacer() if h.input == "tokens" else None
            self._senders = [self.spawn(self.send_media(self.input, pacer))]
        self.spawn(self._stats_loop())

    async def _drain_branch(self, branch: Pipeline) -> None:
        """A branch yields nothing but its end; a stage of it that fails ends the session, visibly."""
        while await branch.get() is not None:
            pass
        if branch.error is not None:
            await self.fail(f"voice activity stopped: {branch.error}")

    def turn_end(self) -> str:
        """How this session's turns end: its hello's `turn_end`, else the server's (semantic needs the heads)."""
        chosen = (self.hello.turn_end if self.hello is not None else None) or self.turn_end_default
        return chosen if self.turn_taking is not None else "silence"

    def _on_vad(self, e: VADEvent) -> None:
        if e.kind in ("start", "end"):
            self.spawn(self.send(event("vad", state=e.kind, t=round(e.time_s, 3))))
        if e.kind == "start":
            self.turns.on_speech_start(judged=self.turn_end() == "semantic")
        elif e.kind == "hold":  # a pause the end-of-turn head judged mid-sentence: the turn stays open
            self.spawn(self.send(event("turn", state="held", t=round(e.time_s, 3), p_complete=round(e.probability, 3))))
        elif e.kind in ("backchannel", "interruption", "long"):
            self.turns.on_barge(e.kind, e.probability)

    async def _stats_loop(self) -> None:
        while True:
            await asyncio.sleep(self.limits.stats_interval_s)
            await self.send(event("stats", **self.stats()))

    def stats(self) -> dict:
        drops = sum(s.drops for p in (self.input, self.vad_branch, self.turns.reply) if p for s in p.stats.values())
        return {
            **self.counts,
            "drops": drops,
            **latency_fields(self.frame_latencies, "latency_ms"),
            **self.video.stats_fields(),
        }

    def pipelines(self) -> list[Pipeline]:
        """The session's running pipelines (input, reply, video), for the server's queue-depth gauges."""
        return [p for p in (self.input, self.vad_branch, self.turns.reply, self.video.pipeline) if p is not None]

    async def _video_failed(self, message: str) -> None:
        await self.fail(message)

    # -- ending -----------------------------------------------------------------------------------------------
    async def finish(self) -> None:
        """The client has sent everything: drain what is queued, send the summary."""
        if self.input is not None:
            await self.input.end()
            await asyncio.gather(*self._senders, return_exceptions=True)  # chat: every turn taken
            if self.vad_branch is not None and self._branch_drained is not None:  # its last events before the summary
                await self.vad_branch.end()
                await asyncio.gather(self._branch_drained, return_exceptions=True)
            if self.hello is not None and self.hello.mode == "chat":  # set with the input
                await self.turns.finish()
        await self.video.finish()
        await self.send(
            event(
                "summary",
                session=self.id,
                seconds=round(time.monotonic() - self.started, 3),
                **self.stats(),
                stages={
                    **(self.input.summary() if self.input else {}),
                    **(self.vad_branch.summary() if self.vad_branch else {}),
                    **({"reply_" + k: v for k, v in self.turns.reply.summary().items()} if self.turns.reply else {}),
                    **(self.video.pipeline.summary() if self.video.pipeline else {}),
                },
            )
        )

    async def _teardown(self) -> None:
        for p in (self.input, self.vad_branch):
            if p is not None:
                await p.stop()
        await self.turns.stop()
        await self.video.stop()
        await self._tasks.cancel()
        self.input = self.vad_branch = self._branch_drained = self.echo = None

    async def shut_down(self) -> None:
        """The server is stopping: tell the client (a fatal `shutting_down`), then free everything."""
        await self.execute(self.protocol.fail("shutting_down", "the server is stopping; reconnect later"))
        await self.close()

    async def close(self) -> None:
        """Free everything (called by the transport however the session ended: clean end, error, vanished)."""
        self.closed = True
        if self.conversations is not None:
            self.conversations.release(self)
        await self._teardown()
        await self.video.close()
        self.turns.close()
