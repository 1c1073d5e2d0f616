from __future__ import annotations

import torch

from talkstream.codecs.audio.quantizer import ResidualVQ, kmeans


def test_kmeans_finds_separated_clusters():
    g = torch.Generator().manual_seed(0)
    centers = torch.tensor([[5.0, 0.0], [-5.0, 0.0], [0.0, 5.0]])
    x = torch.cat([c + 0.1 * torch.randn(200, 2, generator=g) for c in centers])
    found = kmeans(x, 3)
    assert torch.cdist(centers, found).min(dim=1).values.max() < 0.2


def test_more_codebooks_reconstruct_better_after_kmeans_init():
    torch.manual_seed(0)
    vq = ResidualVQ(dim=8, num_codebooks=4, codebook_size=64)
    z = torch.randn(4000, 8)
    vq.init_from_latents(z)
    zz = z[:500].T[None]  # [1, D, F]
    errors = [float((vq.decode(vq.encode(zz, k)) - zz).pow(2).mean()) for k in range(1, 5)]
    assert all(a > b for a, b in zip(errors, errors[1:], strict=False)), errors
    assert errors[-1] < 0.5 * errors[0]


def test_training_pass_respects_per_item_codebook_count_and_revives_dead_codes():
    torch.manual_seed(0)
    vq = ResidualVQ(dim=4, num_codebooks=3, codebook_size=16, dead_threshold=0.5)
    vq.eval()  # no EMA update, so the codebook that quantized is the one we decode with
    z = torch.randn(2, 4, 50)
    n_q = torch.tensor([1, 3])
    q, commit, codes = vq(z, n_q)
    assert q.shape == z.shape and codes.shape == (2, 3, 50)
    # item 0 uses one codebook: its quantized latent equals the first codebook's vectors
    torch.testing.assert_close(q[0], vq.decode(codes[:1, :1])[0], rtol=1e-5, atol=1e-5)
    # codes far from all data die and are restarted on data
    vq.train()
    vq.embed[0, :] = 100.0
    vq.cluster_size[0, :] = 0.0
    vq(z, torch.tensor([3, 3]))
    assert vq.embed[0].abs().max() < 50
    usage = vq.usage(codes)
    assert len(usage) == 3 and 0 < usage[0]["used"] <= 1


def test_gradient_passes_straight_through():
    vq = ResidualVQ(dim=4, num_codebooks=2, codebook_size=8)
    z = torch.randn(1, 4, 10, requires_grad=True)
    q, commit, _ = vq(z, torch.tensor([2]))
    (q.sum() + commit).backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
