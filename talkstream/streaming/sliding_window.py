"""`SlidingWindowDecoder`: codec tokens -> PCM in blocks, each decoded from a bounded window of tokens.

Qwen2.5-Omni's streaming token-to-wave decoder limits each block's receptive field to a few blocks back and one
ahead, so the first packet leaves after one block and the cost per block is constant. Here each block of
`block_frames` frames is decoded afresh from `lookback_frames` earlier frames, the block, and `lookahead_frames`
later frames. Nothing but tokens is carried between blocks, so a block can be decoded anywhere (another worker, the
ONNX graph) and a lost decoder state cannot drift.

When `lookback_frames >= codec.decoder_context_frames` (39 for the shipped codec) the blocks join into exactly the
decoder's output over the whole sequence: no clicks at joins, by construction (tests/streaming prove it). A shorter
lookback trades exactness for compute; the join error is measured in the tests and `bench serve`.

Our codec's decoder is causal, so lookahead adds delay without changing a sample; it is there for decoders that look
ahead, and defaults to 0. Output time follows the codec's: block samples cover frames [start, end) of the full decode.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor

from talkstream.codecs.audio.codec import AudioCodec


@dataclass
class SlidingWindowState:
    tokens: Tensor  # long [1, K, F]: the frames still needed (lookback context + not yet decoded)
    offset: int = 0  # absolute frame index of tokens[..., 0]
    emitted: int = 0  # absolute index of the first frame not yet decoded


class SlidingWindowDecoder:
    def __init__(
        self, codec: AudioCodec, block_frames: int = 6, lookback_frames: int | None = None, lookahead_frames: int = 0
    ):
        if block_frames < 1 or lookahead_frames < 0 or (lookback_frames is not None and lookback_frames < 0):
            raise ValueError("block_frames must be >= 1, lookback and lookahead >= 0")
        self.codec = codec
        self.block_frames = block_frames
        self.lookback_frames = codec.decoder_context_frames if lookback_frames is None else lookback_frames
        self.lookahead_frames = lookahead_frames

    @property
    def first_packet_frames(self) -> int:
        """Frames that must arrive before the first block can be decoded."""
        return self.block_frames + self.lookahead_frames

    def init_state(self, num_codebooks: int) -> SlidingWindowState:
        return SlidingWindowState(tokens=torch.zeros(1, num_codebooks, 0, dtype=torch.long))

    def _decode_block(self, state: SlidingWindowState, end: int) -> Tensor:
        start = state.emitted
        lo = max(state.offset, start - self.lookback_frames)
        hi = min(state.offset + state.tokens.shape[-1], end + self.lookahead_frames)
        window = state.tokens[..., lo - state.offset : hi - state.offset]
        hop = self.codec.frame_size
        with torch.inference_mode():
            pcm = self.codec.decode(window)
        return pcm[..., (start - lo) * hop : (end - lo) * hop]

    def _trim(self, state: SlidingWindowState) -> SlidingWindowState:
        keep_from = max(state.offset, state.emitted - self.lookback_frames)
        return dataclasses.replace(state, tokens=state.tokens[..., keep_from - state.offset :], offset=keep_from)

    def step(self, tokens: Tensor, state: SlidingWindowState) -> tuple[Tensor, SlidingWindowState]:
        """tokens long [1, K, F] (any F >= 0) -> pcm [1, 1, n*block*hop] for every block now decodable."""
        state = dataclasses.replace(state, tokens=torch.cat([state.tokens, tokens.to(torch.long)], dim=-1))
        available = state.offset + state.tokens.shape[-1]
        out = []
        while state.emitted + self.block_frames + self.lookahead_frames <= available:
            end = state.emitted + self.block_frames
            out.append(self._decode_block(state, end))
            state = dataclasses.replace(state, emitted=end)
        state = self._trim(state)
        if not out:
            return torch.zeros(1, 1, 0), state
        return torch.cat(out, dim=-1), state

    def flush(self, state: SlidingWindowState) -> tuple[Tensor, SlidingWindowState]:
        """End of stream: decode whatever frames remain (without the lookahead they would have had)."""
        end = state.offset + state.tokens.shape[-1]
        if end <= state.emitted:
            return torch.zeros(1, 1, 0), state
        pcm = self._decode_block(state, end)
        return pcm, self._trim(dataclasses.replace(state, emitted=end))
