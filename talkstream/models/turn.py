"""A user's spoken turn as the chat models receive it: the codec's tokens and the audio they came from.

The Thinker hears the audio (its ears are Whisper's, which never hear through the codec); the tokens remain for
Thinkers that read them, for the echo stand-in and for the turn's length in frames.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Turn:
    codes: torch.Tensor  # long [1, K, F]
    pcm: np.ndarray | None  # float32 [T] at the codec's sample rate (T = F * hop), or None when only tokens exist

    @property
    def shape(self) -> torch.Size:
        """The tokens' shape: a Turn counts frames as its tokens do."""
        return self.codes.shape


def split_turn(turn: Turn | torch.Tensor) -> tuple[torch.Tensor, np.ndarray | None]:
    """(codes, pcm or None) of a Turn or of bare codes."""
    if isinstance(turn, Turn):
        return turn.codes, turn.pcm
    return turn, None
