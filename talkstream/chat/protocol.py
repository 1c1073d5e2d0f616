"""The chat seam: what a server answers chat turns with (`ChatModel`, shared, holding no user's state), the
per-connection `ChatSession` it opens (one user's history and early hearing, closed with the session) with the
`ReplyFormat` it declares, and the `Thinker` the built-in chat model (`chat.responder`) hears and answers through.

Every member is required. What an implementation cannot do it declares (a `ReplyFormat` field, a Thinker's flags)
and implements as a no-op, so no caller probes for an attribute.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, TypeVar, runtime_checkable

import numpy as np
import torch

from talkstream.models.turn import Turn

if TYPE_CHECKING:
    from talkstream.codecs.audio.codec import AudioCodec
    from talkstream.models.thinker import ThinkerState


@dataclass(frozen=True)
class ReplyFormat:
    """What a chat session's answers are and what it reads beside the audio: the session's code reads these."""

    num_codebooks: int | None = None  # the reply's token blocks [1, K, n]: K, or None for the client's codebooks
    voice_codec: AudioCodec | None = None  # a decoder of the reply's own (the Talker's voice), or None: the server's
    sees_video: bool = False  # `respond` is handed the video tokens seen during the turn
    reads_text: bool = False  # `type_text` (a phone's keys) joins the next turn; else typed text is ignored
    hears_ahead: bool = False  # `listen_ahead` hears the turn while it is spoken, `committed_text` may grow


@runtime_checkable
class ChatSession(Protocol):
    """One user's chat (their history, the turn heard so far): opened per session, closed with it.

    `respond` answers a turn (codec tokens [1, K, F] and the audio they came from; and the video tokens [T, h*w]
    seen meanwhile when `reply_format.sees_video`) with codec-token blocks and event dicts ({"type": "transcript",
    ...}, sent as JSON events); cancellable.
    """

    @property
    def reply_format(self) -> ReplyFormat: ...

    async def listen_ahead(self, chunks: list[torch.Tensor], pcm_chunks: list[np.ndarray] | None = None) -> None:
        """The turn so far, while it is spoken (called when `reply_format.hears_ahead`; a no-op otherwise)."""

    def committed_text(self) -> str:
        """The words of the turn being spoken committed so far ("" when none)."""
        ...

    def type_text(self, text: str) -> None:
        """Text the user typed, for their next turn (read when `reply_format.reads_text`; a no-op otherwise)."""

    def respond(self, turn: Turn, video: torch.Tensor | None = None) -> AsyncGenerator[torch.Tensor | dict, None]:
        """An async generator: the caller may close it (`aclose`) when it gives the answer up."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class ChatModel(Protocol):
    """What chat mode answers with (`chat.responder.ChatResponder`, `EchoResponder`): shared by every session of a
    server, warmed up before the port opens, holding no user's state."""

    def warmup(self) -> None: ...

    def open_session(self) -> ChatSession: ...


class Hearing(Protocol):
    """What a Thinker has heard of a turn, of the Thinker's own type: the conversation sets the transcript of a
    typed turn and sends the error."""

    transcript: str | None
    error: dict | None  # an error event for the conversation to send ({"code", "message"}), or None


@dataclass
class Heard:
    """What a Thinker has heard of a turn so far: the built-in Thinker's state, or a transcript."""

    state: ThinkerState | None
    transcript: str | None = None
    error: dict | None = None


H = TypeVar("H", bound=Hearing)


@runtime_checkable
class Thinker(Protocol[H]):
    """What `ChatResponder` hears and answers through (`BuiltinThinker`, `EarsThinker`, `V1Thinker`,
    `OpenAIThinker`). It holds no user's state: each call is given the turn's hearing (`H`, the Thinker's own).

        heard = thinker.hear(codes, video, pcm)            # a whole turn: codes long [1, K, F], the video tokens
                                                           # [T, h*w] seen meanwhile or None, audio float32 [T] or None
        heard = thinker.start_hearing()                    # or while it is spoken (`hears_ahead`): start,
        heard = thinker.hear_more(heard, codes, pcm)       # more as it arrives,
        heard = thinker.finish_hearing(heard, codes, pcm)  # the last frames: the same as `hear` over the whole turn
        text = thinker.transcript(heard)
        async for piece, hidden in thinker.reply(heard, history):  # text pieces, a hidden state [dim] or None;
            ...                                            # `history`: the conversation's (a deque it extends)

    `start_hearing` also gives a typed turn (text, no audio) its empty hearing. A Thinker that hears each turn whole
    (`hears_ahead` False) is never handed a turn in pieces: its `hear_more` returns the hearing as it is and its
    `finish_hearing` hears the frames given.
    """

    @property
    def sees_video(self) -> bool:
        """`hear` reads the video tokens (a video track); else they are not handed over."""
        ...

    @property
    def hears_ahead(self) -> bool:
        """`hear_more` reads a turn while it is spoken."""
        ...

    def warmup(self) -> None: ...

    def hear(self, codes: torch.Tensor, video: torch.Tensor | None = None, pcm: np.ndarray | None = None) -> H: ...

    def start_hearing(self) -> H: ...

    def frames_short_of_a_position(self, heard: H, new: int) -> bool:
        """Would `new` more frames leave nothing for `hear_more` to read yet? (Then hearing them can wait.)"""
        ...

    def hear_more(self, heard: H, codes: torch.Tensor, pcm: np.ndarray | None = None) -> H: ...

    def finish_hearing(self, heard: H, codes: torch.Tensor, pcm: np.ndarray | None = None) -> H: ...

    def transcript(self, heard: H) -> str: ...

    def committed_text(self, heard: H) -> str:
        """The words of a turn being heard that will not change ("" for a Thinker that commits none)."""
        ...

    def reply(self, heard: H, history: deque[dict] | None = None) -> AsyncIterator[tuple[str, torch.Tensor | None]]:
        ...
