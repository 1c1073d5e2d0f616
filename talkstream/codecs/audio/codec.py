"""talkstream's causal neural audio codec: SEANet-like encoder, residual VQ, Vocos-style iSTFT decoder.

24 kHz mono, 75 frames/s (hop 320 samples = 13.3 ms), up to 8 codebooks of 1024 codes (0.75 to 6 kbps).

Latency: the encoder never looks ahead; a frame's code needs its own 320 samples. The decoder is causal too and
predicts, per frame, a 640-sample windowed STFT frame (n_fft = 2 x hop) that overlap-adds with its neighbour, so a
block of output is final one frame later. Algorithmic latency = 2 hops = 640 samples = 26.7 ms, decoder lookahead 0.
With `decoder_subframes` = 2 it predicts two such windows per frame, half a hop apart (three-quarter overlap): the
later one reaches half a hop past the input its frame has heard, under its taper, and the output is still final one
frame later, so the latency is the same.

Streaming: `state = codec.init_state()`, `codes, state = codec.encode_step(pcm, state)`,
`pcm, state = codec.decode_step(codes, state)`. `encode`/`decode` run the same steps over the whole signal.
The decoded stream is `decode_delay` (= hop) samples behind the input: sample n of the output is sample
n - hop of the input; `reconstruct` trims that for whole-file use.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from talkstream.codecs.audio.losses import mel_filterbank
from talkstream.codecs.audio.modules import (
    CausalConvNeXtBlock,
    ChannelLayerNorm,
    ResidualUnit,
    State,
    StreamingConv1d,
    StreamingSequential,
    keep_last,
)
from talkstream.codecs.audio.pitch import HarmonicSource, PitchQuantizer, PitchTracker
from talkstream.codecs.audio.quantizer import ResidualVQ


@dataclass
class AudioCodecConfig:
    sample_rate: int = 24_000
    strides: tuple[int, ...] = (4, 4, 5, 4)  # product = hop = 320 -> 75 Hz
    channels: tuple[int, ...] = (24, 48, 96, 192)  # encoder width after each downsampling
    encoder_blocks: int = 1  # ConvNeXt blocks at frame rate at the end of the encoder
    latent_dim: int = 128
    num_codebooks: int = 8
    codebook_size: int = 1024
    decoder_dim: int = 256
    decoder_hidden: int = 768
    decoder_blocks: int = 6
    # STFT windows (n_fft = 2 x hop) the decoder emits per frame, at hop / decoder_subframes: 1 overlaps them by
    # half; 2 by three quarters (as Vocos), each sample the sum of four windows. The same latency either way
    # (docstring above). Shipped decoders use 1: 2 measured no better (docs/models.md).
    decoder_subframes: int = 1
    # "absolute": the head predicts each window's phase; "advance": it predicts each bin's phase advance since the
    # previous window, and the decoder carries the phase from window to window (its state), as a phase vocoder does
    # (tried on the voice decoder: its DNSMOS flattens near 2.6 by 8,400 steps, below absolute phase's 2.85;
    # docs/models.md)
    decoder_phase: str = "absolute"
    codec_id: str = "talkstream-audio-v1"
    # "conv": the learned SEANet encoder (v1, v2); "mel": a fixed causal log-mel front end with latent_dim bands
    # (v3: the codebooks code the spectral envelope a listener hears, and the decoder is a causal vocoder)
    encoder: str = "conv"
    # "istft": the decoder predicts each window's magnitude and phase (v1-v3); "excited" (v4): the encoder sends
    # the pitch (pitch.py: a causal tracker, `pitch_bits` per frame, row 0 of the codes) and the decoder's phase
    # comes from a harmonic-plus-noise excitation built from it, coherent by construction (ExcitedDecoder)
    decoder: str = "istft"
    pitch_bits: int = 0
    f0_min: float = 62.5
    f0_max: float = 500.0

    @property
    def hop(self) -> int:
        h = 1
        for s in self.strides:
            h *= s
        return h

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> AudioCodecConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown codec config keys: {sorted(unknown)}")
        d = dict(d)
        for k in ("strides", "channels"):
            if k in d:
                d[k] = tuple(d[k])
        return cls(**d)


@dataclass
class CodecState:
    """Everything one stream carries between steps. Encoder and decoder halves are independent."""

    num_codebooks: int
    pending: Tensor  # input samples not yet a whole frame [B, 1, <hop]
    encoder: State = field(default_factory=list)
    decoder: State = field(default_factory=list)  # conv contexts, then the overlap-add tail [B, hop]

    @staticmethod
    def stack(states: list[CodecState]) -> CodecState:
        """Many sessions' states -> one batched state, so one step serves them all (the server's batching).

        All must use the same number of codebooks and hold the same number of pending samples.
        """
        first = states[0]
        if any(s.num_codebooks != first.num_codebooks or s.pending.shape != first.pending.shape for s in states):
            raise ValueError("only states with equal codebooks and pending samples can be stacked")
        return CodecState(
            num_codebooks=first.num_codebooks,
            pending=torch.cat([s.pending for s in states]),
            encoder=[torch.cat(t) for t in zip(*(s.encoder for s in states), strict=True)],
            decoder=[torch.cat(t) for t in zip(*(s.decoder for s in states), strict=True)],
        )

    def unbind(self) -> list[CodecState]:
        """The inverse of `stack`: one state per batch item, as views (no copies on the hot path; a batch's tensors
        are freed once every session in it has stepped again)."""
        n = self.pending.shape[0]
        enc = [t.split(1) for t in self.encoder]
        dec = [t.split(1) for t in self.decoder]
        return [
            CodecState(
                self.num_codebooks,
                self.pending[i : i + 1],
                [t[i] for t in enc],
                [t[i] for t in dec],
            )
            for i in range(n)
        ]


class Encoder(nn.Module):
    def __init__(self, cfg: AudioCodecConfig):
        super().__init__()
        c, s = cfg.channels, cfg.strides
        layers: list[nn.Module] = [StreamingConv1d(1, c[0], 2 * s[0], stride=s[0])]
        for i in range(1, len(s)):
            layers += [ResidualUnit(c[i - 1]), nn.ELU(), StreamingConv1d(c[i - 1], c[i], 2 * s[i], stride=s[i])]
        layers += [CausalConvNeXtBlock(c[-1], 3 * c[-1]) for _ in range(cfg.encoder_blocks)]
        layers += [ChannelLayerNorm(c[-1]), nn.Conv1d(c[-1], cfg.latent_dim, 1)]
        self.net = StreamingSequential(*layers)


class LogMelFrames(nn.Module):
    """Fixed causal log-mel analysis, one frame per hop: frame j is the `n_mels`-band log-mel of the 2*hop samples
    ending where frame j ends (its own hop and the one before; Hann window), normalised per band by the training
    corpus's mean and standard deviation (buffers set by `fit`). Nothing here is learned by gradient.

    State: the previous hop of input [B, 1, hop], as StreamingConv1d keeps its context.
    """

    basis: Tensor  # buffers (register_buffer), declared for the type checker
    filterbank: Tensor
    mean: Tensor
    std: Tensor

    def __init__(self, hop: int, n_mels: int, sample_rate: int):
        super().__init__()
        self.hop, n_fft = hop, 2 * hop
        n = torch.arange(n_fft, dtype=torch.float64)
        k = torch.arange(n_fft // 2 + 1, dtype=torch.float64)[:, None]
        window = torch.hann_window(n_fft, periodic=True, dtype=torch.float64)
        basis = torch.cat([torch.cos(2 * torch.pi * k * n / n_fft), -torch.sin(2 * torch.pi * k * n / n_fft)]) * window
        # The DFT as a matmul over frames (exports to ONNX, no complex tensors); rebuilt at load, never stored.
        self.register_buffer("basis", basis.float().T.contiguous(), persistent=False)  # [n_fft, 2 * bins]
        # (a copy: mel_filterbank's result is cached and shared with the training losses)
        self.register_buffer("filterbank", mel_filterbank(n_fft, n_mels, sample_rate).clone(), persistent=False)
        self.register_buffer("mean", torch.zeros(n_mels, 1))
        self.register_buffer("std", torch.ones(n_mels, 1))

    def init_state(self, batch: int) -> State:
        return [self.mean.new_zeros(batch, 1, self.hop)]

    def raw(self, xp: Tensor) -> Tensor:
        """[B, 1, (F+1)*hop] -> unnormalised log-mel [B, n_mels, F]."""
        # Frame f is hops f and f+1 side by side: one matmul, where a strided conv was a slow onnxruntime Conv
        # (a fifth of a batched codec step at batch 16 in a one-off profile; docs/benchmarks.md).
        # Lengths as Python ints (fixed per exported graph) and the batch as -1: the tracer records constants, so
        # onnxruntime does no shape arithmetic per step.
        hops = xp.reshape(-1, int(xp.shape[-1]) // self.hop, self.hop)
        spec = (torch.cat([hops[:, :-1], hops[:, 1:]], dim=-1) @ self.basis).transpose(1, 2)
        bins = self.basis.shape[1] // 2
        re, im = spec[:, :bins], spec[:, bins:]
        mag = (re * re + im * im + 1e-10).sqrt()
        return torch.log((self.filterbank @ mag).clamp(min=1e-5))

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        xp = torch.cat([state[0], x], dim=-1)
        return (self.raw(xp) - self.mean) / self.std, [keep_last(xp, self.hop)]

    @torch.no_grad()
    def fit(self, raw_frames: Tensor) -> None:
        """Per-band mean and std from unnormalised frames [N, n_mels]."""
        self.mean.copy_(raw_frames.mean(0)[:, None])
        self.std.copy_(raw_frames.std(0)[:, None].clamp(min=1e-3))


class MelEncoder(nn.Module):
    def __init__(self, cfg: AudioCodecConfig):
        super().__init__()
        self.net = StreamingSequential(LogMelFrames(cfg.hop, cfg.latent_dim, cfg.sample_rate))


class OverlapAdd(nn.Module):
    """A decoder's windowed time frames to samples: Decoder's, and ExcitedDecoder's (one window per frame, half
    overlap)."""

    n_fft: int
    subframes: int

    def overlap_add(self, frames: Tensor, tail: Tensor) -> tuple[Tensor, Tensor]:
        """Windows [B, N, n_fft] at `step` = n_fft / (2*S) apart, window i starting at sample i*step of this block,
        plus the previous call's tail [B, n_fft - step] -> (the block's N*step final samples, the new tail).

        Sample chunk c (of `step` samples) is the sum over m of chunk m of window c - m. So with S = 1 a block of
        one hop is final one frame later, and with S = 2 too: the last window of a frame reaches half a hop past
        the input the frame has heard, under the window's taper, and later windows add onto that."""
        n = int(frames.shape[1])  # an int (fixed per exported graph); the batch stays -1 (dynamic)
        parts = 2 * self.subframes  # chunks per window
        step = self.n_fft // parts
        if parts == 2:  # half overlap: the same sums, in a third of the kernels an exported graph runs
            first, second = frames[..., :step], frames[..., step:]
            out = first + torch.cat([tail[:, None], second[:, :-1]], dim=1)
            return out.reshape(-1, 1, n * step), second[:, -1]
        chunks = frames.reshape(-1, n, parts, step)
        out = torch.cat([tail.reshape(-1, parts - 1, step), torch.zeros_like(chunks[:, :, 0])], dim=1)
        for m in range(parts):
            out = out + F.pad(chunks[:, :, m], (0, 0, m, parts - 1 - m))
        return out[:, :n].reshape(-1, 1, n * step), out[:, n:].reshape(-1, (parts - 1) * step)


