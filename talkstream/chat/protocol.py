"""The chat seam: what a server answers chat turns with (`ChatModel`, shared, holding no user's state) and the
per-connection `ChatSession` it opens (one user's history and early hearing, closed with the session)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import torch

if TYPE_CHECKING:
    from talkstream.models.thinker import ThinkerState


@dataclass
class Heard:
    """What a Thinker has heard of a turn so far: the built-in Thinker's state, or a transcript."""

    state: ThinkerState | None
    transcript: str | None = None


class ChatSession(Protocol):
    """One user's chat (their history, the turn heard so far): opened per session, closed with it.

    `respond` answers a turn (a `Turn`: codec tokens [1, K, F] and the audio they came from; and the video tokens
    seen meanwhile when `sees_video`) with
    codec-token blocks and event dicts ({"type": "transcript", ...}, sent as JSON events); cancellable. Optional
    attributes: `num_codebooks` (the blocks' codebook count when it is not the client's), `voice_codec` (a decoder
    of its own), `sees_video`, and `listen_ahead(chunks)` (the turn so far, while it is spoken).
    """

    def respond(self, turn: torch.Tensor, video: torch.Tensor | None = None
                ) -> AsyncIterator[torch.Tensor | dict]: ...

    def close(self) -> None: ...


class ChatModel(Protocol):
    """What chat mode answers with (`chat.responder.ChatResponder`, `EchoResponder`): shared by every session of a
    server, warmed up before the port opens, holding no user's state."""

    def warmup(self) -> None: ...

    def open_session(self) -> ChatSession: ...
