"""The Talker: reads the reply as IPA units and writes codec tokens, frame by frame, in one TTS voice
(TalkerConfig.speaker; the shipped Talker speaks Kokoro-82M's jm_kumo).

Design, chosen by what the recogniser understood (README, `bench model`) and what two CPU cores can train:
- **Units.** The reply's words are phonemized one by one as they arrive (talkstream.models.talker_units): IPA code
  points, as Piper's voices read them, so every training example has the voice's own duration for every unit.
- **Text track.** A small convolutional encoder gives each unit a context vector (`text_layers` units of
  lookahead) and predicts its duration in frames. The Thinker's hidden states can be added per unit (the dual track,
  `hidden`); the shipped Talker is trained text-only, since the built-in Thinker is Whisper's decoder.
- **Frames.** A causal transformer runs once per 13.3 ms codec frame (75 Hz) with a KV cache. Its input is the
  current unit's context vector and where the frame sits inside the unit. Knowing which unit each frame belongs to
  (from durations) replaces a learned attention alignment.
- **Latent, then tokens.** The transformer regresses the codec encoder's latent for the frame, and the codec's own
  residual quantizer (its codebooks are part of the checkpoint) turns that into `num_codebooks` tokens. The earlier
  Talker sampled tokens codebook by codebook and the recogniser heard 84-91% of its words wrong: one bad first-codebook
  draw is a wrong sound, while a regressed latent is at worst a blurred one, and the voice decoder
  (talkstream/codecs/audio/voice.py) is fine-tuned on the Talker's own tokens to sharpen exactly that blur. The shipped
  Talker speaks codec v3, whose latent is a normalised 80-band log-mel: a target a small model regresses far better
  than codec v2's learned latent (first-codebook hits on held-out frames: 56% against 9% after 3,000 steps), as
  FastSpeech-style acoustic models regress mels; its tokens are the shared codec's own.
- **Deterministic.** No sampling: the same text always gives the same tokens; `SamplingConfig.speed` scales the
  durations.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from talkstream.errors import UserError
from talkstream.models.transformer import KVCache, RMSNorm, Transformer, TransformerStep

PAD_PHONEME, UNK_PHONEME = "<pad>", "<unk>"


@dataclass
class TalkerConfig:
    phonemes: list[str] = field(default_factory=lambda: [PAD_PHONEME, UNK_PHONEME])  # the units it reads
    num_codebooks: int = 8
    codebook_size: int = 1024
    latent_dim: int = 128  # the codec's latent width
    dim: int = 256
    layers: int = 4
    heads: int = 4
    text_layers: int = 3  # units of lookahead (one per kernel-3 convolution)
    hidden_dim: int = 192  # the dual track's width
    window: int = 256  # frames of attention context while streaming (3.4 s)
    voice: str = "en-us"  # the espeak-ng voice that phonemizes the text
    speaker: str = "piper:en_US-joe"  # the voice whose speech it learned
    codec_id: str = "talkstream-audio-v3"  # the codec whose latent and codebooks it speaks in
    # The regressed latent is scaled by this before it is quantized; set per voice after training by listening
    # measures. The latent is a log-mel normalised by the codec's corpus, so above 1 it moves the voice's average
    # spectrum further from the corpus's (for jm_kumo: brighter), which its voice decoder otherwise renders too dull.
    # The shipped jm_kumo Talker: 1.15, chosen on 100 held-out sentences not in bench model (DNSMOS OVRL +0.04, WER
    # unchanged; 1.1 and 1.2 gained less; docs/benchmarks.md).
    latent_scale: float = 1.0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TalkerConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        if set(d) - known:
            raise UserError(f"this Talker checkpoint is of another format (keys {sorted(set(d) - known)}); "
                             "retrain it with `talkstream train talker`")
        return cls(**d)


@dataclass
class SamplingConfig:
    speed: float = 1.0  # >1 speaks faster (durations divided by it)
    # A comma's pause lasts at least this many frames (0: as the voice learned it). jm_kumo counts with 80 ms pauses
    # that a recogniser runs together ("six, seven, eight" heard as "678"); 14 frames (187 ms) separate them
    # (docs/benchmarks.md, bench model).
    comma_frames: int = 14


class Talker(nn.Module):
    codebooks: Tensor  # a buffer (register_buffer), declared for the type checker

    def __init__(self, cfg: TalkerConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or TalkerConfig()
        d = cfg.dim
        self.phoneme_index = {p: i for i, p in enumerate(cfg.phonemes)}
        self.phoneme_embed = nn.Embedding(len(cfg.phonemes), d, padding_idx=0)
        self.hidden_in = nn.Linear(cfg.hidden_dim, d)
        self.text_conv = nn.ModuleList(nn.Conv1d(d, d, 3, padding=1) for _ in range(cfg.text_layers))
        self.text_norm = RMSNorm(d)
        self.duration = nn.Linear(d, 1)  # log(1 + frames)
        self.progress_in = nn.Linear(3, d)
        self.transformer = Transformer(d, cfg.layers, cfg.heads)
        self.latent_out = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, cfg.latent_dim))
        # The codec's residual codebooks [K, V, D]: the Talker's tokens are the codec's by construction.
        self.register_buffer("codebooks", torch.zeros(cfg.num_codebooks, cfg.codebook_size, cfg.latent_dim))
        # The per-frame transformer step in onnxruntime (talkstream.models.onnx_steps), when set; torch otherwise.
        self.onnx_step: TransformerStep | None = None  # set by onnx_steps.onnx_step
        self._norms: Tensor | None = None  # the codes' squared norms, computed once, not on every frame
        self.register_load_state_dict_post_hook(lambda module, _: setattr(module, "_norms", None))

    @property
    def lookahead(self) -> int:
        """Units the text track reads past the one it speaks."""
        return self.cfg.text_layers

    def use_codebooks(self, codec) -> None:
        """Copy the codec's codebooks (training: before the first step)."""
        embed = codec.quantizer.embed[: self.cfg.num_codebooks]
        if tuple(embed.shape) != tuple(self.codebooks.shape):
            raise ValueError(f"codec codebooks {tuple(embed.shape)} != Talker's {tuple(self.codebooks.shape)}")
        self.codebooks.copy_(embed)
        self._norms = None

    # --- the text track ---
    def phoneme_ids(self, names: list[str]) -> Tensor:
        return torch.tensor([self.phoneme_index.get(p, 1) for p in names], dtype=torch.long)

    def text_context(self, ids: Tensor, hidden: Tensor | None) -> tuple[Tensor, Tensor]:
        """ids [B, P], hidden [B, P, hidden_dim] or None -> (context [B, P, dim], log-duration [B, P])."""
        x = self.phoneme_embed(ids)
        if hidden is not None:
            # A unit with no hidden state (a pause, a Thinker without hidden states) gets nothing from this track,
            # exactly as if no hidden states were given at all.
            x = x + self.hidden_in(hidden) * (hidden != 0).any(-1, keepdim=True)
        y = x.transpose(1, 2)
        for conv in self.text_conv:
            y = y + F.gelu(conv(y))
        ctx = self.text_norm(y.transpose(1, 2))
        return ctx, self.duration(ctx).squeeze(-1)

    @staticmethod
    def progress(offset: Tensor, length: Tensor) -> Tensor:
        length = length.clamp(min=1).float()
        frac = offset.float() / length
        return torch.stack([frac, 1 - frac, length.clamp(max=30) / 30], -1)

    def frame_input(self, ctx: Tensor, progress: Tensor) -> Tensor:
        """ctx [B, T, dim] (each frame's unit), progress [B, T, 3] -> [B, T, dim]."""
        return ctx + self.progress_in(progress)

    def latent(self, h: Tensor) -> Tensor:
        """Transformer output [B, T, dim] -> codec latent [B, T, latent_dim]."""
        return self.latent_out(h)

    def quantize(self, z: Tensor, stages: int | None = None) -> Tensor:
        """Latent [N, D] -> codes [N, K] by the codec's residual codebooks (nearest code, stage by stage); the first
        `stages` only when given."""
        if self._norms is None:
            self._norms = (self.codebooks * self.codebooks).sum(-1)  # [K, V]
        codes, r = [], z
        for e, norms in zip(self.codebooks[:stages], self._norms, strict=False):
            c = ((r * r).sum(1, keepdim=True) - 2 * r @ e.t() + norms[None]).argmin(1)
            r = r - e[c]
            codes.append(c)
        return torch.stack(codes, 1)

    # --- streaming generation ---
    @torch.no_grad()
    def frames(self, ids: Tensor, hidden: Tensor | None, sampling: SamplingConfig | None = None,
               state: TalkerState | None = None, durations: Tensor | None = None, final: bool = True
               ) -> Iterator[Tensor]:
        """Codec frames [K] for the units `ids` [P] not spoken yet in `state`.

        With `final=False` the last `lookahead` units wait (their context needs the units after them); call again
        with the longer unit sequence as words arrive, and `final=True` at the end of the reply. `state` is updated
        in place before each frame is yielded, so a caller can stop after any frame and resume with a new call.
        """
        sampling = sampling or SamplingConfig()
        st = state or TalkerState()
        ctx, logdur = self.text_context(ids[None], None if hidden is None else hidden[None])
        if durations is None:
            durations = ((logdur[0].exp() - 1) / sampling.speed).round().clamp(min=0).long()
            if sampling.comma_frames and "," in self.phoneme_index:
                comma = ids == self.phoneme_index[","]
                durations = torch.where(comma, durations.clamp(min=sampling.comma_frames), durations)
        ready = ids.shape[0] if final else max(ids.shape[0] - self.lookahead, 0)
        while st.phoneme < ready:
            length = int(durations[st.phoneme])
            if st.offset >= length:  # a unit of no frames, or finished
                st.phoneme, st.offset = st.phoneme + 1, 0
                continue
            prog = self.progress(torch.tensor([st.offset]), torch.tensor([length]))
            x = self.frame_input(ctx[:, st.phoneme : st.phoneme + 1], prog[None])
            h, cache = (self.onnx_step or self.transformer)(x, torch.tensor([[st.position]]), st.cache)
            st.cache, st.position = cache.keep_last(self.cfg.window), st.position + 1
            st.prev = self.quantize(self.latent(h)[0] * self.cfg.latent_scale)[0]
            st.offset += 1  # the state is whole before the frame leaves: a caller may stop after any frame
            yield st.prev


@dataclass
class TalkerState:
    cache: KVCache | None = None
    position: int = 0
    phoneme: int = 0  # units fully spoken
    offset: int = 0  # frames spoken of the current unit
    prev: Tensor | None = None  # last frame's codes [K]
