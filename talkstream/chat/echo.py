"""The echo stand-in for chat mode: no model, the same token path."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

import numpy as np
import torch

from talkstream.chat.protocol import ReplyFormat
from talkstream.models.turn import Turn, split_turn


class EchoResponder:
    """The echo stand-in (`--thinker echo`): says the user's turn back, block by block, through the token path.
    It keeps nothing between turns, so it is its own chat session: its blocks have the turn's codebooks, it hears
    nothing ahead and reads no text."""

    reply_format = ReplyFormat()

    def __init__(self, block_frames: int = 6):
        self.block_frames = block_frames

    def warmup(self) -> None:
        pass

    def open_session(self) -> EchoResponder:
        return self

    def close(self) -> None:
        pass

    async def listen_ahead(self, chunks: list[torch.Tensor], pcm_chunks: list[np.ndarray] | None = None) -> None:
        pass

    def committed_text(self) -> str:
        return ""

    def type_text(self, text: str) -> None:
        pass

    async def respond(self, turn: Turn | torch.Tensor, video: torch.Tensor | None = None
                      ) -> AsyncGenerator[torch.Tensor, None]:
        turn, _ = split_turn(turn)
        for i in range(0, turn.shape[-1], self.block_frames):
            yield turn[..., i : i + self.block_frames]
            await asyncio.sleep(0)  # a generator that yields control, as a model's would
