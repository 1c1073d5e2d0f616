"""Pitch for codec v4: a causal pitch and voicing tracker, its quantizer, and the harmonic-plus-noise excitation
that the decoder filters.

The tracker (`PitchTracker`) is classical, as Opus and LPCNet do it, not learned: per 13.3 ms codec frame it takes
the last `window_ms` of input ending where the frame ends (no lookahead: no latency beyond the frame itself),
decimated to 12 kHz, and computes YIN's cumulative mean normalised difference (de Cheveigne & Kawahara 2002) over
lags for 62.5-500 Hz. Among the dips it picks the one with the lowest cost: the dip's depth, a small preference for
shorter lags (against octave-down errors), and, when the previous frame was voiced, the distance in octaves from its
lag (a causal, one-frame dynamic programme: full-utterance Viterbi would need the future). Voicing: the dip deeper
than a threshold (looser while the previous frame was voiced) on a frame that is not silent.

The quantizer sends one index per frame in `bits` bits (6: index 0 = unvoiced, 1..63 log-spaced from `f0_min` to
`f0_max`, 3.4% apart, as Codec2 700C's 6-bit log-F0): 450 bit/s at 75 frames/s, counted in the codec's bitrate.

`HarmonicSource` is the decoder's side: from each frame's decoded F0 it makes a band-limited pulse train (every
harmonic below Nyquist, unit power) whose phase accumulates sample by sample across frames (its state), and a fixed
noise sequence indexed by the absolute frame (so streaming equals offline). The phase of the decoded speech comes
from here, coherent by construction, as in NSF and hn-NSF; the network predicts magnitudes and how much of each bin
is harmonic (codec.ExcitedDecoder).

State: plain tensors in lists, as every streaming layer here (modules.py).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from talkstream.codecs.audio.modules import State, keep_last

TRACK_RATE = 12_000  # the tracker's rate: speech's pitch needs nothing above 6 kHz


def lowpass_taps(n: int, cutoff: float) -> Tensor:
    """A Hann-windowed sinc low-pass of `n` taps at `cutoff` (a fraction of the input's Nyquist), unit DC gain."""
    t = torch.arange(n, dtype=torch.float64) - (n - 1) / 2
    h = torch.sinc(cutoff * t) * torch.hann_window(n, periodic=False, dtype=torch.float64)
    return (h / h.sum()).float()


class PitchTracker(nn.Module):
    """pcm [B, 1, F*hop] at `sample_rate` -> (f0 Hz [B, F] (0 = unvoiced), periodicity [B, F] in [0, 1]).

    State: [the last input samples the decimating filter needs [B, taps-1], the decimated history [B, L],
    the previous frame's lag in 12 kHz samples [B] (0 = unvoiced)].
    """

    taps: Tensor  # a buffer (register_buffer), declared for the type checker

    def __init__(self, sample_rate: int, hop: int, f0_min: float = 62.5, f0_max: float = 500.0,
                 window_ms: float = 20.0, threshold: float = 0.25, hold_threshold: float = 0.4,
                 silence_db: float = -60.0):
        super().__init__()
        if sample_rate % TRACK_RATE:
            raise ValueError(f"the pitch tracker needs a sample rate that is a multiple of {TRACK_RATE} Hz")
        self.decim = sample_rate // TRACK_RATE
        if hop % self.decim:
            raise ValueError("the hop must be a whole number of tracker samples")
        self.hop_d = hop // self.decim
        self.lag_min = int(math.floor(TRACK_RATE / f0_max))
        self.lag_max = int(math.ceil(TRACK_RATE / f0_min))
        self.width = int(round(window_ms * TRACK_RATE / 1000))  # the integration window W
        self.span = self.width + self.lag_max + 1  # samples one frame's difference function reads
        self.threshold, self.hold_threshold = threshold, hold_threshold
        self.silence = 10 ** (silence_db / 10)
        self.n_fft = 1 << (self.span + self.width).bit_length()
        self.register_buffer("taps", lowpass_taps(8 * self.decim + 1, 0.9 / self.decim)[None, None], persistent=False)

    def init_state(self, batch: int) -> State:
        z = self.taps.new_zeros
        return [z(batch, self.taps.shape[-1] - 1), z(batch, self.span), z(batch)]

    def step(self, pcm: Tensor, state: State) -> tuple[tuple[Tensor, Tensor], State]:
        if pcm.shape[-1] == 0:
            empty = state[0].new_zeros(state[0].shape[0], 0)
            return (empty, empty), state
        x = torch.cat([state[0], pcm.reshape(pcm.shape[0], -1).to(state[0].dtype)], dim=-1)
        low = F.conv1d(x[:, None], self.taps, stride=self.decim)[:, 0]  # [B, T/decim]
        new_in = keep_last(x, self.taps.shape[-1] - 1)
        hist = torch.cat([state[1], low], dim=-1)
        frames = low.shape[-1] // self.hop_d
        if frames == 0:
            return (x.new_zeros(x.shape[0], 0), x.new_zeros(x.shape[0], 0)), [new_in, hist, state[2]]
        # frame j: the `span` samples ending where frame j ends
        seg = hist.unfold(-1, self.span, self.hop_d)[:, -frames:]  # [B, F, span]
        cmnd, energy = self._cmnd(seg)
        prev = state[2]
        f0s, pers = [], []
        for j in range(frames):
            lag, per = self._pick(cmnd[:, j], energy[:, j], prev)
            prev = lag
            f0s.append(torch.where(lag > 0, TRACK_RATE / lag.clamp(min=1e-3), torch.zeros_like(lag)))
            pers.append(per)
        return (torch.stack(f0s, 1), torch.stack(pers, 1)), [new_in, keep_last(hist, self.span), prev]

    def _cmnd(self, seg: Tensor) -> tuple[Tensor, Tensor]:
        """seg [B, F, span] -> (YIN's d' [B, F, lag_max+2] (index = lag), mean power of the window [B, F])."""
        w = self.width
        ref = seg[..., :w]
        # r(tau) = sum_t ref[t] seg[t + tau], every lag at once through the FFT
        spec = torch.fft.rfft(seg, self.n_fft) * torch.fft.rfft(ref, self.n_fft).conj()
        r = torch.fft.irfft(spec, self.n_fft)[..., : self.lag_max + 2]
        sq = F.pad(seg * seg, (1, 0)).cumsum(-1)
        lags = torch.arange(self.lag_max + 2, device=seg.device)
        e_tau = sq[..., lags + w] - sq[..., lags]  # energy of seg[tau : tau + W]
        d = (e_tau[..., :1] + e_tau - 2 * r).clamp(min=0)
        cum = d[..., 1:].cumsum(-1)
        dn = torch.ones_like(d)
        dn[..., 1:] = d[..., 1:] * lags[1:] / cum.clamp(min=1e-12)
        return dn, e_tau[..., 0] / w

    def _pick(self, dn: Tensor, energy: Tensor, prev: Tensor) -> tuple[Tensor, Tensor]:
        """One frame: dn [B, lags], energy [B], previous lag [B] -> (lag [B] fractional, 0 = unvoiced; periodicity)."""
        lo, hi = self.lag_min, self.lag_max
        mid = dn[:, lo : hi + 1]
        dips = (mid <= dn[:, lo - 1 : hi]) & (mid <= dn[:, lo + 1 : hi + 2])
        lags = torch.arange(lo, hi + 1, device=dn.device, dtype=dn.dtype)
        octaves = torch.log2(lags / lo)[None]
        cost = mid + 0.08 * octaves / math.log2(hi / lo)
        voiced_before = prev > 0
        jump = (octaves - torch.log2(prev.clamp(min=1) / lo)[:, None]).abs()
        cost = cost + torch.where(voiced_before[:, None], 0.25 * jump, torch.zeros_like(jump))
        cost = torch.where(dips, cost, torch.full_like(cost, 1e3))
        i = cost.argmin(-1)
        depth = mid.gather(1, i[:, None])[:, 0]
        # parabolic interpolation of the dip for a fractional lag
        a = dn.gather(1, (i + lo - 1)[:, None])[:, 0]
        b = depth
        c = dn.gather(1, (i + lo + 1)[:, None])[:, 0]
        denom = a - 2 * b + c
        shift = torch.where(denom.abs() > 1e-9, 0.5 * (a - c) / denom, torch.zeros_like(denom)).clamp(-0.5, 0.5)
        lag = lags[i] + shift
        limit = torch.where(voiced_before, torch.full_like(depth, self.hold_threshold),
                            torch.full_like(depth, self.threshold))
        voiced = (depth < limit) & (energy > self.silence) & dips.any(-1)
        return torch.where(voiced, lag, torch.zeros_like(lag)), (1 - depth).clamp(0, 1)


class PitchQuantizer:
    """F0 Hz <-> index in `bits` bits: 0 = unvoiced, 1..2^bits-1 log-spaced over [f0_min, f0_max]."""

    def __init__(self, bits: int = 6, f0_min: float = 62.5, f0_max: float = 500.0):
        if not 2 <= bits <= 10:
            raise ValueError(f"pitch bits must be 2-10, got {bits}")
        self.bits, self.levels = bits, (1 << bits) - 1
        self.lo, self.span = math.log(f0_min), math.log(f0_max / f0_min)

    @property
    def size(self) -> int:
        return 1 << self.bits

    def encode(self, f0: Tensor) -> Tensor:
        pos = (torch.log(f0.clamp(min=1e-3)) - self.lo) / self.span * (self.levels - 1)
        idx = 1 + pos.round().clamp(0, self.levels - 1).long()
        return torch.where(f0 > 0, idx, torch.zeros_like(idx))

    def decode(self, idx: Tensor) -> Tensor:
        f0 = torch.exp(self.lo + (idx.float() - 1).clamp(min=0) / (self.levels - 1) * self.span)
        return torch.where(idx > 0, f0, torch.zeros_like(f0))


class HarmonicSource(nn.Module):
    """Decoded F0 per frame [B, F] -> (harmonic excitation, noise excitation), each as the windowed spectra of the
    decoder's 2*hop-sample frames: ([B, F, bins] real, [B, F, bins] imag) pairs, frame j covering the previous hop
    and its own, as the decoder's overlap-add lays them.

    Harmonic: sum_k cos(k phi) for every k f0 below Nyquist (the Dirichlet kernel's closed form), each harmonic at
    amplitude sqrt(4 f0 / sr) (unit power), F0 and voicing interpolated linearly across the hop from the previous
    frame's, phi accumulated per sample. Noise: unit-variance white noise from a fixed table of `table_frames`
    frames, frame j reading entry j mod table_frames (its spectra precomputed).

    State: [phase in cycles [B] (float64), previous F0 [B], the previous hop's harmonic signal [B, hop],
    frame index [B]].
    """

    window: Tensor  # buffers (register_buffer), declared for the type checker
    noise_re: Tensor
    noise_im: Tensor

    def __init__(self, sample_rate: int, hop: int, table_frames: int = 373, seed: int = 1234):
        super().__init__()
        self.sr, self.hop, self.n_fft = sample_rate, hop, 2 * hop
        self.register_buffer("window", torch.hann_window(self.n_fft, periodic=True).sqrt(), persistent=False)
        g = torch.Generator().manual_seed(seed)
        noise = torch.randn(table_frames * hop, generator=g)
        # window j of the table: the hop before j and hop j (circularly)
        idx = (torch.arange(table_frames)[:, None] * hop - hop + torch.arange(self.n_fft)[None]) % noise.numel()
        spec = torch.fft.rfft(noise[idx] * self.window, dim=-1)
        self.register_buffer("noise_re", spec.real.contiguous(), persistent=False)
        self.register_buffer("noise_im", spec.imag.contiguous(), persistent=False)
        self.table_frames = table_frames

    def init_state(self, batch: int) -> State:
        z = self.window.new_zeros
        return [z(batch, dtype=torch.float64), z(batch), z(batch, self.hop), z(batch)]

    def step(self, f0: Tensor, state: State) -> tuple[tuple[Tensor, Tensor, Tensor, Tensor], State]:
        phase0, f_prev, last, frame0 = state
        b, n = f0.shape
        f0 = f0.to(self.window.dtype)
        if n == 0:
            e = f0.new_zeros(b, 0, self.n_fft // 2 + 1)
            return (e, e, e, e), state
        prev = torch.cat([f_prev[:, None], f0[:, :-1]], dim=1)  # [B, F]
        v_prev, v_cur = (prev > 0).to(f0.dtype), (f0 > 0).to(f0.dtype)
        # where only one end is voiced, hold its F0 and fade the amplitude in or out
        start = torch.where(prev > 0, prev, f0)
        end = torch.where(f0 > 0, f0, prev)
        ramp = torch.arange(1, self.hop + 1, dtype=f0.dtype, device=f0.device) / self.hop  # [hop]
        freq = start[..., None] + (end - start)[..., None] * ramp  # [B, F, hop]
        amp = v_prev[..., None] + (v_cur - v_prev)[..., None] * ramp
        freq = freq.reshape(b, -1)
        # in float64: a long offline call sums hundreds of thousands of increments (float32 would drift from the
        # streamed sum), and the phase is kept in [0, 1) cycles between calls
        cycles = phase0[:, None].double() + torch.cumsum(freq.double() / self.sr, dim=-1)
        cycles = cycles - torch.floor(cycles)
        theta = (2 * math.pi * cycles).to(freq.dtype)
        k = torch.floor((0.5 * self.sr - 100.0) / freq.clamp(min=20.0))
        half = torch.sin(0.5 * theta)
        safe = half.abs() > 1e-6
        dirichlet = torch.where(safe, torch.sin((k + 0.5) * theta) / (2 * torch.where(safe, half, 1.0)) - 0.5, k)
        harmonic = dirichlet * torch.sqrt(4 * freq.clamp(min=20.0) / self.sr) * amp.reshape(b, -1)
        windows = torch.cat([last, harmonic], dim=-1).unfold(-1, self.n_fft, self.hop)  # [B, F, n_fft]
        spec = torch.fft.rfft(windows * self.window, dim=-1)
        idx = (frame0[:, None].long() + torch.arange(n, device=f0.device)[None]) % self.table_frames
        new_state = [cycles[:, -1], f0[:, -1], keep_last(harmonic, self.hop), frame0 + n]
        return (spec.real, spec.imag, self.noise_re[idx], self.noise_im[idx]), new_state
