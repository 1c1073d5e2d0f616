"""Reconstruction losses: multi-resolution log-mel and log-magnitude STFT, and a phase-aware complex loss.

Each STFT is computed once per resolution and shared by the mel and magnitude terms. torch.stft only (no
torchaudio); the mel filterbank is built here (HTK mel scale, triangular filters).
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor

RESOLUTIONS = ((512, 128, 64), (1024, 256, 100), (2048, 512, 128))  # n_fft, hop, n_mels


@functools.cache
def mel_filterbank(n_fft: int, n_mels: int, sample_rate: int, device: str = "cpu") -> Tensor:
    """[n_mels, n_fft//2+1] triangular filters on the HTK mel scale from 0 Hz to Nyquist."""

    def hz_to_mel(f: float) -> float:
        return 2595.0 * math.log10(1.0 + f / 700.0)

    mels = torch.linspace(hz_to_mel(0.0), hz_to_mel(sample_rate / 2), n_mels + 2, dtype=torch.float64)
    hz = 700.0 * (10 ** (mels / 2595.0) - 1.0)
    bins = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    lower, center, upper = hz[:-2, None], hz[1:-1, None], hz[2:, None]
    up = (bins[None] - lower) / (center - lower)
    down = (upper - bins[None]) / (upper - center)
    return torch.clamp(torch.minimum(up, down), min=0).float().to(device)


@functools.cache
def _window(n_fft: int, device: str) -> Tensor:
    return torch.hann_window(n_fft, device=device)


def _mag(x: Tensor, n_fft: int, hop: int) -> Tensor:
    spec = torch.stft(x, n_fft, hop, window=_window(n_fft, str(x.device)), return_complex=True)
    return spec.abs().clamp(min=1e-5)


def spectral_losses(x_hat: Tensor, x: Tensor, sample_rate: int) -> dict[str, Tensor]:
    """x_hat, x: [B, T] -> {'mel': ..., 'stft': ...} summed over resolutions (means per resolution)."""
    mel = x.new_zeros(())
    stft = x.new_zeros(())
    for n_fft, hop, n_mels in RESOLUTIONS:
        m_hat, m = _mag(x_hat, n_fft, hop), _mag(x, n_fft, hop)
        fb = mel_filterbank(n_fft, n_mels, sample_rate, str(x.device))
        mel = mel + F.l1_loss(torch.log((fb @ m_hat).clamp(min=1e-5)), torch.log((fb @ m).clamp(min=1e-5)))
        sc = torch.linalg.norm(m - m_hat, dim=(1, 2)) / torch.linalg.norm(m, dim=(1, 2)).clamp(min=1e-5)
        stft = stft + F.l1_loss(torch.log(m_hat), torch.log(m)) + sc.mean()
    n = len(RESOLUTIONS)
    return {"mel": mel / n, "stft": stft / n}


def complex_loss(x_hat: Tensor, x: Tensor, n_fft: int, hop: int) -> Tensor:
    """L1 on real and imaginary STFT parts (compressed by |S|^0.3, as in phase-aware speech enhancement)."""
    w = _window(n_fft, str(x.device))
    s_hat = torch.stft(x_hat, n_fft, hop, window=w, return_complex=True)
    s = torch.stft(x, n_fft, hop, window=w, return_complex=True)

    def compress(c: Tensor) -> Tensor:
        mag = c.abs().clamp(min=1e-6)
        return torch.view_as_real(c * (mag**0.3 / mag))

    return F.l1_loss(compress(s_hat), compress(s))


def phase_loss(x_hat: Tensor, x: Tensor, n_fft: int, hop: int) -> Tensor:
    """The phase's derivatives across frequency (group delay) and across time (instantaneous frequency) against the
    input's, as cosine distances of unit phasors weighted by the input's magnitude (two of APNet's phase terms,
    without wrapping trouble or an undefined angle at zero). The magnitude losses barely constrain phase, and a
    decoder whose harmonics drift in phase from frame to frame sounds rough: swapping the voice decoder's phase for
    the input's raised DNSMOS OVRL from 2.90 to 3.10 (docs/models.md). The absolute phase is left out: nothing in
    the tokens determines it (the shipped decoder scores as random noise does on it)."""
    w = _window(n_fft, str(x.device))
    s_hat = torch.stft(x_hat, n_fft, hop, window=w, return_complex=True)
    s = torch.stft(x, n_fft, hop, window=w, return_complex=True)
    u_hat, u = s_hat / (s_hat.abs() + 1e-6), s / (s.abs() + 1e-6)
    weight = s.abs()
    weight = weight / weight.sum(dim=(1, 2), keepdim=True).clamp(min=1e-6)

    def distance(a: Tensor, b: Tensor, wt: Tensor) -> Tensor:
        return ((1 - (a * b.conj()).real) * wt).sum(dim=(1, 2)).mean()

    group_delay = distance(u_hat[:, 1:] * u_hat[:, :-1].conj(), u[:, 1:] * u[:, :-1].conj(), weight[:, 1:])
    inst_freq = distance(u_hat[..., 1:] * u_hat[..., :-1].conj(), u[..., 1:] * u[..., :-1].conj(), weight[..., 1:])
    return group_delay + inst_freq
