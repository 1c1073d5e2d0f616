"""The built-in Thinker: Whisper's ears and tool calls, behind the Thinker seam (talkstream.chat.responder).

It hears the user's own audio (never the codec's reconstruction) block by block while the turn is spoken
(talkstream.models.ears), writes the transcript at the end of the turn, and answers with a tool call
(talkstream.models.tools) that the runtime runs: arithmetic, spelling, days and months, counting, the clock,
greetings. A tool that fails gets a spoken apology and an error event (`Heard.error`, sent by the conversation).

With video (a clip seen during the turn), the question goes to the learned Thinker of talkstream v1, which has a
video track (colour and direction questions); it reads the tokens of codec v1 (`V1Thinker` re-encodes the turn's
audio with that codec, kept shipped inside the Talker's voice codec), so only video turns use it.

`transcribe_only=True` is the speech-to-text mode (`--thinker transcribe`): a transcript event per turn, no reply.

`domain_context=True` (the built-in answerer) gives Whisper the questions its tools answer as previous text
(Whisper's prompt), which biases it toward their words ("how do you spell cup" rather than "sell cup"); the
transcript-only and OpenAI modes hear without it.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass

import numpy as np
import soxr
import torch

from talkstream.models import tools
from talkstream.models.ears import EarsState, TurnTooLong, WhisperEars
from talkstream.whisper.encoder import SAMPLE_RATE as EARS_RATE


@dataclass
class EarsHeard:
    state: EarsState
    resampler: soxr.ResampleStream
    transcript: str | None = None
    finish_ms: float | None = None
    cut: bool = False  # the turn was longer than one window: the rest was not heard
    error: dict | None = None  # an error event for the conversation to send ({"code", "message"})
    legacy: object | None = None  # the v1 Thinker's hearing, for a turn with video


class V1Thinker:
    """The v1 learned Thinker (talkstream.chat.responder.BuiltinThinker) with the codec it was trained on: it hears the
    turn's audio re-encoded by that codec, whole, at the end of the turn (no hearing ahead)."""

    hears_ahead = False

    def __init__(self, thinker, codec_v1):
        self.thinker, self.codec = thinker, codec_v1

    @property
    def sees_video(self) -> bool:
        return self.thinker.sees_video

    def warmup(self) -> None:
        self.transcript(self.hear(torch.zeros(1, 1, 8, dtype=torch.long)))

    # Hearing ahead is not done (the turn is re-encoded whole): what the seam asks for it, as no-ops.
    def start_hearing(self):
        return self.thinker.start_hearing()  # a typed turn's empty hearing

    def frames_short_of_a_position(self, heard, new: int) -> bool:
        return True

    def hear_more(self, heard, codes: torch.Tensor, pcm: np.ndarray | None = None):
        return heard

    def finish_hearing(self, heard, codes: torch.Tensor, pcm: np.ndarray | None = None):
        return self.hear(codes, None, pcm)

    def committed_text(self, heard) -> str:
        return ""

    def hear(self, codes: torch.Tensor, video: torch.Tensor | None = None, pcm: np.ndarray | None = None):
        if pcm is not None:
            with torch.inference_mode():
                codes = self.codec.encode(torch.from_numpy(np.ascontiguousarray(pcm, dtype=np.float32))[None, None])
        return self.thinker.hear(codes, video)

    def transcript(self, heard) -> str:
        return self.thinker.transcript(heard)

    def reply(self, heard, history: deque[dict] | None = None):
        return self.thinker.reply(heard, history)


# The questions the tools answer, as previous text for Whisper, and its GPT-2 token ids (checked against the text
# when the ears load: another vocabulary hears without the context).
DOMAIN_CONTEXT = (" How do you spell it? What day comes after Monday? What month comes after May? What is seven"
                  " times eight? Count from three to seven. Repeat after me. What time is it?")
DOMAIN_CONTEXT_IDS = [1374, 466, 345, 4822, 340, 30, 1867, 1110, 2058, 706, 3321, 30, 1867, 1227, 2058, 706, 1737, 30,
                      1867, 318, 3598, 1661, 3624, 30, 2764, 422, 1115, 284, 3598, 13, 30021, 706, 502, 13, 1867, 640,
                      318, 340, 30]


