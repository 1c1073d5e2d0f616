"""The Thinker: a small decoder-only transformer that hears codec latents and writes text, exposing its hidden states.

One sequence per turn: audio positions (codec latents, `stack` frames of 13.3 ms per position, so one position is
53.3 ms), then a task token (<asr> transcribe, <chat> answer), <bos> and the reply's characters. Audio positions are
time indices (position p covers [p*53.3 ms, (p+1)*53.3 ms)), the TMRoPE idea reduced to audio: a video stream's
blocks would take the positions of the times they cover. Text continues after the audio's last position.

Streaming: `listen` appends audio as it arrives to the KV cache (the whole turn is never re-read); `reply` decodes
greedily from there and yields (token, hidden state) pairs, the dual track the Talker reads.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from talkstream.models import text as tx
from talkstream.models.transformer import KVCache, Transformer


@dataclass
class ThinkerConfig:
    latent_dim: int = 128  # the codec's quantized latent
    stack: int = 4  # codec frames per audio position
    dim: int = 256
    layers: int = 4
    heads: int = 4
    vocab: int = len(tx.VOCAB)
    max_reply: int = 160  # characters

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ThinkerConfig:
        return cls(**d)


@dataclass
class ThinkerState:
    cache: KVCache | None = None
    pending: Tensor | None = None  # latent frames [1, D, <stack] not yet a whole position
    audio_positions: int = 0


class Thinker(nn.Module):
    def __init__(self, cfg: ThinkerConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or ThinkerConfig()
        width = cfg.latent_dim * cfg.stack
        self.audio_in = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, cfg.dim))
        self.embed = nn.Embedding(cfg.vocab, cfg.dim)
        self.transformer = Transformer(cfg.dim, cfg.layers, cfg.heads)
        self.head = nn.Linear(cfg.dim, cfg.vocab, bias=False)
        # In onnxruntime (talkstream.models.onnx_steps) when set, torch otherwise: the single-position decoding step
        # of the reply, and the block step of listening (a block of audio positions at once).
        self.onnx_step = None
        self.onnx_listen = None
        self.head.weight = self.embed.weight  # tied: fewer parameters to learn from little data
        nn.init.normal_(self.embed.weight, std=0.02)  # small, since the tied head reads normalised states

    def audio_embed(self, latent: Tensor) -> Tensor:
        """latent [B, D, F] (F a multiple of stack) -> [B, F/stack, dim]."""
        b, d, f = latent.shape
        x = latent.transpose(1, 2).reshape(b, f // self.cfg.stack, self.cfg.stack * d)
        return self.audio_in(x)

    # --- training: whole sequences ---
    def forward_train(self, latent: Tensor, audio_len: Tensor, task: Tensor, text: Tensor, text_len: Tensor) -> Tensor:
        """Mean cross-entropy of the reply given the audio.

        latent [B, D, F] (zero-padded), audio_len [B] positions, task [B] token ids, text [B, L] ids (padded),
        text_len [B].
        """
        audio = self.audio_embed(latent)
        b = audio.shape[0]
        bos = torch.full((b, 1), tx.BOS, dtype=torch.long, device=text.device)
        words = self.embed(torch.cat([task[:, None], bos, text], 1))  # [B, 2+L, dim]
        seqs, poss, tgts = [], [], []
        for i in range(b):
            a, n = int(audio_len[i]), int(text_len[i])
            seqs.append(torch.cat([audio[i, :a], words[i, : n + 2]]))
            poss.append(torch.arange(a + n + 2, device=text.device))
            eos = torch.tensor([tx.EOS], device=text.device)
            # Targets: nothing over the audio and the task token; after <bos> and each character, the next one.
            tgts.append(torch.cat([torch.full((a + 1,), -100, device=text.device), text[i, :n], eos]))
        x = nn.utils.rnn.pad_sequence(seqs, batch_first=True)
        pos = nn.utils.rnn.pad_sequence(poss, batch_first=True)
        tgt = nn.utils.rnn.pad_sequence(tgts, batch_first=True, padding_value=-100)
        h, _ = self.transformer(x, pos)
        return F.cross_entropy(self.head(h).transpose(1, 2), tgt, ignore_index=-100)

    @torch.no_grad()
    def teacher_forced_hidden(self, latent: Tensor, text: list[int], task: int = tx.ASR) -> Tensor:
        """latent [1, D, F] and the reply's ids -> [len(text), dim]: row j is the hidden state that writes text[j],
        the state `reply` yields beside character j (the Talker's training data for the dual track)."""
        audio = self.audio_embed(latent)
        a = audio.shape[1]
        words = self.embed(torch.tensor([[task, tx.BOS, *text]]))
        x = torch.cat([audio, words], 1)
        h, _ = self.transformer(x, torch.arange(x.shape[1])[None])
        return h[0, a + 1 : a + 1 + len(text)]

    # --- streaming ---
    def init_state(self) -> ThinkerState:
        return ThinkerState()

    @torch.no_grad()
    def listen(self, latent: Tensor, state: ThinkerState) -> ThinkerState:
        """Append latent frames [1, D, F] (any F) of the user's speech; whole positions go into the cache now."""
        x = latent if state.pending is None else torch.cat([state.pending, latent], -1)
        n = x.shape[-1] // self.cfg.stack * self.cfg.stack
        if n == 0:
            return dataclasses.replace(state, pending=x)
        emb = self.audio_embed(x[..., :n])
        pos = torch.arange(state.audio_positions, state.audio_positions + emb.shape[1])[None]
        _, cache = (self.onnx_listen or self.transformer)(emb, pos, state.cache)
        return ThinkerState(cache, x[..., n:], state.audio_positions + emb.shape[1])

    @torch.no_grad()
    def reply(self, state: ThinkerState, task: int = tx.CHAT, max_chars: int | None = None
              ) -> Iterator[tuple[int, Tensor]]:
        """Greedy reply after the audio heard so far: yields (character id, final hidden state [dim]) until <eos>."""
        # One position per call (the task token, <bos>, then each character): the step an exported graph runs.
        step = self.onnx_step or self.transformer
        pos, cache = state.audio_positions, state.cache
        for token in (task, tx.BOS):
            h, cache = step(self.embed(torch.tensor([[token]])), torch.tensor([[pos]]), cache)
            pos += 1
        for _ in range(max_chars or self.cfg.max_reply):
            token = int(self.head(h[0, -1]).argmax())
            if token == tx.EOS:
                return
            if token < len(tx.SPECIALS):  # a special token mid-reply means the model lost its way
                return
            yield token, h[0, -1]
            h, cache = step(self.embed(torch.tensor([[token]])), torch.tensor([[pos]]), cache)
            pos += 1

    def transcribe(self, latent: Tensor, task: int = tx.ASR) -> tuple[str, list[Tensor]]:
        """Offline: the same listen + reply over a whole turn -> (text, hidden state per character)."""
        state = self.listen(latent, self.init_state())
        tokens, hidden = [], []
        for t, h in self.reply(state, task):
            tokens.append(t)
            hidden.append(h)
        return tx.decode(tokens), hidden
