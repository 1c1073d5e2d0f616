"""talkstream's causal video codec: a per-frame conv encoder, an FSQ quantizer and a decoder with a recurrent memory.

Default: RGB 128x128 at 25 fps, 8x spatial downsampling to a 16x16 grid of tokens per frame, FSQ levels (8, 5, 5, 5)
= 1000 codes per token (log2 1000 = 9.97 bits; the container stores 10): 256 tokens x 10 bits = 2560 bits per frame,
0.156 bits per pixel, 64 kbps at 25 fps.

Trade-off of the downsampling factor: 8x keeps 256 tokens per 128x128 frame (enough for edges and text-sized
detail at 0.16 bpp); 16x would cut the bitrate and the token count 4x (64 tokens, 16 kbps) at a large loss in
detail, and suits 256x256 input better. The nets are fully convolutional, so any size that is a multiple of 8
works; the CLI scales and pads input to the codec's `frame_size` (see files.py).

Causality: frame t's tokens depend on frames 0..t only, and its reconstruction on tokens 0..t only. Both halves keep
one memory, a small feature map on the token grid updated from each frame's *quantized* values:
`memory_t = update(memory_{t-1}, q_t)`. The encoder conditions on memory_{t-1} (what the decoder already knows) and
the decoder reconstructs frame t from (q_t, memory_{t-1}). The memory is a function of the tokens alone, so encoder
and decoder compute it identically and nothing drifts. The first frame is coded alone (memory of zeros).

Streaming: `state = codec.init_state()`, `tokens, state = codec.encode_step(frame, state)`,
`frame, state = codec.decode_step(tokens, state)`; `encode`/`decode` run the same steps over every frame.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class VideoCodecConfig:
    frame_size: tuple[int, int] = (128, 128)  # (height, width) the codec codes; multiples of `downsample`
    fps: float = 25.0  # nominal: the codec has no notion of time beyond frame order; used for bitrates
    levels: tuple[int, ...] = (8, 5, 5, 5)  # FSQ levels per latent dimension: 1000 codes per token
    encoder_channels: tuple[int, ...] = (24, 48, 64)  # after each stride-2 stage (3 stages = 8x)
    decoder_channels: tuple[int, ...] = (64, 48, 24)  # before each 2x upsampling stage
    memory_channels: int = 32
    codec_id: str = "talkstream-video-v1"

    @property
    def downsample(self) -> int:
        return 2 ** len(self.encoder_channels)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> VideoCodecConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown video codec config keys: {sorted(unknown)}")
        d = dict(d)
        for k in ("frame_size", "levels", "encoder_channels", "decoder_channels"):
            if k in d:
                d[k] = tuple(d[k])
        return cls(**d)


class FSQ(nn.Module):
    """Finite scalar quantization (Mentzer et al. 2023): each latent dim is bounded and rounded to one of L levels.

    No codebook, so no collapse: every code is a point of a fixed grid. Values are in [-1, 1]; a token's code is the
    mixed-radix number of its per-dimension level indices (0 .. prod(levels) - 1).
    """

    levels: Tensor
    basis: Tensor
    half_width: Tensor

    def __init__(self, levels: tuple[int, ...]):
        super().__init__()
        lv = torch.tensor(levels, dtype=torch.float32)
        self.register_buffer("levels", lv, persistent=False)
        basis = torch.cumprod(torch.tensor((1, *levels[:-1])), 0)
        self.register_buffer("basis", basis.long(), persistent=False)
        self.register_buffer("half_width", (lv // 2), persistent=False)
        self.codebook_size = math.prod(levels)
        self.dim = len(levels)

    def _bound(self, z: Tensor) -> Tensor:
        lv = self.levels.view(1, -1, 1, 1)
        half_l = (lv - 1) * (1 + 1e-3) / 2
        offset = torch.where(lv % 2 == 0, 0.5, 0.0)
        shift = torch.atanh(offset / half_l)
        return torch.tanh(z + shift) * half_l - offset

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """z [B, D, H, W] -> (quantized values in [-1, 1] with a straight-through gradient, codes long [B, H, W])."""
        b = self._bound(z)
        r = b + (torch.round(b) - b).detach()
        values = r / self.half_width.view(1, -1, 1, 1)
        return values, self.values_to_codes(values)

    def values_to_codes(self, values: Tensor) -> Tensor:
        hw = self.half_width.view(1, -1, 1, 1)
        digits = torch.round(values.detach() * hw + hw).long()
        return (digits * self.basis.view(1, -1, 1, 1)).sum(1)

    def codes_to_values(self, codes: Tensor) -> Tensor:
        """codes long [B, H, W] -> values float [B, D, H, W]."""
        digits = (codes.unsqueeze(1) // self.basis.view(1, -1, 1, 1)) % self.levels.long().view(1, -1, 1, 1)
        hw = self.half_width.view(1, -1, 1, 1)
        return (digits.float() - hw) / hw


class ResBlock(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)  # each block starts as the identity

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(F.gelu(self.conv1(F.gelu(x))))


class Encoder(nn.Module):
    """Frame [B, 3, H, W] in [-1, 1] + memory [B, M, H/8, W/8] -> latent [B, D, H/8, W/8]."""

    def __init__(self, cfg: VideoCodecConfig):
        super().__init__()
        ch = (3, *cfg.encoder_channels)
        self.down = nn.ModuleList(nn.Conv2d(ch[i], ch[i + 1], 4, stride=2, padding=1) for i in range(len(ch) - 1))
        self.res = ResBlock(ch[-2])  # at H/4, before the last downsampling
        c = ch[-1]
        self.fuse = nn.Conv2d(c + cfg.memory_channels, c, 1)
        self.tail = ResBlock(c)
        self.out = nn.Conv2d(c, len(cfg.levels), 1)

    def forward(self, x: Tensor, memory: Tensor) -> Tensor:
        for i, conv in enumerate(self.down):
            if i == len(self.down) - 1:
                x = self.res(x)
            x = F.gelu(conv(x))
        x = self.tail(self.fuse(torch.cat([x, memory], 1)))
        return self.out(F.gelu(x))


class Decoder(nn.Module):
    """(quantized values [B, D, h, w], memory [B, M, h, w]) -> frame [B, 3, 8h, 8w] in [-1, 1].

    Upsampling is sub-pixel (a conv at the low resolution to 4x the channels, then PixelShuffle): the convs run at
    the coarse resolution, which is what keeps decoding fast on a CPU."""

    def __init__(self, cfg: VideoCodecConfig):
        super().__init__()
        ch = cfg.decoder_channels
        self.inp = nn.Conv2d(len(cfg.levels) + cfg.memory_channels, ch[0], 3, padding=1)
        self.res = nn.Sequential(ResBlock(ch[0]), ResBlock(ch[0]))
        self.up = nn.ModuleList(nn.Conv2d(ch[i], 4 * ch[i + 1], 3, padding=1) for i in range(len(ch) - 1))
        self.res_up = ResBlock(ch[1])  # at 2h, after the first upsampling
        self.out = nn.Conv2d(ch[-1], 3 * 4, 3, padding=1)  # the last 2x, straight to RGB

    def forward(self, q: Tensor, memory: Tensor) -> Tensor:
        x = self.res(self.inp(torch.cat([q, memory], 1)))
        for i, up in enumerate(self.up):
            x = F.gelu(F.pixel_shuffle(up(F.gelu(x)), 2))
            if i == 0:
                x = self.res_up(x)
        return F.pixel_shuffle(self.out(x), 2)


class Memory(nn.Module):
    """The causal temporal state: memory_t = update(memory_{t-1}, q_t), a gated conv on the token grid."""

    def __init__(self, cfg: VideoCodecConfig):
        super().__init__()
        m = cfg.memory_channels
        self.conv = nn.Conv2d(len(cfg.levels) + m, 2 * m, 3, padding=1)

    def forward(self, memory: Tensor, q: Tensor) -> Tensor:
        gate, cand = self.conv(torch.cat([q, memory], 1)).chunk(2, 1)
        gate = torch.sigmoid(gate)
        return gate * memory + (1 - gate) * torch.tanh(cand)


@dataclass
class VideoCodecState:
    """What one stream carries between frames: the memory [B, M, h, w]. Encoder and decoder each hold one."""

    memory: Tensor
    frames: int = 0


class VideoCodec(nn.Module):
    def __init__(self, cfg: VideoCodecConfig | None = None):
        super().__init__()
        self.cfg = cfg or VideoCodecConfig()
        h, w = self.cfg.frame_size
        if h % self.cfg.downsample or w % self.cfg.downsample:
            raise ValueError(f"frame_size {self.cfg.frame_size} is not a multiple of {self.cfg.downsample}")
        self.encoder = Encoder(self.cfg)
        self.quantizer = FSQ(self.cfg.levels)
        self.decoder = Decoder(self.cfg)
        self.memory = Memory(self.cfg)
        # He init (torch's default conv init shrinks the signal 3x a layer: latents of std ~0.06, all one FSQ level,
        # and a slow start); the residual blocks' second convs stay zero, so each block starts as the identity.
        for m in self.modules():
            if isinstance(m, nn.Conv2d) and m.weight.abs().sum() > 0:
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    # --- the contract servers read instead of hard-coding numbers ---
    @property
    def fps(self) -> float:
        return self.cfg.fps

    @property
    def frame_rate(self) -> float:
        return self.cfg.fps

    @property
    def frame_size(self) -> tuple[int, int]:
        """(height, width) of the frames the codec takes and returns."""
        return self.cfg.frame_size

    @property
    def grid(self) -> tuple[int, int]:
        h, w = self.cfg.frame_size
        return h // self.cfg.downsample, w // self.cfg.downsample

    @property
    def num_codebooks(self) -> int:
        """Tokens per frame (the container's K): one per grid cell."""
        return self.grid[0] * self.grid[1]

    @property
    def codebook_size(self) -> int:
        return self.quantizer.codebook_size

    @property
    def lookahead_frames(self) -> int:
        return 0

    @property
    def bits_per_token(self) -> int:
        return (self.codebook_size - 1).bit_length()

    def bitrate(self, fps: float | None = None) -> float:
        """Bits per second of the stored tokens at `fps` (default the codec's nominal rate)."""
        return (fps or self.fps) * self.num_codebooks * self.bits_per_token

    @property
    def bits_per_pixel(self) -> float:
        h, w = self.cfg.frame_size
        return self.num_codebooks * self.bits_per_token / (h * w)

    # --- streaming ---
    def init_state(self, batch_size: int = 1) -> VideoCodecState:
        p = next(self.parameters())
        h, w = self.grid
        return VideoCodecState(torch.zeros(batch_size, self.cfg.memory_channels, h, w, dtype=p.dtype, device=p.device))

    def _check_frame(self, frame: Tensor) -> None:
        if frame.dim() != 4 or frame.shape[1] != 3 or tuple(frame.shape[-2:]) != tuple(self.cfg.frame_size):
            raise ValueError(
                f"frame must be [B, 3, {self.cfg.frame_size[0]}, {self.cfg.frame_size[1]}], got {list(frame.shape)}"
            )

    def encode_step(self, frame: Tensor, state: VideoCodecState) -> tuple[Tensor, VideoCodecState]:
        """frame: float [B, 3, H, W] in [0, 1] -> tokens long [B, h*w] (row-major over the grid)."""
        self._check_frame(frame)
        z = self.encoder(frame * 2 - 1, state.memory)
        values, codes = self.quantizer(z)
        memory = self.memory(state.memory, self.quantizer.codes_to_values(codes))
        return codes.flatten(1), VideoCodecState(memory, state.frames + 1)

    def decode_step(self, tokens: Tensor, state: VideoCodecState) -> tuple[Tensor, VideoCodecState]:
        """tokens long [B, h*w] -> frame float [B, 3, H, W] in [0, 1]."""
        h, w = self.grid
        if tokens.dim() != 2 or tokens.shape[1] != h * w:
            raise ValueError(f"tokens must be [B, {h * w}], got {list(tokens.shape)}")
        if tokens.numel() and (tokens.min() < 0 or tokens.max() >= self.codebook_size):
            raise ValueError("tokens out of range for this codec")
        q = self.quantizer.codes_to_values(tokens.view(-1, h, w))
        frame = self.decoder(q, state.memory)
        memory = self.memory(state.memory, q)
        return ((frame + 1) / 2).clamp(0, 1), VideoCodecState(memory, state.frames + 1)

    # --- offline: the same steps over every frame ---
    @torch.no_grad()
    def encode(self, video: Tensor) -> Tensor:
        """video float [B, T, 3, H, W] in [0, 1] -> tokens long [B, T, h*w]."""
        state = self.init_state(video.shape[0])
        out = []
        for t in range(video.shape[1]):
            tokens, state = self.encode_step(video[:, t], state)
            out.append(tokens)
        return torch.stack(out, 1) if out else video.new_zeros(video.shape[0], 0, self.num_codebooks).long()

    @torch.no_grad()
    def decode(self, tokens: Tensor) -> Tensor:
        """tokens long [B, T, h*w] -> video float [B, T, 3, H, W] in [0, 1]."""
        state = self.init_state(tokens.shape[0])
        out = []
        for t in range(tokens.shape[1]):
            frame, state = self.decode_step(tokens[:, t], state)
            out.append(frame)
        if not out:
            return torch.zeros(tokens.shape[0], 0, 3, *self.cfg.frame_size)
        return torch.stack(out, 1)

    def forward_train(self, video: Tensor) -> tuple[Tensor, Tensor]:
        """Training pass (gradients flow through the memory over time): video [B, T, 3, H, W] in [0, 1]
        -> (reconstruction [B, T, 3, H, W] in about [0, 1], not clamped; codes [B, T, h, w]). Any H, W that are
        multiples of 8 (training uses crops)."""
        b, t, _, hh, ww = video.shape
        ds = self.cfg.downsample
        memory = video.new_zeros(b, self.cfg.memory_channels, hh // ds, ww // ds)
        outs, codes = [], []
        for i in range(t):
            z = self.encoder(video[:, i] * 2 - 1, memory)
            q, c = self.quantizer(z)
            outs.append((self.decoder(q, memory) + 1) / 2)
            codes.append(c)
            memory = self.memory(memory, q)
        return torch.stack(outs, 1), torch.stack(codes, 1)
