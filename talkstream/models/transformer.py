"""The causal transformer both models share: pre-norm blocks, RoPE on explicit positions, and a KV cache.

Positions are passed in, not implied by order, so the Thinker can give audio positions that follow time (TMRoPE's
idea) and the Talker can keep positions bounded while its cache slides. `step` on new tokens with a cache equals
running the whole sequence at once (tests/models check it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class KVCache:
    keys: list[Tensor]  # per layer [B, H, T, Dh]
    values: list[Tensor]

    @property
    def length(self) -> int:
        return self.keys[0].shape[2] if self.keys else 0

    def keep_last(self, n: int) -> KVCache:
        """The newest `n` positions: bounds memory and work for endless streams (a sliding attention window)."""
        if self.length <= n:
            return self
        return KVCache([k[:, :, -n:] for k in self.keys], [v[:, :, -n:] for v in self.values])


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rope(x: Tensor, positions: Tensor, base: float = 10_000.0) -> Tensor:
    """Rotate x [B, H, T, Dh] by positions [B, T] (float or int)."""
    half = x.shape[-1] // 2
    freqs = base ** (-torch.arange(half, device=x.device, dtype=torch.float32) / half)
    angles = positions.float()[:, None, :, None] * freqs  # [B, 1, T, half]
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)

    def forward(self, x: Tensor, positions: Tensor, past_k: Tensor | None, past_v: Tensor | None
                ) -> tuple[Tensor, Tensor, Tensor]:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k = rope(q, positions), rope(k, positions)
        if past_k is not None and past_k.shape[2]:
            assert past_v is not None  # keys and values are cached together
            k, v = torch.cat([past_k, k], 2), torch.cat([past_v, v], 2)
        p = k.shape[2] - t
        if t == 1:
            y = F.scaled_dot_product_attention(q, k, v)
        elif p == 0:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:  # new block after a cache: each new token sees the whole past and the new ones before it
            mask = torch.ones(t, p + t, dtype=torch.bool, device=x.device).tril(p)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out(y.transpose(1, 2).reshape(b, t, d)), k, v


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, ff_mult: int = 4, dropout: float = 0.0):
        super().__init__()
        self.norm1, self.norm2 = RMSNorm(dim), RMSNorm(dim)
        self.attn = Attention(dim, heads)
        self.ff = nn.Sequential(nn.Linear(dim, ff_mult * dim), nn.GELU(), nn.Linear(ff_mult * dim, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x, positions, past_k, past_v):
        a, k, v = self.attn(self.norm1(x), positions, past_k, past_v)
        x = x + self.drop(a)
        return x + self.drop(self.ff(self.norm2(x))), k, v


class Transformer(nn.Module):
    def __init__(self, dim: int, layers: int, heads: int, dropout: float = 0.0):
        super().__init__()
        self.blocks = nn.ModuleList(Block(dim, heads, dropout=dropout) for _ in range(layers))
        self.norm = RMSNorm(dim)

    def forward(self, x: Tensor, positions: Tensor, cache: KVCache | None = None) -> tuple[Tensor, KVCache]:
        """x [B, T, D], positions [B, T] -> (hidden [B, T, D], cache including these T positions)."""
        keys, values = [], []
        for i, block in enumerate(self.blocks):
            pk = cache.keys[i] if cache and cache.keys else None
            pv = cache.values[i] if cache and cache.values else None
            x, k, v = block(x, positions, pk, pv)
            keys.append(k)
            values.append(v)
        return self.norm(x), KVCache(keys, values)


def sample(logits: Tensor, generator: torch.Generator | None, temperature: float = 1.0, top_k: int = 0,
           top_p: float = 1.0) -> Tensor:
    """logits [..., V] -> ids [...]; temperature 0 is greedy. Deterministic for a seeded generator."""
    if temperature <= 0:
        return logits.argmax(-1)
    logits = logits / temperature
    if top_k:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = logits.softmax(-1)
    if top_p < 1.0:
        sorted_p, idx = probs.sort(-1, descending=True)
        drop = sorted_p.cumsum(-1) - sorted_p > top_p
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, idx, sorted_p)
    flat = probs.reshape(-1, probs.shape[-1])
    return torch.multinomial(flat, 1, generator=generator).reshape(probs.shape[:-1])


class TransformerStep(Protocol):
    """A transformer's step over positions with a KV cache, as the models call it: the torch `Transformer` itself, or
    its onnxruntime stand-in (`models.onnx_steps.OnnxTransformerStep`; a Protocol here so the models need not import
    the export layer)."""

    def __call__(self, x: Tensor, positions: Tensor, cache: KVCache | None = None) -> tuple[Tensor, KVCache]: ...
