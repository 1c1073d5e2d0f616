"""The Talker: reads the reply as phonemes (with the Thinker's hidden states beside them) and writes codec tokens.

Design, chosen for what two CPU cores can train:
- **Text track.** The reply's words are phonemized by espeak-ng (talkstream.models.phonemes). A small convolutional
  encoder gives each phoneme a context vector (it looks two phonemes ahead) and predicts its duration in frames.
- **Dual track.** The Thinker's hidden state at each word's last character (the state that wrote that character)
  is projected and added to that word's phonemes. In training the hidden states come from the shipped Thinker
  teacher-forced on each sentence (`Thinker.teacher_forced_hidden`); the track is dropped for half of the examples,
  so a replacement Thinker with no hidden states (an OpenAI-compatible endpoint) is heard just as well.
- **Frames.** A causal transformer runs once per 13.3 ms codec frame (75 Hz) with a KV cache. Its input is the sum
  of the previous frame's code embeddings, the current phoneme's context vector and where the frame sits inside the
  phoneme. Knowing which phoneme each frame belongs to (from durations) replaces a learned attention alignment,
  which is what lets a model this small, trained this briefly, speak intelligibly.
- **Codebooks.** `num_codebooks` residual codebooks per frame come from a small depth head: codebook k is predicted
  from the frame's hidden state plus the embeddings of codebooks 0..k-1 already chosen for the frame (as Moshi's
  depth transformer, reduced to one layer per codebook). No delay pattern is needed.
- **Sampling.** Temperature, top-k, top-p, and a repetition guard: a first-codebook token that has filled the
  last `repeat_guard` frames is banned for the next frame, so the voice cannot lock into a drone. Deterministic for
  a seeded generator.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from talkstream.models.transformer import KVCache, RMSNorm, Transformer, sample

PAD_PHONEME, UNK_PHONEME = "<pad>", "<unk>"


@dataclass
class TalkerConfig:
    phonemes: list[str] = field(default_factory=lambda: [PAD_PHONEME, UNK_PHONEME])
    num_codebooks: int = 4
    codebook_size: int = 1024
    dim: int = 256
    layers: int = 4
    heads: int = 4
    hidden_dim: int = 256  # the Thinker's hidden size
    window: int = 256  # frames of attention context while streaming (3.4 s)
    voice: str = "en-us"  # the espeak-ng voice whose phonemes and timing the Talker learned

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TalkerConfig:
        return cls(**d)


@dataclass
class SamplingConfig:
    temperature: float = 0.7
    top_k: int = 50
    top_p: float = 0.95
    repeat_guard: int = 12
    speed: float = 1.0  # >1 speaks faster (durations divided by it)
    seed: int = 0


class Talker(nn.Module):
    def __init__(self, cfg: TalkerConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or TalkerConfig()
        d, k, v = cfg.dim, cfg.num_codebooks, cfg.codebook_size
        self.phoneme_index = {p: i for i, p in enumerate(cfg.phonemes)}
        self.phoneme_embed = nn.Embedding(len(cfg.phonemes), d, padding_idx=0)
        self.hidden_in = nn.Linear(cfg.hidden_dim, d)
        self.text_conv = nn.ModuleList(nn.Conv1d(d, d, 3, padding=1) for _ in range(2))  # 2 phonemes of lookahead
        self.text_norm = RMSNorm(d)
        self.duration = nn.Linear(d, 1)  # log(1 + frames)
        self.code_embed = nn.ModuleList(nn.Embedding(v + 1, d) for _ in range(k))  # index v: "no frame yet"
        self.progress_in = nn.Linear(3, d)
        self.transformer = Transformer(d, cfg.layers, cfg.heads)
        self.depth_embed = nn.ModuleList(nn.Embedding(v, d) for _ in range(k - 1))
        self.depth_head = nn.ModuleList(
            nn.Sequential(RMSNorm(d), nn.Linear(d, d), nn.GELU(), nn.Linear(d, v)) for _ in range(k)
        )
        # The per-frame transformer step in onnxruntime (talkstream.models.onnx_steps), when set; torch otherwise.
        self.onnx_step = None

    # --- the text track ---
    def phoneme_ids(self, names: list[str]) -> Tensor:
        return torch.tensor([self.phoneme_index.get(p, 1) for p in names], dtype=torch.long)

    def text_context(self, ids: Tensor, hidden: Tensor | None) -> tuple[Tensor, Tensor]:
        """ids [B, P], hidden [B, P, hidden_dim] or None -> (context [B, P, dim], log-duration [B, P])."""
        x = self.phoneme_embed(ids)
        if hidden is not None:
            # A phoneme with no hidden state (a pause, a word the Thinker did not write, a Thinker without hidden
            # states) gets nothing from this track, exactly as if no hidden states were given at all.
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

    def frame_input(self, prev_codes: Tensor, ctx: Tensor, progress: Tensor) -> Tensor:
        """prev_codes [B, K, T] (codebook_size = none), ctx [B, T, dim], progress [B, T, 3] -> [B, T, dim]."""
        x = ctx + self.progress_in(progress)
        for k, emb in enumerate(self.code_embed):
            x = x + emb(prev_codes[:, k])
        return x

    def depth_logits(self, h: Tensor, codes: Tensor) -> list[Tensor]:
        """Teacher-forced: h [B, T, dim], codes [B, K, T] -> K logits [B, T, V]."""
        out, acc = [], h
        for k, head in enumerate(self.depth_head):
            out.append(head(acc))
            if k < len(self.depth_embed):
                acc = acc + self.depth_embed[k](codes[:, k])
        return out

    # --- streaming generation ---
    @torch.no_grad()
    def frames(self, ids: Tensor, hidden: Tensor | None, sampling: SamplingConfig | None = None,
               state: TalkerState | None = None, durations: Tensor | None = None, final: bool = True
               ) -> Iterator[Tensor]:
        """Codec frames [K] for the phonemes `ids` [P] not spoken yet in `state`.

        With `final=False` the last two phonemes wait (their context needs the phonemes after them); call again with
        the longer phoneme sequence as words arrive, and `final=True` at the end of the reply. `state` is updated in
        place before each frame is yielded, so a caller can stop after any frame and resume with a new call.
        """
        sampling = sampling or SamplingConfig()
        st = state or TalkerState()
        if st.generator is None:
            st.generator = torch.Generator().manual_seed(sampling.seed)
        ctx, logdur = self.text_context(ids[None], None if hidden is None else hidden[None])
        if durations is None:
            durations = ((logdur[0].exp() - 1) / sampling.speed).round().clamp(min=0).long()
        ready = ids.shape[0] if final else max(ids.shape[0] - 2, 0)
        k_count, none = self.cfg.num_codebooks, self.cfg.codebook_size
        while st.phoneme < ready:
            length = int(durations[st.phoneme])
            if st.offset >= length:  # a phoneme of no frames (a pause espeak-ng left empty), or finished
                st.phoneme, st.offset = st.phoneme + 1, 0
                continue
            prev = st.prev if st.prev is not None else torch.full((k_count,), none, dtype=torch.long)
            prog = self.progress(torch.tensor([st.offset]), torch.tensor([length]))
            x = self.frame_input(prev[None, :, None], ctx[:, st.phoneme : st.phoneme + 1], prog[None])
            h, cache = (self.onnx_step or self.transformer)(x, torch.tensor([[st.position]]), st.cache)
            st.cache, st.position = cache.keep_last(self.cfg.window), st.position + 1
            st.prev = self._sample_frame(h[0, 0], sampling, st)
            st.offset += 1  # the state is whole before the frame leaves: a caller may stop after any frame
            yield st.prev

    def _sample_frame(self, h: Tensor, sampling: SamplingConfig, st: TalkerState) -> Tensor:
        codes, acc = [], h
        for k, head in enumerate(self.depth_head):
            logits = head(acc)
            if k == 0 and len(st.recent) >= sampling.repeat_guard and len(set(st.recent[-sampling.repeat_guard:])) == 1:
                logits[st.recent[-1]] = float("-inf")
            c = sample(logits, st.generator, sampling.temperature, sampling.top_k, sampling.top_p)
            codes.append(c)
            if k < len(self.depth_embed):
                acc = acc + self.depth_embed[k](c)
        st.recent = (st.recent + [int(codes[0])])[-sampling.repeat_guard :]
        return torch.stack(codes)


@dataclass
class TalkerState:
    cache: KVCache | None = None
    position: int = 0
    phoneme: int = 0  # phonemes fully spoken
    offset: int = 0  # frames spoken of the current phoneme
    prev: Tensor | None = None  # last frame's codes [K]
    recent: list[int] = field(default_factory=list)
    generator: torch.Generator | None = None