class Decoder(OverlapAdd):
    """Latent frames -> per-frame log-magnitude and phase of `decoder_subframes` STFT windows of 2*hop samples ->
    windowed time frames, at hop / decoder_subframes apart."""

    window: Tensor  # buffers (register_buffer), declared for the type checker
    idft_cos: Tensor
    idft_sin: Tensor

    def __init__(self, cfg: AudioCodecConfig):
        super().__init__()
        self.n_fft, self.subframes = 2 * cfg.hop, cfg.decoder_subframes
        if self.subframes < 1 or cfg.hop % self.subframes:
            raise ValueError(f"decoder_subframes must divide the hop ({cfg.hop}), got {self.subframes}")
        if cfg.decoder_phase not in ("absolute", "advance"):
            raise ValueError(f"decoder_phase must be 'absolute' or 'advance', got {cfg.decoder_phase!r}")
        self.carries_phase = cfg.decoder_phase == "advance"
        self.net = StreamingSequential(
            StreamingConv1d(cfg.latent_dim, cfg.decoder_dim, 3),
            *(
                CausalConvNeXtBlock(cfg.decoder_dim, cfg.decoder_hidden, layer_scale=1 / cfg.decoder_blocks)
                for _ in range(cfg.decoder_blocks)
            ),
            ChannelLayerNorm(cfg.decoder_dim),
        )
        self.head = nn.Linear(cfg.decoder_dim, self.subframes * 2 * (self.n_fft // 2 + 1))
        # sqrt-Hann: analysis x synthesis = Hann, which sums to 1 at 50% overlap (perfect reconstruction).
        self.register_buffer("window", torch.hann_window(self.n_fft, periodic=True).sqrt(), persistent=False)
        # The inverse real DFT as two real matrices (what torch.fft.irfft computes): no complex tensors, so the
        # decoder exports to ONNX, and one small matmul per frame is as fast as an FFT call at this size.
        n, k = self.n_fft, torch.arange(self.n_fft // 2 + 1, dtype=torch.float64)[:, None]
        t = torch.arange(n, dtype=torch.float64)[None]
        scale = torch.full_like(k, 2.0 / n)
        scale[0] = scale[-1] = 1.0 / n  # DC and Nyquist appear once in the spectrum
        self.register_buffer("idft_cos", (scale * torch.cos(2 * torch.pi * k * t / n)).float(), persistent=False)
        self.register_buffer("idft_sin", (-scale * torch.sin(2 * torch.pi * k * t / n)).float(), persistent=False)

    def frames(self, z: Tensor, state: State) -> tuple[Tensor, State]:
        """z [B, D, F] -> windowed time frames [B, F*subframes, n_fft], in time order."""
        h, net_state = self.net.step(z, state[:-1] if self.carries_phase else state)
        spec = self.head(h.transpose(1, 2))
        # Batch as -1 and slices at constant bins: an exported graph reshapes and splits without shape arithmetic.
        bins = self.n_fft // 2 + 1
        spec = spec.reshape(-1, int(h.shape[-1]) * self.subframes, 2 * bins)  # [B, F*S, 2*bins]
        logmag, phase = spec[..., :bins], spec[..., bins:]
        if self.carries_phase:  # the previous window's phase [B, bins] plus the advances, wrapped to [0, 2 pi)
            phase = state[-1][:, None] + torch.cumsum(phase, dim=1)
            phase = phase - 2 * torch.pi * torch.floor(phase / (2 * torch.pi))
            net_state = net_state + [phase[:, -1]]
        state = net_state
        mag = torch.exp(logmag.clamp(max=7.0))
        frames = (mag * torch.cos(phase)) @ self.idft_cos + (mag * torch.sin(phase)) @ self.idft_sin
        return frames * self.window, state

    def init_state(self, batch: int, like: Tensor) -> State:
        """The body's conv contexts, the carried phase [B, bins] (advance only), the overlap-add tail
        [B, n_fft - step]; `like` gives dtype and device."""
        phase = [like.new_zeros(batch, self.n_fft // 2 + 1)] if self.carries_phase else []
        tail = like.new_zeros(batch, self.n_fft - self.n_fft // (2 * self.subframes))
        return self.net.init_state(batch) + phase + [tail]


class ExcitedDecoder(OverlapAdd):
    """Codec v4's decoder: latent frames and decoded pitch -> windowed time frames [B, F, n_fft] (one per frame).

    A causal ConvNeXt body reads the latent and two pitch features (log2(F0 / 150 Hz), voiced) and predicts per
    frame a log-magnitude per bin. The phase is not predicted: in a voiced frame each bin takes the phase of
    pitch.py's HarmonicSource (a pulse train whose phase accumulates sample by sample from the transmitted F0), in
    an unvoiced one the phase of its noise, so harmonics stay coherent from frame to frame by construction, as in
    NSF and the iSTFTNet/Kokoro decoders that feed a sine source's spectrum forward. Tried and dropped
    (docs/benchmarks.md): shaping the excitation with minimum-phase filters instead of per-bin magnitudes, and a
    learned per-bin harmonic share (the spectral losses drove it towards noise; forcing it to 1 raised DNSMOS).
    """

    window: Tensor  # a buffer (register_buffer), declared for the type checker

    def __init__(self, cfg: AudioCodecConfig):
        super().__init__()
        if cfg.pitch_bits <= 0:
            raise ValueError("an excited decoder needs the pitch in the bitstream (pitch_bits > 0)")
        self.n_fft, self.subframes, self.bins = 2 * cfg.hop, 1, cfg.hop + 1
        self.pitch = PitchQuantizer(cfg.pitch_bits, cfg.f0_min, cfg.f0_max)
        self.net = StreamingSequential(
            StreamingConv1d(cfg.latent_dim + 2, cfg.decoder_dim, 3),
            *(
                CausalConvNeXtBlock(cfg.decoder_dim, cfg.decoder_hidden, layer_scale=1 / cfg.decoder_blocks)
                for _ in range(cfg.decoder_blocks)
            ),
            ChannelLayerNorm(cfg.decoder_dim),
        )
        self.net_states = len(self.net.init_state(0))
        self.head = nn.Linear(cfg.decoder_dim, self.bins)
        self.source = HarmonicSource(cfg.sample_rate, cfg.hop)
        self.register_buffer("window", torch.hann_window(self.n_fft, periodic=True).sqrt(), persistent=False)

    def init_state(self, batch: int, like: Tensor) -> State:
        """The body's conv contexts, the source's state (pitch.py), the overlap-add tail [B, hop]."""
        return self.net.init_state(batch) + self.source.init_state(batch) + [like.new_zeros(batch, self.n_fft // 2)]

    def features(self, f0: Tensor) -> Tensor:
        """F0 Hz [B, F] -> the body's pitch inputs [B, 2, F]: log2(F0 / 150 Hz) where voiced, and voiced."""
        voiced = (f0 > 0).to(f0.dtype)
        return torch.stack([torch.log2(f0.clamp(min=1.0) / 150.0) * voiced, voiced], dim=1)

    def frames(self, z: Tensor, pitch: Tensor, state: State) -> tuple[Tensor, State]:
        """z [B, D, F], pitch indices long [B, F] -> windowed time frames [B, F, n_fft]."""
        f0 = self.pitch.decode(pitch).to(z.dtype)
        h, net_state = self.net.step(torch.cat([z, self.features(f0)], dim=1), state[: self.net_states])
        (hr, hi, nr, ni), source_state = self.source.step(f0, state[self.net_states :])
        mag = torch.exp(self.head(h.transpose(1, 2)).clamp(max=7.0))
        voiced = (f0 > 0)[..., None]
        re, im = torch.where(voiced, hr, nr), torch.where(voiced, hi, ni)
        mag = mag * torch.rsqrt(re * re + im * im + 1e-12)  # unit phasors: the source gives the phase alone
        re, im = mag * re, mag * im
        frames = torch.fft.irfft(torch.complex(re, im), n=self.n_fft, dim=-1)
        return frames * self.window, net_state + source_state


class AudioCodec(nn.Module):
    def __init__(self, cfg: AudioCodecConfig | None = None):
        super().__init__()
        self.cfg = cfg or AudioCodecConfig()
        if self.cfg.encoder not in ("conv", "mel"):
            raise ValueError(f"unknown codec encoder {self.cfg.encoder!r} (conv or mel)")
        self.encoder = MelEncoder(self.cfg) if self.cfg.encoder == "mel" else Encoder(self.cfg)
        self.quantizer = ResidualVQ(self.cfg.latent_dim, self.cfg.num_codebooks, self.cfg.codebook_size)
        if self.cfg.decoder not in ("istft", "excited"):
            raise ValueError(f"unknown codec decoder {self.cfg.decoder!r} (istft or excited)")
        self.excited = self.cfg.decoder == "excited"
        self.decoder: Decoder | ExcitedDecoder = ExcitedDecoder(self.cfg) if self.excited else Decoder(self.cfg)
        # codec v4: the pitch, row 0 of the codes, `pitch_bits` per frame (pitch.py)
        self.pitch_tracker = (
            PitchTracker(self.cfg.sample_rate, self.cfg.hop, self.cfg.f0_min, self.cfg.f0_max)
            if self.cfg.pitch_bits
            else None
        )
        self.pitch_quantizer = (
            PitchQuantizer(self.cfg.pitch_bits, self.cfg.f0_min, self.cfg.f0_max) if self.cfg.pitch_bits else None
        )

    # --- the contract servers read instead of hard-coding numbers ---
    @property
    def sample_rate(self) -> int:
        return self.cfg.sample_rate

    @property
    def frame_size(self) -> int:
        return self.cfg.hop

    @property
    def frame_rate(self) -> float:
        return self.cfg.sample_rate / self.cfg.hop

    @property
    def num_codebooks(self) -> int:
        return self.cfg.num_codebooks

    @property
    def codebook_size(self) -> int:
        return self.cfg.codebook_size

    @property
    def lookahead_frames(self) -> int:
        return 0

    @property
    def decoder_context_frames(self) -> int:
        """How many past frames one output frame depends on: every decoder conv's context, plus the overlap-add."""
        return 1 + sum(m.context for m in self.decoder.net.modules() if isinstance(m, StreamingConv1d))

    @property
    def decode_delay(self) -> int:
        """Samples by which decoded output trails the input (the overlap-add tail)."""
        return self.cfg.hop

    @property
    def algorithmic_latency_ms(self) -> float:
        return 1000.0 * (self.frame_size + self.decode_delay) / self.sample_rate

    @property
    def pitch_rows(self) -> int:
        """Rows of the codes before the codebooks: 1 (the pitch) for codec v4, else 0."""
        return 1 if self.cfg.pitch_bits else 0

    def bitrate(self, num_codebooks: int) -> float:
        """Bits per second at `num_codebooks` codebooks, the pitch included (codec v4)."""
        return self.frame_rate * (num_codebooks * (self.codebook_size - 1).bit_length() + self.cfg.pitch_bits)

    def _check_codebooks(self, n: int | None) -> int:
        n = self.num_codebooks if n is None else int(n)
        if not 1 <= n <= self.num_codebooks:
            raise ValueError(f"num_codebooks must be between 1 and {self.num_codebooks}, got {n}")
        return n

    # --- streaming ---
    def init_state(self, batch_size: int = 1, num_codebooks: int | None = None) -> CodecState:
        p = next(self.parameters())
        return CodecState(
            num_codebooks=self._check_codebooks(num_codebooks),
            pending=torch.zeros(batch_size, 1, 0, dtype=p.dtype, device=p.device),
            encoder=self.encoder.net.init_state(batch_size)
            + (self.pitch_tracker.init_state(batch_size) if self.pitch_tracker is not None else []),
            decoder=self.decoder.init_state(batch_size, p),
        )

    def encode_step(self, pcm: Tensor, state: CodecState) -> tuple[Tensor, CodecState]:
        """pcm: float [B, 1, T] (any T >= 0) -> codes long [B, K, F] for every whole frame now available (codec v4:
        [B, 1 + K, F], row 0 the pitch index)."""
        codes, _, state = self._quantize_step(pcm, state)
        return codes, state

    def roundtrip_step(self, pcm: Tensor, state: CodecState) -> tuple[Tensor, Tensor, CodecState]:
        """`encode_step` then `decode_step` on its codes, in one: pcm [B, 1, T] -> (codes [B, K, F], pcm [B, 1, F*hop])
        with the decoder fed the quantizer's own latent (the codes' lookup again would be the same sum)."""
        codes, q, state = self._quantize_step(pcm, state)
        out, state = self.decode_latent_step(q, state, codes[:, 0] if self.pitch_rows else None)
        return codes, out, state

    def _quantize_step(self, pcm: Tensor, state: CodecState) -> tuple[Tensor, Tensor, CodecState]:
        x = torch.cat([state.pending, pcm.to(state.pending.dtype)], dim=-1)
        n = int(x.shape[-1]) // self.cfg.hop * self.cfg.hop  # an int: a constant in exported graphs
        if n == 0:
            rows = state.num_codebooks + self.pitch_rows
            codes = torch.zeros(x.shape[0], rows, 0, dtype=torch.long, device=x.device)
            return codes, x.new_zeros(x.shape[0], self.cfg.latent_dim, 0), dataclasses.replace(state, pending=x)
        n_enc = len(state.encoder) - (len(self.pitch_tracker.init_state(0)) if self.pitch_tracker is not None else 0)
        z, enc = self.encoder.net.step(x[..., :n], state.encoder[:n_enc])
        codes, q = self.quantizer.quantize(z, state.num_codebooks)
        if self.pitch_tracker is not None:
            pitch, tracker = self.pitch_index_step(x[..., :n], state.encoder[n_enc:])
            codes, enc = torch.cat([pitch[:, None], codes], dim=1), enc + tracker
        return codes, q, dataclasses.replace(state, pending=x[..., n:], encoder=enc)

    @torch.no_grad()
    def pitch_index_step(self, pcm: Tensor, state: State) -> tuple[Tensor, State]:
        """Codec v4's pitch: pcm [B, 1, F*hop] -> pitch indices long [B, F] (0 = unvoiced), the tracker's state."""
        assert self.pitch_tracker is not None and self.pitch_quantizer is not None
        (f0, _), state = self.pitch_tracker.step(pcm, state)
        return self.pitch_quantizer.encode(f0), state

    def decode_latent_step(
        self, z: Tensor, state: CodecState, pitch: Tensor | None = None
    ) -> tuple[Tensor, CodecState]:
        """Latent [B, D, F] (codec v4: and pitch indices long [B, F]) -> pcm [B, 1, F*hop], trailing the input by
        `decode_delay` samples."""
        if z.shape[-1] == 0:
            return z.new_zeros(z.shape[0], 1, 0), state
        if isinstance(self.decoder, ExcitedDecoder):
            if pitch is None:
                raise ValueError("codec v4 decodes with the pitch: give the pitch indices")
            frames, dec = self.decoder.frames(z, pitch, state.decoder[:-1])
        else:
            frames, dec = self.decoder.frames(z, state.decoder[:-1])
        out, tail = self.decoder.overlap_add(frames, state.decoder[-1])
        if self.excited:
            out = soft_limit(out)
        return out, dataclasses.replace(state, decoder=dec + [tail])

    def check_codes(self, codes: Tensor) -> None:
        """Refuse codes this codec cannot decode (more codebooks than it has, values beyond a codebook, codec v4: no
        pitch row or a pitch index beyond its bits)."""
        if codes.dim() != 3:
            raise ValueError(f"codes must be [batch, rows, frames], got shape {tuple(codes.shape)}")
        if self.pitch_rows:
            pitch = codes[:, 0]
            if codes.shape[1] < 2 or pitch.numel() and (pitch.min() < 0 or pitch.max() >= 1 << self.cfg.pitch_bits):
                raise ValueError("codes out of range for this codec (codec v4: row 0 is the pitch, then 1-8 codebooks)")
            codes = codes[:, 1:]
        if (
            codes.shape[1] > self.num_codebooks
            or codes.numel()
            and (codes.min() < 0 or codes.max() >= self.codebook_size)
        ):
            raise ValueError("codes out of range for this codec")

    def decode_step(self, codes: Tensor, state: CodecState) -> tuple[Tensor, CodecState]:
        """codes long [B, K, F] (K <= num_codebooks; codec v4: [B, 1 + K, F], row 0 the pitch) -> pcm [B, 1, F*hop]."""
        self.check_codes(codes)
        if self.pitch_rows:
            return self.decode_latent_step(self.quantizer.decode(codes[:, 1:]), state, codes[:, 0])
        return self.decode_latent_step(self.quantizer.decode(codes), state)

    # --- offline: the same steps over the whole signal ---
    @torch.no_grad()
    def encode(self, pcm: Tensor, num_codebooks: int | None = None) -> Tensor:
        """pcm [B, 1, T] -> codes [B, K, ceil(T/hop)] (the tail is zero-padded to a whole frame)."""
        pad = -pcm.shape[-1] % self.cfg.hop
        codes, _ = self.encode_step(F.pad(pcm, (0, pad)), self.init_state(pcm.shape[0], num_codebooks))
        return codes

    @torch.no_grad()
    def decode(self, codes: Tensor) -> Tensor:
        """codes [B, K, F] -> pcm [B, 1, F*hop], `decode_delay` samples behind the input (as streamed)."""
        pcm, _ = self.decode_step(codes, self.init_state(codes.shape[0]))
        return pcm

    @torch.no_grad()
    def reconstruct(self, pcm: Tensor, num_codebooks: int | None = None) -> Tensor:
        """Round trip aligned with the input: [B, 1, T] -> [B, 1, T]."""
        # One extra frame of silence lets the overlap-add finish the last real frame.
        codes = self.encode(F.pad(pcm, (0, self.decode_delay)), num_codebooks)
        return align_output(self.decode(codes), self.decode_delay, pcm.shape[-1])

    def forward_train(self, pcm: Tensor, n_q: Tensor | None, return_latent: bool = False) -> tuple[Tensor, ...]:
        """Training pass on [B, 1, T] (T a multiple of hop): returns (pcm_hat aligned [B, 1, T-hop], commit, codes),
        and the encoder's latent [B, D, F] with `return_latent`.

        n_q=None skips quantization (the autoencoder warm start).
        """
        z, _ = self.encoder.net.step(pcm, self.encoder.net.init_state(pcm.shape[0]))
        pitch = None
        if self.pitch_tracker is not None:
            pitch, _ = self.pitch_index_step(pcm, self.pitch_tracker.init_state(pcm.shape[0]))
        if n_q is None:
            q, commit, codes = z, z.new_zeros(()), z.new_zeros(pcm.shape[0], 0, z.shape[-1]).long()
        else:
            q, commit, codes = self.quantizer(z, n_q)
        st = self.init_state(pcm.shape[0])
        out, _ = self.decode_latent_step(q, st, pitch)
        if return_latent:
            return out[..., self.decode_delay :], commit, codes, z
        return out[..., self.decode_delay :], commit, codes


@torch.no_grad()
def with_decoder_subframes(codec: AudioCodec, subframes: int) -> AudioCodec:
    """A copy of a one-window-per-frame codec whose decoder emits `subframes` windows per frame, warm-started so it
    sounds close to the original before any training: every window gets the original window's prediction, the later
    ones with their phase advanced by their start offset (a stationary frame seen that many samples later) and all
    of them scaled so the denser overlap-add keeps the level (sqrt-Hann squared sums to S at S x 50% overlap)."""
    if codec.cfg.decoder_subframes != 1:
        raise ValueError(f"the codec already emits {codec.cfg.decoder_subframes} windows per frame")
    wide = AudioCodec(dataclasses.replace(codec.cfg, decoder_subframes=subframes))
    state = {k: v for k, v in codec.state_dict().items() if not k.startswith("decoder.head.")}
    missing, unexpected = wide.load_state_dict(state, strict=False)
    assert not unexpected and all(k.startswith("decoder.head.") for k in missing), (missing, unexpected)
    bins, n_fft = codec.decoder.n_fft // 2 + 1, codec.decoder.n_fft
    w, b = codec.decoder.head.weight, codec.decoder.head.bias  # [2*bins, D]: log-magnitudes, then phases
    k = torch.arange(bins, dtype=w.dtype)
    weights, biases = [], []
    for s in range(subframes):
        shift = 2 * torch.pi * k * (s * codec.cfg.hop // subframes) / n_fft
        weights.append(w)
        biases.append(torch.cat([b[:bins] - math.log(subframes), b[bins:] + shift]))
    wide.decoder.head.weight.copy_(torch.cat(weights))
    wide.decoder.head.bias.copy_(torch.cat(biases))
    return wide


@torch.no_grad()
def with_phase_advance(codec: AudioCodec) -> AudioCodec:
    """A copy of an absolute-phase codec whose decoder predicts phase advances and carries the phase (the magnitude
    head and the body kept). The advance head starts at each bin's centre frequency times the window step (a
    sinusoid at the bin's centre advances by that much) and learns the rest."""
    if codec.cfg.decoder_phase != "absolute":
        raise ValueError("the codec's decoder already carries its phase")
    new = AudioCodec(dataclasses.replace(codec.cfg, decoder_phase="advance"))
    new.load_state_dict(codec.state_dict())
    dec = new.decoder
    bins, step = dec.n_fft // 2 + 1, codec.cfg.hop // dec.subframes
    head_w = dec.head.weight.view(dec.subframes, 2, bins, -1)
    head_b = dec.head.bias.view(dec.subframes, 2, bins)
    head_w[:, 1].zero_()
    k = torch.arange(bins, dtype=head_b.dtype)
    head_b[:, 1] = torch.remainder(2 * torch.pi * k * step / dec.n_fft, 2 * torch.pi)
    return new


def with_decoder(codec: AudioCodec, subframes: int | None = None, phase: str | None = None) -> AudioCodec:
    """`codec` with its decoder widened to `subframes` windows per frame and/or made to carry its `phase`, each
    warm-started from the decoder it has (None, or what it already has: left as it is). A decoder cannot go back
    to fewer windows or to absolute phase."""
    if subframes is not None and subframes != codec.cfg.decoder_subframes:
        codec = with_decoder_subframes(codec, subframes)
    if phase is not None and phase != codec.cfg.decoder_phase:
        if phase != "advance":
            raise ValueError(f"the codec's decoder carries its phase; it cannot go back to {phase!r}")
        codec = with_phase_advance(codec)
    return codec


def soft_limit(x: Tensor, knee: float = 0.9, ceiling: float = 0.98) -> Tensor:
    """Samples within +-knee unchanged, the rest bent by a tanh towards +-ceiling, so nothing reaches full scale
    (codec v4's output: its harmonic peaks overshot in 0.01% of samples). Memoryless: streaming equals offline."""
    over = x.abs() - knee
    bent = torch.sign(x) * (knee + (ceiling - knee) * torch.tanh(over.clamp(min=0) / (ceiling - knee)))
    return torch.where(over > 0, bent, x)


def align_output(out: Tensor, delay: int, length: int) -> Tensor:
    """Drop the decoder's leading delay and pad/trim to `length` samples."""
    out = out[..., delay:]
    return F.pad(out, (0, max(0, length - out.shape[-1])))[..., :length]
