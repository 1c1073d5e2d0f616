"""Residual vector quantizer: EMA codebooks with dead-code restarts, k-means init, quantizer dropout.

One model serves 1..K codebooks: training samples a codebook count per item (quantizer dropout), so the first
codebooks carry the coarse signal and later ones refine it. Codebook collapse is guarded by EMA updates plus
restarting codes whose usage falls below `dead_threshold` with latents from the current batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def kmeans(x: Tensor, k: int, iters: int = 15, seed: int = 0) -> Tensor:
    """k-means on x [N, D] -> centroids [k, D], k-means++ seeding (spread-out starts avoid merged clusters)."""
    g = torch.Generator().manual_seed(seed)
    first = int(torch.randint(0, x.shape[0], (1,), generator=g))
    centroids = x.new_empty(k, x.shape[1])
    centroids[0] = x[first]
    d2 = (x - x[first]).pow(2).sum(1)
    for i in range(1, k):
        pick = int(torch.multinomial(d2.clamp(min=0) + 1e-12, 1, generator=g))
        centroids[i] = x[pick]
        d2 = torch.minimum(d2, (x - x[pick]).pow(2).sum(1))
    for _ in range(iters):
        assign = torch.cdist(x, centroids).argmin(dim=1)
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k).unsqueeze(1).to(x.dtype)
        empty = counts.squeeze(1) == 0
        centroids = torch.where(empty.unsqueeze(1), centroids, sums / counts.clamp(min=1))
        if empty.any():  # move empty clusters onto random points so every code is used
            centroids[empty] = x[torch.randint(0, x.shape[0], (int(empty.sum()),), generator=g)]
    return centroids


class ResidualVQ(nn.Module):
    """K stages of VQ over a D-dim latent. Codes: long [B, K, F]; latents: float [B, D, F]."""

    embed: Tensor  # buffers (register_buffer), declared for the type checker
    cluster_size: Tensor
    embed_sum: Tensor

    def __init__(
        self,
        dim: int,
        num_codebooks: int,
        codebook_size: int,
        decay: float = 0.99,
        dead_threshold: float = 0.5,
        eps: float = 1e-5,
    ):
        super().__init__()
        self.dim, self.num_codebooks, self.codebook_size = dim, num_codebooks, codebook_size
        self.decay, self.dead_threshold, self.eps = decay, dead_threshold, eps
        self.register_buffer("embed", torch.randn(num_codebooks, codebook_size, dim) * 0.1)
        self.register_buffer("cluster_size", torch.ones(num_codebooks, codebook_size))
        self.register_buffer("embed_sum", self.embed.clone())

    def _nearest(self, stage: int, r: Tensor) -> Tensor:
        """r: [N, D] -> codes [N] (squared distances without forming the N x C x D difference)."""
        # |r|^2 is the same for every code, so the argmin does without it (two kernels fewer per stage in onnxruntime)
        e = self.embed[stage]
        return ((e * e).sum(1)[None] - 2 * r @ e.t()).argmin(dim=1)

    def encode(self, z: Tensor, n_q: int) -> Tensor:
        """z [B, D, F] -> codes [B, n_q, F]."""
        return self.quantize(z, n_q)[0]

    def quantize(self, z: Tensor, n_q: int) -> tuple[Tensor, Tensor]:
        """z [B, D, F] -> (codes [B, n_q, F], the quantized latent [B, D, F] those codes decode to). A roundtrip takes
        the latent from here (z less the last residual) instead of looking every code up again."""
        d, f = int(z.shape[1]), int(z.shape[2])
        if n_q == 0:
            return z.new_zeros(z.shape[0], 0, f).long(), torch.zeros_like(z)
        # Shapes here keep the batch as -1 (f and d are fixed per exported graph), so a graph reshapes by constants.
        z_rows = z.transpose(1, 2).reshape(-1, d)
        r, codes = z_rows, []
        for k in range(n_q):
            c = self._nearest(k, r)
            r = r - self.embed[k][c]
            codes.append(c)
        q = (z_rows - r).reshape(-1, f, d).transpose(1, 2)
        return torch.stack(codes, 1).reshape(-1, f, n_q).transpose(1, 2), q

    def decode(self, codes: Tensor) -> Tensor:
        """codes [B, K, F] -> quantized latent [B, D, F]. Codes must be in range (`AudioCodec.check_codes`): one past a
        codebook's end would read the next codebook's first entry."""
        k = int(codes.shape[1])
        if k == 0:
            return self.embed.new_zeros(codes.shape[0], self.dim, codes.shape[2])
        # One lookup in all K codebooks laid end to end, then a sum over K (not K lookups and adds).
        offsets = torch.arange(k, device=codes.device)[:, None] * self.codebook_size
        rows = F.embedding(codes + offsets, self.embed[:k].reshape(-1, self.dim))  # [B, K, F, D]
        return rows.sum(1).transpose(1, 2)

    @torch.no_grad()
    def init_from_latents(self, z: Tensor) -> None:
        """k-means each stage on the residual left by the stages before it. z: [N, D]."""
        r = z.float()
        for k in range(self.num_codebooks):
            c = kmeans(r, self.codebook_size, seed=k)
            self.embed[k] = c
            self.embed_sum[k] = c
            self.cluster_size[k] = 1.0
            r = r - c[self._nearest(k, r)]

    def forward(self, z: Tensor, n_q: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Training pass. z [B, D, F]; n_q [B] codebooks per item (dropout).

        Returns (quantized latent with straight-through gradient [B, D, F], commitment loss, codes [B, K, F]).
        Stages beyond an item's n_q contribute nothing and learn nothing from it.
        """
        b, d, f = z.shape
        r = z.transpose(1, 2).reshape(-1, d)
        active = torch.arange(self.num_codebooks, device=z.device)[None] < n_q[:, None]  # [B, K]
        active = active[:, None, :].expand(b, f, -1).reshape(-1, self.num_codebooks)
        q = torch.zeros_like(r)
        codes = []
        for k in range(self.num_codebooks):
            m = active[:, k : k + 1].to(r.dtype)
            c = self._nearest(k, r.detach())
            qk = self.embed[k][c] * m
            if self.training:
                self._ema_update(k, r.detach(), c, m.squeeze(1).bool())
            q = q + qk
            r = r - qk
            codes.append(c)
        commit = F.mse_loss(z.transpose(1, 2).reshape(-1, d), q.detach())
        q_st = z + (q.reshape(b, f, d).transpose(1, 2) - z).detach()
        return q_st, commit, torch.stack(codes, 1).reshape(b, f, -1).transpose(1, 2)

    @torch.no_grad()
    def _ema_update(self, k: int, r: Tensor, codes: Tensor, mask: Tensor) -> None:
        r, codes = r[mask], codes[mask]
        if r.shape[0] == 0:
            return
        onehot_count = torch.bincount(codes, minlength=self.codebook_size).to(r.dtype)
        summed = torch.zeros_like(self.embed_sum[k]).index_add_(0, codes, r)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(onehot_count)
            torch.distributed.all_reduce(summed)
        self.cluster_size[k].mul_(self.decay).add_(onehot_count, alpha=1 - self.decay)
        self.embed_sum[k].mul_(self.decay).add_(summed, alpha=1 - self.decay)
        n = self.cluster_size[k].sum()
        size = (self.cluster_size[k] + self.eps) / (n + self.codebook_size * self.eps) * n
        self.embed[k] = self.embed_sum[k] / size[:, None]
        dead = self.cluster_size[k] < self.dead_threshold
        if dead.any():  # restart dead codes on random current residuals (same on every rank via rank-0 broadcast)
            pick = r[torch.randint(0, r.shape[0], (int(dead.sum()),), device=r.device)]
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                torch.distributed.broadcast(pick, 0)
            self.embed[k][dead] = pick
            self.embed_sum[k][dead] = pick
            self.cluster_size[k][dead] = 1.0

    @torch.no_grad()
    def usage(self, codes: Tensor) -> list[dict]:
        """Per codebook: share of codes used and perplexity, from codes [B, K, F]."""
        out = []
        for k in range(codes.shape[1]):
            p = torch.bincount(codes[:, k].reshape(-1), minlength=self.codebook_size).float()
            p = p / p.sum().clamp(min=1)
            ent = -(p[p > 0] * p[p > 0].log()).sum()
            out.append({"codebook": k, "used": float((p > 0).float().mean()), "perplexity": float(ent.exp())})
        return out
