"""Chat mode's half of a session: the user's turns in, the chat session's answers out, barge-in.

`ChatTurns` belongs to one `Session` and holds everything a conversation needs: the user's own `ChatSession`
(history, early hearing: opened once, kept across config changes, closed with the session), the reply pipeline
(SlidingWindowDecoder -> PCM at the client's rate), its pacer, the answer being made and its trace span. The session
hands it the turns its input pipeline collects and the VAD's speech starts; what it says leaves through the
session's own `send` and reply sender, so the transport sees one stream either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

import torch

from talkstream.chat import ChatModel, ChatSession
from talkstream.models.errors import ThinkerEndpointError
from talkstream.models.turn import Turn
from talkstream.protocol import event
from talkstream.streaming.pacing import Pacing
from talkstream.streaming.pipeline import Pipeline, PipelineFailed
from talkstream.streaming.stages import OutputStage, SlidingDecodeStage, TurnCollector
from talkstream.streaming.tracing import TurnSpan

if TYPE_CHECKING:
    from talkstream.services.session_video import SessionVideo
    from talkstream.streaming.codec_engine import CodecEngine
    from talkstream.streaming.metrics import Metrics

log = logging.getLogger(__name__)


class ChatHost(Protocol):
    """What `ChatTurns` uses of the session it belongs to (services/session.py's `Session`): its id, engine and
    counters, its output (events, errors, media) and its task set. A port, so this module imports no session."""

    id: str
    engine: CodecEngine
    limits: Any  # Limits: answer_timeout_s is read
    codec: Any  # the engine's codec (torch or onnx backend): frame_rate, sample_rate are read
    metrics: Metrics | None
    counts: dict[str, int]
    video: SessionVideo
    new_pacer: Callable[[], Pacing]

    async def send(self, text: str) -> None: ...

    async def send_error(self, code: str, message: str) -> None: ...

    async def send_media(self, pipeline: Pipeline, pacer: Pacing | None) -> None: ...

    async def fail(self, message: str) -> None: ...

    def spawn(self, coro: Awaitable) -> asyncio.Task: ...


KEYS_TURN_S = 1.5  # keys pressed in silence are a turn of their own once none has come for this long (or at #)


class ChatTurns:
    def __init__(self, session: ChatHost, responder: ChatModel):
        self.session, self.responder = session, responder
        self.chat: ChatSession | None = None
        self.reply: Pipeline | None = None
        self.pacer: Pacing | None = None  # made with the reply pipeline (`start`)
        self.sender: asyncio.Task | None = None  # the reply pipeline's output to the client, paced
        self._answering: asyncio.Task | None = None
        self._span: TurnSpan | None = None  # the turn being answered (OpenTelemetry, when installed)
        self._interrupting = asyncio.Lock()
        self._committed = ""  # the committed words of the turn being spoken, as last sent
        self._collector: TurnCollector | None = None
        self.keys = ""  # keys pressed (a phone's DTMF) not yet handed to the chat
        self._barge_pending = False  # speech began over the answer; the barge-in head has not judged it yet
        self._backchannel = False  # the speech now being spoken was judged a backchannel over the answer
        self._keys_due: asyncio.Task | None = None

    def collector(self) -> TurnCollector:
        """The input pipeline's last stage: codec tokens -> one turn per VAD end of turn, heard early by the chat."""
        if self.chat is None:  # kept across config changes: the conversation goes on
            self.chat = self.responder.open_session()
        ahead = self._listen_ahead if self.chat.reply_format.hears_ahead else None
        self._collector = TurnCollector(self.session.codec, on_speech=ahead)
        return self._collector

    @property
    def conversation(self) -> ChatSession:
        """The user's chat session (opened by `collector`, which every chat stream builds first)."""
        if self.chat is None:
            raise RuntimeError("chat: no conversation is open yet")
        return self.chat

    def _reply_out(self) -> tuple[Pipeline, Pacing, asyncio.Task]:
        """The reply pipeline, its pacer and its sender (made together by `start`)."""
        if self.reply is None or self.pacer is None or self.sender is None:
            raise RuntimeError("chat: the reply pipeline is not started")
        return self.reply, self.pacer, self.sender

    async def _listen_ahead(self, chunks: list, pcm_chunks: list) -> None:
        """The turn so far goes to the chat while it is spoken; the words it has committed of it (transcribe and
        openai modes) go to the client as they grow, a `transcript` event with `final: false`."""
        await self.conversation.listen_ahead(chunks, pcm_chunks)
        text = self.conversation.committed_text()
        if text and text != self._committed:
            await self.session.send(event("transcript", text=text, final=False))
        self._committed = text

    def start(self, codebooks: int, sample_rate: int) -> None:
        """The reply pipeline for the client's settings, and its sender."""
        s = self.session
        # The reply's codebooks are the chat's (the Talker speaks with its own), not the client's input.
        fmt = self.conversation.reply_format
        self.reply = Pipeline(
            [SlidingDecodeStage(s.engine, fmt.num_codebooks or codebooks, codec=fmt.voice_codec),
             OutputStage(s.codec.sample_rate, sample_rate, False, True)],
            s.metrics,
            live=False,
        )
        self.reply.start()
        self.pacer = s.new_pacer()
        self.sender = s.spawn(s.send_media(self.reply, self.pacer))

    def playing(self) -> bool:
        """An answer is being generated, is queued, or its audio has not finished playing at the client."""
        if self._answering is not None and not self._answering.done():
            return True
        if self.reply is None:
            return False
        reply, pacer, _ = self._reply_out()
        return any(q.qsize() for q in reply.queues) or (pacer.playhead or 0) > time.monotonic()

    def on_speech_start(self, judged: bool = False) -> None:
        """The VAD heard the user start speaking. Over an answer that is barge-in: at once (`judged` False), or once
        the barge-in head has said whether it is an interruption or a backchannel (`on_barge`)."""
        self._backchannel = False
        self._barge_pending = judged and self.playing()
        if self.playing() and not judged:
            self.session.spawn(self.interrupt())

    def on_barge(self, kind: str, p_backchannel: float) -> None:
        """The barge-in head's verdict on speech that began over the answer ("backchannel" or "interruption"), or
        "long": speech taken as a backchannel went on too long to be one. A backchannel leaves the answer playing
        and is not answered; the client learns which it was (`barge_in` event)."""
        s = self.session
        if kind == "long":
            if not self._backchannel:
                return
            self._backchannel = False
            kind = "interruption"
        elif not self._barge_pending:
            return  # nothing was playing when this speech began: an ordinary turn
        self._barge_pending = False
        playing = self.playing()
        if kind == "backchannel" and playing:
            self._backchannel = True
            s.counts["backchannels"] = s.counts.get("backchannels", 0) + 1
            s.spawn(s.send(event("barge_in", kind="backchannel", p_backchannel=round(p_backchannel, 3))))
        elif kind == "interruption":
            s.spawn(s.send(event("barge_in", kind="interruption", p_backchannel=round(p_backchannel, 3))))
            if playing:
                s.spawn(self.interrupt())

    async def interrupt(self) -> None:
        """Barge-in: the user speaks over the answer; stop it now and reset every reply stage."""
        s = self.session
        async with self._interrupting:  # the VAD and a new turn may both ask at once: one interruption at a time
            if not self.playing():
                return
            if self._span is not None:
                self._span.event("barge_in")
            if self._answering is not None:
                self._answering.cancel()
                await asyncio.gather(self._answering, return_exceptions=True)
            if self.reply is not None:
                reply, pacer, sender = self._reply_out()
                # The reply sender may hold a chunk it is pacing: replace it too, with a fresh clock.
                sender.cancel()
                await asyncio.gather(sender, return_exceptions=True)
                await reply.interrupt()
                pacer.reset()  # a track's pacer drops the reply audio it still holds
                self.sender = s.spawn(s.send_media(reply, pacer))
            s.counts["interruptions"] += 1
            if self._span is not None:
                self._span.end()
            await s.send(event("reply", state="interrupted"))

    def on_keys(self, keys: str) -> None:
        """Keys the user pressed (DTMF on a phone line) reach the Thinker as text (`ChatSession.type_text`): keys
        pressed while the user speaks join that turn's transcript, after the words; keys pressed in silence are a
        turn of their own once no key has come for `KEYS_TURN_S` or at `#` (which ends them and is not sent)."""
        if self.chat is None or not self.chat.reply_format.reads_text:
            log.info("session %s: keys %r ignored: this chat reads no text", self.session.id, keys)
            return
        self.keys += keys.replace("#", "")
        if self._keys_due is not None:
            self._keys_due.cancel()
        self._keys_due = self.session.spawn(self._keys_turn(0.0 if "#" in keys else KEYS_TURN_S))

    async def _keys_turn(self, after_s: float) -> None:
        await asyncio.sleep(after_s)
        if not self.keys or (self._collector is not None and self._collector.speaking):
            return  # nothing pressed, or the user is speaking: the keys go with that turn (`take_turns`)
        s = self.session
        s.counts["turns"] += 1
        if self.playing():
            await self.interrupt()
        self.conversation.type_text(self.keys)
        self.keys = ""
        codes = torch.zeros(1, self.conversation.reply_format.num_codebooks or 1, 0, dtype=torch.long)
        self._answering = s.spawn(self._answer(Turn(codes, None)))

    async def take_turns(self, turns: Pipeline) -> None:
        """Answer every turn the input pipeline collects, one at a time (a new turn interrupts the answer)."""
        s = self.session
        while (turn := await turns.get()) is not None:
            if self._backchannel:  # "mm-hm" over the answer: the answer goes on, the backchannel is not a turn
                self._backchannel = False
                continue
            s.counts["turns"] += 1
            if self.playing():
                await self.interrupt()
            video = None
            if self.conversation.reply_format.sees_video:  # what the camera showed while the turn was spoken
                end = time.monotonic()
                video = s.video.seen_during(end - turn.shape[-1] / s.codec.frame_rate, end)
            if self.keys:  # pressed while this turn was spoken
                self.conversation.type_text(self.keys)
                self.keys = ""
            self._answering = s.spawn(self._answer(turn, video))
        if turns.error is not None:
            await s.fail(f"stream stopped: {turns.error}")

    async def _answer(self, turn: Turn, video: torch.Tensor | None = None) -> None:
        """One turn's answer. A failing answer (the endpoint down, a model error) is an error event and a log line;
        what was said of it still plays, the reply ends, and the next turn is answered as usual."""
        s = self.session
        reply = self.reply
        if reply is None:  # the stream stopped (a config change) before the answer began
            return
        fields = {"video_frames": int(video.shape[0])} if video is not None else {}
        if self._span is not None:  # the previous turn's span lasts until this one begins (its audio played)
            self._span.end()
        span = self._span = TurnSpan(s.id, int(turn.shape[-1]))
        await s.send(event("reply", state="start", frames=int(turn.shape[-1]), **fields))
        answer = self.conversation.respond(turn, video)
        loop = asyncio.get_running_loop()
        deadline: float | None = loop.time() + s.limits.answer_timeout_s  # until the first audio
        try:
            while True:
                try:
                    async with asyncio.timeout_at(deadline):
                        item = await anext(answer)
                except StopAsyncIteration:
                    break
                except TimeoutError:
                    log.warning("session %s: no answer audio %.0f s after the turn; given up", s.id,
                                s.limits.answer_timeout_s)
                    span.event("error", code="reply_timeout")
                    await s.send_error("reply_timeout", f"the answer was not ready {s.limits.answer_timeout_s:.0f} "
                                       "s after the turn (the server is overloaded); it was given up")
                    with contextlib.suppress(Exception):
                        await answer.aclose()
                    break
                if isinstance(item, dict):  # transcript, reply text, latency: events beside the audio
                    fields = dict(item)
                    kind = str(fields.pop("type"))
                    if kind == "reply_text" and fields.get("text"):
                        span.event("first_reply_text")
                    elif kind == "error":
                        span.event("error", code=fields.get("code", ""))
                    await s.send(event(kind, **fields))
                else:
                    span.event("first_audio")
                    deadline = None
                    await reply.put(item)
        except PipelineFailed:
            return  # the reply's decoder failed: its sender reports it and the session ends
        except ThinkerEndpointError as e:
            log.warning("session %s: the Thinker's endpoint failed: %s", s.id, e)
            span.event("error", code="thinker_unavailable")
            await s.send_error("thinker_unavailable", str(e))
        except Exception as e:
            log.exception("session %s: the answer failed", s.id)
            span.event("error", code="reply_failed")
            await s.send_error("reply_failed", f"the answer failed: {type(e).__name__}: {e}")
        try:
            await reply.put(None)  # flush the decoder's last frames
        except PipelineFailed:
            return
        span.event("reply_end")
        await s.send(event("reply", state="end"))

    async def finish(self) -> None:
        """The input has ended and its turns are taken: let the last answer finish and play out."""
        if self._answering is not None:
            await asyncio.gather(self._answering, return_exceptions=True)
        if self.reply is not None:
            reply, _, sender = self._reply_out()
            await reply.end()
            await asyncio.gather(sender, return_exceptions=True)

    async def stop(self) -> None:
        """Stop the reply (a config change or the end); the chat session and its history stay until `close`."""
        if self.reply is not None:
            await self.reply.stop()
        if self._keys_due is not None:
            self._keys_due.cancel()
        self.reply = self._answering = self.sender = self._keys_due = None

    def close(self) -> None:
        if self._span is not None:
            self._span.end()
        if self.chat is not None:
            self.chat.close()
            self.chat = None