class EarsThinker:
    hears_ahead = True

    def __init__(self, ears: WhisperEars, codec, legacy=None, transcribe_only: bool = False,
                 domain_context: bool = False):
        """`codec`: decodes tokens for callers that hand over no audio; `legacy`: the v1 BuiltinThinker (video)."""
        self.ears, self.codec, self.legacy = ears, codec, legacy
        self.transcribe_only = transcribe_only
        self.rate = codec.sample_rate
        self.context = None
        if domain_context and ears.decoder.detokenize(DOMAIN_CONTEXT_IDS) == DOMAIN_CONTEXT.strip():
            self.context = DOMAIN_CONTEXT_IDS

    @property
    def sees_video(self) -> bool:
        """Video turns go to the v1 learned Thinker (`legacy`), when it has a video track."""
        return self.legacy is not None and self.legacy.sees_video

    def warmup(self) -> None:
        self.transcript(self.hear(torch.zeros(1, 1, 8, dtype=torch.long)))

    # --- hearing ---
    def start_hearing(self) -> EarsHeard:
        return EarsHeard(self.ears.start(), soxr.ResampleStream(self.rate, EARS_RATE, 1, dtype="float32"))

    def frames_short_of_a_position(self, heard: EarsHeard, new: int) -> bool:
        """Would `new` more codec frames still leave the ears short of a whole block? (Then hearing can wait.)"""
        pending = heard.state.pending.numel() + new * self.codec.frame_size * EARS_RATE / self.rate
        return pending < self.ears.block

    def _audio(self, codes: torch.Tensor, pcm: np.ndarray | None) -> np.ndarray:
        if pcm is not None:
            return np.asarray(pcm, dtype=np.float32).reshape(-1)
        with torch.inference_mode():  # only tokens were given: hear them through the codec
            return self.codec.decode(codes)[0, 0].numpy()[self.codec.decode_delay :]

    def _feed(self, heard: EarsHeard, audio: np.ndarray, last: bool) -> EarsHeard:
        x = heard.resampler.resample_chunk(audio, last=last)
        if heard.cut or not x.size:
            return heard
        room = self.ears.max_blocks * self.ears.block - heard.state.samples
        if x.size > room:  # past one window: the rest is not heard, and the reply says so by the cut flag
            x, heard.cut = x[:room], True
        try:
            heard.state = self.ears.hear(heard.state, torch.from_numpy(np.ascontiguousarray(x)))
        except TurnTooLong:
            heard.cut = True
        return heard

    def hear_more(self, heard: EarsHeard, codes: torch.Tensor, pcm: np.ndarray | None = None) -> EarsHeard:
        return self._feed(heard, self._audio(codes, pcm), last=False)

    def finish_hearing(self, heard: EarsHeard, codes: torch.Tensor, pcm: np.ndarray | None = None) -> EarsHeard:
        heard = self._feed(heard, self._audio(codes, pcm) if codes.shape[-1] else np.zeros(0, np.float32), True)
        t = self.ears.finish(heard.state, context=self.context)
        heard.transcript, heard.finish_ms = t.text, t.finish_ms
        return heard

    def hear(self, codes: torch.Tensor, video: torch.Tensor | None = None, pcm: np.ndarray | None = None
             ) -> EarsHeard:
        heard = self.finish_hearing(self.start_hearing(), codes, pcm)
        if video is not None and len(video) and self.legacy is not None:
            heard.legacy = self.legacy.hear(codes, video, pcm)
        return heard

    def transcript(self, heard: EarsHeard) -> str:
        return heard.transcript or ""

    def committed_text(self, heard: EarsHeard) -> str:
        """The words committed while the turn is spoken (ears built with `commit`; "" otherwise)."""
        return self.ears.committed_text(heard.state)

    # --- answering ---
    def answer(self, heard: EarsHeard) -> str:
        """The reply's text: a tool call's result, a spoken apology when the tool fails (and `heard.error`)."""
        if heard.cut:
            heard.error = {"code": "turn_cut", "message": f"the turn was cut at {self.ears.max_turn_s:.0f} s"}
        call = tools.choose_tool(self.transcript(heard))
        if call is None:
            return tools.UNKNOWN_REPLY if self.transcript(heard).strip() else ""
        try:
            return tools.run_tool(call)
        except tools.ToolError as e:
            heard.error = {"code": "tool_failed", "message": f"{call.name}: {e}"}
            return tools.FAILED_REPLY

    async def reply(self, heard: EarsHeard, history: deque[dict] | None = None
                    ) -> AsyncIterator[tuple[str, torch.Tensor | None]]:
        """Word by word, with no hidden state (the Talker speaks text)."""
        if self.transcribe_only:
            return
        if heard.legacy is not None:
            async for piece in self.legacy.reply(heard.legacy, history):
                yield piece
            return
        text = await asyncio.to_thread(self.answer, heard)
        words = text.split(" ")
        for i, w in enumerate(words):
            yield (w if i == len(words) - 1 else w + " "), None
