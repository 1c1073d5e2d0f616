"""The Thinker: a small decoder-only transformer that hears codec latents and writes text, exposing its hidden states.

One sequence per turn: audio positions (codec latents, `stack` frames of 13.3 ms per position, so one position is
53.3 ms), then a task token (<asr> transcribe, <chat> answer), <bos> and the reply's characters. Audio positions are
time indices (position p covers [p*53.3 ms, (p+1)*53.3 ms)), the TMRoPE idea reduced to audio: a video stream's
blocks would take the positions of the times they cover. Text continues after the audio's last position.

Streaming: `listen` appends audio as it arrives to the KV cache (the whole turn is never re-read); `reply` decodes
greedily from there and yields (token, hidden state) pairs, the dual track the Talker reads.

Video (a Thinker with `video_features > 0`): `listen(latent, state, video=features)` takes the frames that came
with the audio; the two streams are interleaved by time in blocks (talkstream.models.av: positions follow time,
video then audio per 1.92 s block), and `end_turn` appends what is left of the last block.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from talkstream.models import av
from talkstream.models import text as tx
from talkstream.models.transformer import KVCache, Transformer, TransformerStep


@dataclass
class ThinkerConfig:
    latent_dim: int = 128  # the codec's quantized latent
    stack: int = 4  # codec frames per audio position
    dim: int = 256
    layers: int = 4
    heads: int = 4
    vocab: int = len(tx.VOCAB)
    max_reply: int = 160  # characters
    video_features: int = 0  # per video frame (talkstream.models.av.frame_features); 0: no video track
    video_stack: int = 4  # video frames per position (160 ms at 25 fps)
    video_fps: float = 25.0
    audio_frame_rate: float = 75.0  # codec frames per second
    block_positions: int = 36  # the interleave block, in audio positions (1.92 s)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ThinkerConfig:
        return cls(**d)


@dataclass
class ThinkerState:
    cache: KVCache | None = None
    pending: Tensor | None = None  # latent frames [1, D, <stack] not yet a whole position
    audio_positions: int = 0  # audio positions made (in the cache, or queued for their block with video)
    next_position: int = 0  # the RoPE position the reply starts at
    # With video: frames not yet a whole position, and positions waiting for their interleave block to complete.
    pending_video: Tensor | None = None  # [1, <video_stack, features]
    video_positions: int = 0  # video positions made
    queue: list = dataclasses.field(default_factory=list)  # (is_video, position, embedding [dim]) not yet cached
    block: int = 0  # the next interleave block to append


class Thinker(nn.Module):
    def __init__(self, cfg: ThinkerConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or ThinkerConfig()
        width = cfg.latent_dim * cfg.stack
        self.audio_in = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, cfg.dim))
        self.embed = nn.Embedding(cfg.vocab, cfg.dim)
        self.transformer = Transformer(cfg.dim, cfg.layers, cfg.heads)
        self.head = nn.Linear(cfg.dim, cfg.vocab, bias=False)
        if cfg.video_features:
            vwidth = cfg.video_features * cfg.video_stack
            self.video_in = nn.Sequential(nn.LayerNorm(vwidth), nn.Linear(vwidth, cfg.dim))
        # In onnxruntime (talkstream.models.onnx_steps) when set, torch otherwise: the single-position decoding step
        # of the reply, and the block step of listening (a block of audio positions at once).
        self.onnx_step: TransformerStep | None = None  # set by onnx_steps.onnx_step
        self.onnx_listen: TransformerStep | None = None
        self.head.weight = self.embed.weight  # tied: fewer parameters to learn from little data
        nn.init.normal_(self.embed.weight, std=0.02)  # small, since the tied head reads normalised states

    def audio_embed(self, latent: Tensor) -> Tensor:
        """latent [B, D, F] (F a multiple of stack) -> [B, F/stack, dim]."""
        b, d, f = latent.shape
        x = latent.transpose(1, 2).reshape(b, f // self.cfg.stack, self.cfg.stack * d)
        return self.audio_in(x)

    def video_embed(self, features: Tensor) -> Tensor:
        """features [B, Fv, video_features] (Fv a multiple of video_stack) -> [B, Fv/video_stack, dim]."""
        b, f, c = features.shape
        return self.video_in(features.reshape(b, f // self.cfg.video_stack, self.cfg.video_stack * c))

    # --- training: whole sequences ---
    def forward_train(self, latent: Tensor, audio_len: Tensor, task: Tensor, text: Tensor, text_len: Tensor,
                      video: Tensor | None = None, video_len: Tensor | None = None) -> Tensor:
        """Mean cross-entropy of the reply given the audio (and video).

        latent [B, D, F] (zero-padded), audio_len [B] positions, task [B] token ids, text [B, L] ids (padded),
        text_len [B]; video [B, Fv, video_features] (zero-padded) and video_len [B] video positions (0: none).
        """
        audio = self.audio_embed(latent)
        seen = self.video_embed(video) if video is not None else None
        b = audio.shape[0]
        bos = torch.full((b, 1), tx.BOS, dtype=torch.long, device=text.device)
        words = self.embed(torch.cat([task[:, None], bos, text], 1))  # [B, 2+L, dim]
        seqs, poss, tgts = [], [], []
        for i in range(b):
            a, n = int(audio_len[i]), int(text_len[i])
            v = int(video_len[i]) if video_len is not None else 0
            if v:
                if seen is None:
                    raise ValueError("video_len counts video positions, but no video was given")
                is_video, index, pos = av.interleave(a, v, self.cfg)
                rows = torch.where(is_video[:, None], seen[i][index.clamp(max=v - 1)], audio[i][index.clamp(max=a - 1)])
                start = int(pos.max()) + 1
            else:
                rows, pos, start = audio[i, :a], torch.arange(a), a
            seqs.append(torch.cat([rows, words[i, : n + 2]]))
            poss.append(torch.cat([pos, torch.arange(start, start + n + 2)]).to(text.device))
            eos = torch.tensor([tx.EOS], device=text.device)
            # Targets: nothing over the audio and the task token; after <bos> and each character, the next one.
            tgts.append(torch.cat([torch.full((len(rows) + 1,), -100, device=text.device), text[i, :n], eos]))
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
    def listen(self, latent: Tensor, state: ThinkerState, video: Tensor | None = None) -> ThinkerState:
        """Append latent frames [1, D, F] (any F) of the user's speech, and the video frames' features
        [1, Fv, video_features] that came with them; audio alone goes into the cache at once, audio with video
        block by block (see talkstream.models.av)."""
        x = latent if state.pending is None else torch.cat([state.pending, latent], -1)
        n = x.shape[-1] // self.cfg.stack * self.cfg.stack
        emb = self.audio_embed(x[..., :n]) if n else None
        a0 = state.audio_positions
        state = dataclasses.replace(state, pending=x[..., n:], audio_positions=a0 + (n // self.cfg.stack))
        if video is None and state.pending_video is None:  # audio alone: no interleave, nothing waits
            if emb is None:
                return state
            pos = torch.arange(a0, state.audio_positions)[None]
            _, cache = (self.onnx_listen or self.transformer)(emb, pos, state.cache)
            return dataclasses.replace(state, cache=cache, next_position=state.audio_positions)
        if not self.cfg.video_features:
            raise ValueError("this Thinker has no video track (video_features = 0)")
        queue = list(state.queue)
        if emb is not None:
            queue += [(False, a0 + i, emb[0, i]) for i in range(emb.shape[1])]
        v = torch.cat([p for p in (state.pending_video, video) if p is not None], 1)
        m = v.shape[1] // self.cfg.video_stack * self.cfg.video_stack
        v0 = state.video_positions
        if m:
            vemb = self.video_embed(v[:, :m])
            queue += [(True, int(av.video_position(v0 + j, self.cfg)), vemb[0, j]) for j in range(vemb.shape[1])]
        state = dataclasses.replace(state, pending_video=v[:, m:], video_positions=v0 + m // self.cfg.video_stack,
                                    queue=queue)
        return self._append_blocks(state, final=False)

    def end_turn(self, state: ThinkerState) -> ThinkerState:
        """The turn is over: what waits for its interleave block goes into the cache (audio alone: nothing waits)."""
        return self._append_blocks(state, final=True) if state.queue else state

    def _append_blocks(self, state: ThinkerState, final: bool) -> ThinkerState:
        size = self.cfg.block_positions
        cache, queue, block, nxt = state.cache, state.queue, state.block, state.next_position
        while queue:
            end = (block + 1) * size
            # A block is whole once both streams have passed its end (or the turn is over).
            if not final and (state.audio_positions < end or int(av.video_position(state.video_positions,
                                                                                   self.cfg)) < end):
                break
            rows = [q for q in queue if q[1] < end and q[0]] + [q for q in queue if q[1] < end and not q[0]]
            queue = [q for q in queue if q[1] >= end]
            block += 1
            if rows:
                x = torch.stack([r[2] for r in rows])[None]
                pos = torch.tensor([[r[1] for r in rows]])
                _, cache = (self.onnx_listen or self.transformer)(x, pos, cache)
                nxt = max(nxt, int(pos.max()) + 1)
        return dataclasses.replace(state, cache=cache, queue=queue, block=block, next_position=nxt)

    @torch.no_grad()
    def reply(self, state: ThinkerState, task: int = tx.CHAT, max_chars: int | None = None
              ) -> Iterator[tuple[int, Tensor]]:
        """Greedy reply after the audio heard so far: yields (character id, final hidden state [dim]) until <eos>."""
        # One position per call (the task token, <bos>, then each character): the step an exported graph runs.
        step = self.onnx_step or self.transformer
        state = self.end_turn(state)
        pos, cache = state.next_position, state.cache
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
