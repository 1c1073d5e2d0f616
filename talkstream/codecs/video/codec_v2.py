"""talkstream's video codec v2: conditional coding from the previous decoded frame, entropy-coded latents.

Default: RGB 128x128 at 25 fps. Each frame becomes a latent `y` [C=32, 16, 16] (8x downsampling) and a side latent
`z` [16, 8, 8]; both are scalar-quantized around a predicted mean and range-coded (`constriction`) under Gaussians
whose means and scales come from what the decoder already has:

- the context: features of the previous *decoded* frame (`f16` on the latent grid, `f64` at half resolution) and
  the previous frame's coded innovation `ŷ - μ` (where the picture changed last time, so where it likely changes
  now);
- `ẑ`, decoded first in the same frame: it tells the `y` model where this frame departs from the context.

The encoder also sees the context, so it codes only what the context does not predict (conditional coding, as in
DCVC); the decoder adds what it makes of (ŷ, context) to the previous decoded frame, so static areas are copied
for next to no bits: their residual symbols are 0 under sharp Gaussians. The first frame (and every key frame) is
coded intra: the same nets with a blank previous frame and an intra flag.

Rate: a quality `q` in [0, 1] scales the quantization step of each latent channel (a learned per-channel step,
log-linear in q; trained over the whole range with the matching rate/distortion weight), sent as one of
`QUALITY_LEVELS` indices per frame. Rate control picks, per frame, the highest quality whose estimated bits fit a
leaky-bucket budget for a target bitrate; without a target the quality is fixed (the knob for files).

Causality: frame t's packet depends on frames 0..t only (through the decoded frames); frame latency is one frame.
Encoder and decoder run the same ops on the same values (the encoder decodes its own packet), so nothing drifts.

Streaming: `state = codec.init_state(bitrate=..)`, `packet, state = codec.encode_step(frame, state)` (packet: bytes,
see `bitstream_v2.py`), `frame, state = codec.decode_step(packet, state)`; `encode`/`decode` run the same steps.
One stream per state (batch 1): packets are bit-exact only when the decoder computes exactly what the encoder did
(the same weights and torch build on the same kind of CPU; a decoder whose floats differ may be refused by the
trailing-data check or may decode a wrong picture: guarantees across machines need an integer entropy model).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from talkstream.codecs.video import bitstream_v2 as bs

QUALITY_LEVELS = 32  # the quality index sent with each frame: q = index / (QUALITY_LEVELS - 1)
SCALE_MIN, SCALE_MAX = 0.11, 48.0  # Gaussian scales (in quantization steps) the coder knows
REFINE_PASSES = 2  # times the encoder rechecks its skip decisions on the frame it will send
SKIP_BLOCK = 2  # latent cells per side of a skip block (16 x 16 pixels)
SCALE_TABLE_SIZE = 64  # scales are snapped to a log-spaced table before coding (encoder and decoder alike)


@dataclass
class VideoCodecV2Config:
    frame_size: tuple[int, int] = (128, 128)  # (height, width), multiples of 16
    fps: float = 25.0  # nominal, for bitrates
    latent_channels: int = 32  # y: [C, H/8, W/8]
    side_channels: int = 16  # z: [Cz, H/16, W/16]
    encoder_channels: tuple[int, ...] = (32, 48, 64)  # after each stride-2 stage
    decoder_channels: tuple[int, ...] = (64, 48, 24)  # before each 2x upsampling stage
    context_channels: tuple[int, ...] = (16, 32, 64)  # features of the previous decoded frame: f64 .. f16
    lambda_range: tuple[float, float] = (16.0, 6000.0)  # rate/distortion weight (MSE on [0, 1]) at q = 0 and 1
    codec_id: str = "talkstream-video-v2"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> VideoCodecV2Config:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown video codec v2 config keys: {sorted(unknown)}")
        d = dict(d)
        for k in ("frame_size", "encoder_channels", "decoder_channels", "context_channels", "lambda_range"):
            if k in d:
                d[k] = tuple(d[k])
        return cls(**d)

    def lmbda(self, q: Tensor) -> Tensor:
        lo, hi = self.lambda_range
        return torch.exp(math.log(lo) + q * (math.log(hi) - math.log(lo)))


class ResBlock(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(F.gelu(self.conv1(F.gelu(x))))


def _down(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=2, padding=1)


class Context(nn.Module):
    """(previous decoded frame [B, 3, H, W] in [-1, 1], intra flag [B, 1, H, W], previous innovation [B, C, h, w])
    -> (f64 [B, c0, H/2, W/2], f16 [B, c2, H/8, W/8])."""

    def __init__(self, cfg: VideoCodecV2Config):
        super().__init__()
        c0, c1, c2 = cfg.context_channels
        self.d1, self.d2, self.d3 = _down(4, c0), _down(c0, c1), _down(c1, c2)
        self.fuse = nn.Conv2d(c2 + cfg.latent_channels, c2, 1)
        self.res = ResBlock(c2)

    def forward(self, prev: Tensor, intra: Tensor, innovation: Tensor) -> tuple[Tensor, Tensor]:
        f64 = F.gelu(self.d1(torch.cat([prev, intra], 1)))
        x = F.gelu(self.d3(F.gelu(self.d2(f64))))
        return f64, self.res(self.fuse(torch.cat([x, innovation], 1)))


class Encoder(nn.Module):
    """(frame [B, 3, H, W] in [-1, 1], f16) -> y [B, C, H/8, W/8]."""

    def __init__(self, cfg: VideoCodecV2Config):
        super().__init__()
        ch = (3, *cfg.encoder_channels)
        self.down = nn.ModuleList(_down(ch[i], ch[i + 1]) for i in range(len(ch) - 1))
        self.fuse = nn.Conv2d(ch[-1] + cfg.context_channels[-1], ch[-1], 1)
        self.res = ResBlock(ch[-1])
        self.out = nn.Conv2d(ch[-1], cfg.latent_channels, 1)

    def forward(self, x: Tensor, f16: Tensor) -> Tensor:
        for conv in self.down:
            x = F.gelu(conv(x))
        return self.out(F.gelu(self.res(self.fuse(torch.cat([x, f16], 1)))))


class Prior(nn.Module):
    """The entropy model. side(y, f16) -> z; z_params(f16) -> (μz, σz); y_params(ẑ, f16) -> (μ, σ)."""

    def __init__(self, cfg: VideoCodecV2Config):
        super().__init__()
        c, cz, cf = cfg.latent_channels, cfg.side_channels, cfg.context_channels[-1]
        self.h_enc = nn.Sequential(_down(c + cf, 64), nn.GELU(), nn.Conv2d(64, cz, 1))
        self.z_net = nn.Sequential(_down(cf, 64), nn.GELU(), nn.Conv2d(64, 2 * cz, 1))
        self.h_up = nn.Conv2d(cz, 4 * 32, 1)
        self.y_net = nn.Sequential(
            nn.Conv2d(32 + cf, 64, 3, padding=1), nn.GELU(), nn.Conv2d(64, 64, 3, padding=1), nn.GELU(),
            nn.Conv2d(64, 2 * c, 1),
        )  # fmt: skip

    def side(self, y: Tensor, f16: Tensor) -> Tensor:
        return self.h_enc(torch.cat([y, f16], 1))

    def z_params(self, f16: Tensor) -> tuple[Tensor, Tensor]:
        mu, log_s = self.z_net(f16).chunk(2, 1)
        return mu, log_s.exp()

    def y_params(self, z_hat: Tensor, f16: Tensor) -> tuple[Tensor, Tensor]:
        up = F.gelu(F.pixel_shuffle(self.h_up(z_hat), 2))
        mu, log_s = self.y_net(torch.cat([up, f16], 1)).chunk(2, 1)
        return mu, log_s.exp()


class Decoder(nn.Module):
    """(ŷ [B, C, h, w], f16, f64) -> [B, 3, 8h, 8w]: what to add to the previous decoded frame (to a blank one for
    a key frame); sub-pixel upsampling (convs run at the low resolution), the previous frame's half-resolution
    features joined before the last 2x."""

    def __init__(self, cfg: VideoCodecV2Config):
        super().__init__()
        ch = cfg.decoder_channels
        self.inp = nn.Conv2d(cfg.latent_channels + cfg.context_channels[-1], ch[0], 3, padding=1)
        self.res = nn.Sequential(ResBlock(ch[0]), ResBlock(ch[0]))
        self.up1 = nn.Conv2d(ch[0], 4 * ch[1], 3, padding=1)
        self.res1 = ResBlock(ch[1])
        self.up2 = nn.Conv2d(ch[1], 4 * ch[2], 3, padding=1)
        self.fuse = nn.Conv2d(ch[2] + cfg.context_channels[0], ch[2], 3, padding=1)
        self.out = nn.Conv2d(ch[2], 12, 3, padding=1)

    def forward(self, y_hat: Tensor, f16: Tensor, f64: Tensor) -> Tensor:
        x = self.res(self.inp(torch.cat([y_hat, f16], 1)))
        x = self.res1(F.gelu(F.pixel_shuffle(self.up1(F.gelu(x)), 2)))
        x = F.gelu(F.pixel_shuffle(self.up2(F.gelu(x)), 2))
        x = F.gelu(self.fuse(torch.cat([x, f64], 1)))
        return F.pixel_shuffle(self.out(x), 2)


def gaussian_bits(k: Tensor, scale: Tensor) -> Tensor:
    """-log2 P(k) of integer-valued (or noisy) residuals k under a zero-mean Gaussian of `scale`, discretized to
    unit bins; the training rate and the rate controller's estimate."""
    s = scale.clamp(SCALE_MIN, SCALE_MAX)
    upper = torch.special.ndtr((k + 0.5) / s)
    lower = torch.special.ndtr((k - 0.5) / s)
    return -torch.log2((upper - lower).clamp_min(1e-9))


@dataclass
class VideoStreamState:
    """One stream's state (encoder and decoder each keep one): the previous decoded frame and innovation, the
    frame count, and for the encoder the rate controller's target and account."""

    prev: Tensor | None = None  # [1, 3, H, W] in [-1, 1]; None: the next frame is a key frame
    innovation: Tensor | None = None  # [1, C, h, w]
    frames: int = 0
    since_key: int = 0
    bitrate: float | None = None  # target bits/s (rate control), None: fixed quality
    quality: float = 0.75  # the fixed quality (no target), or the start for rate control
    key_interval: int = 0  # frames between key frames (0: only the first)
    bits: int = 0  # bits sent so far
    debt: float = 0.0  # bits spent beyond the target so far
    ratio: float = 1.0  # inter frames' bits spent / estimated before skipping (a running mean)


class VideoCodecV2(nn.Module):
    scale_table: Tensor

    def __init__(self, cfg: VideoCodecV2Config | None = None):
        super().__init__()
        self.cfg = cfg or VideoCodecV2Config()
        h, w = self.cfg.frame_size
        if h % 16 or w % 16:
            raise ValueError(f"frame_size {self.cfg.frame_size} is not a multiple of 16")
        c = self.cfg.latent_channels
        self.context = Context(self.cfg)
        self.encoder = Encoder(self.cfg)
        self.prior = Prior(self.cfg)
        self.decoder = Decoder(self.cfg)
        self.step_low = nn.Parameter(torch.full((c,), 1.0))  # log quantization step per channel at q = 0
        self.step_high = nn.Parameter(torch.full((c,), -0.7))  # ... and at q = 1
        for m in self.modules():
            if isinstance(m, nn.Conv2d) and m.weight.abs().sum() > 0:
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.zeros_(self.decoder.out.weight)  # an inter frame starts as a copy of the previous one
        table = torch.exp(torch.linspace(math.log(SCALE_MIN), math.log(SCALE_MAX), SCALE_TABLE_SIZE))
        self.register_buffer("scale_table", table, persistent=False)
        # ~20% faster convs on a CPU (and the same on both ends). torch's stub for Module.to lacks memory_format.
        self.to(memory_format=torch.channels_last)  # type: ignore[call-overload]

    # --- the contract servers read ---
    @property
    def fps(self) -> float:
        return self.cfg.fps

    @property
    def frame_rate(self) -> float:
        return self.cfg.fps

    @property
    def frame_size(self) -> tuple[int, int]:
        return self.cfg.frame_size

    @property
    def lookahead_frames(self) -> int:
        return 0

    @property
    def codec_id(self) -> str:
        return self.cfg.codec_id

    # --- pieces shared by training and coding ---
    def step_size(self, q: Tensor) -> Tensor:
        """q [B] in [0, 1] -> per-channel quantization step [B, C, 1, 1]."""
        q = q.view(-1, 1)
        return torch.exp(self.step_low + q * (self.step_high - self.step_low)).unsqueeze(-1).unsqueeze(-1)

    def blank_context(self, b: int, size: tuple[int, int], like: Tensor) -> tuple[Tensor, Tensor]:
        h, w = size
        prev = like.new_zeros(b, 3, h, w)
        innovation = like.new_zeros(b, self.cfg.latent_channels, h // 8, w // 8)
        return self.context(prev, like.new_ones(b, 1, h, w), innovation)

    def forward_train(self, video: Tensor, q: Tensor) -> dict[str, Tensor]:
        """Training pass: video float [B, T, 3, H, W] in [0, 1] (frame 0 intra, gradients through the decoded
        frames), q [B] -> recon [B, T, 3, H, W] (unclamped) and bits [B, T] (y + z, noise-relaxed)."""
        b, t, _, h, w = video.shape
        step = self.step_size(q)
        f64, f16 = self.blank_context(b, (h, w), video)
        base = video.new_zeros(b, 3, h, w)  # what the decoder adds its output to: the previous decoded frame
        recons, bits = [], []
        for i in range(t):
            x = video[:, i] * 2 - 1
            y = self.encoder(x, f16)
            z = self.prior.side(y, f16)
            mu_z, s_z = self.prior.z_params(f16)
            rz = z - mu_z
            z_hat = mu_z + rz + (torch.round(rz) - rz).detach()
            bits_z = gaussian_bits(rz + torch.empty_like(rz).uniform_(-0.5, 0.5), s_z)
            mu, s = self.prior.y_params(z_hat, f16)
            r = (y - mu) / step
            bits_y = gaussian_bits(r + torch.empty_like(r).uniform_(-0.5, 0.5), s / step)
            innovation = step * (r + (torch.round(r) - r).detach())
            out = base + self.decoder(mu + innovation, f16, f64)
            recons.append((out + 1) / 2)
            bits.append(bits_y.flatten(1).sum(1) + bits_z.flatten(1).sum(1))
            if i + 1 < t:
                base = out.clamp(-1, 1)
                f64, f16 = self.context(base, out.new_zeros(b, 1, h, w), innovation)
        return {"recon": torch.stack(recons, 1), "bits": torch.stack(bits, 1)}

    # --- streaming ---
    def init_state(
        self, bitrate: float | None = None, quality: float = 0.75, key_interval: int = 0
    ) -> VideoStreamState:
        """A fresh stream. Encoder: `bitrate` (bits/s) turns rate control on, else every frame is coded at
        `quality` in [0, 1]; `key_interval` > 0 codes a key frame every that many frames. Decoder: defaults."""
        if not 0 <= quality <= 1:
            raise ValueError(f"quality must be in [0, 1], got {quality}")
        if bitrate is not None and bitrate <= 0:
            raise ValueError(f"bitrate must be positive, got {bitrate}")
        return VideoStreamState(bitrate=bitrate, quality=quality, key_interval=key_interval)

    def _context(self, state: VideoStreamState) -> tuple[Tensor, Tensor]:
        h, w = self.cfg.frame_size
        p = self.scale_table
        if state.prev is None:
            return self.blank_context(1, (h, w), p)
        return self.context(state.prev, p.new_zeros(1, 1, h, w), state.innovation)

    def _snap(self, scale: Tensor) -> Tensor:
        """Scales -> the nearest (in log) entry of the scale table, as the coder uses them."""
        lo, hi = math.log(SCALE_MIN), math.log(SCALE_MAX)
        idx = torch.round((scale.clamp(SCALE_MIN, SCALE_MAX).log() - lo) / (hi - lo) * (SCALE_TABLE_SIZE - 1))
        return self.scale_table[idx.long()]

    def _step(self, qi: int) -> Tensor:
        return self.step_size(torch.tensor([qi / (QUALITY_LEVELS - 1)]))

    def _reconstruct(
        self, state: VideoStreamState, mu: Tensor, innovation: Tensor, f16: Tensor, f64: Tensor, coded: Tensor | None
    ) -> Tensor:
        """The decoded frame [1, 3, H, W] in [-1, 1]: the previous one (blank for a key frame) plus the decoder's
        output, on the blocks that were coded (`coded`: bool [1, 1, h/2, w/2], None: all)."""
        out = self.decoder(mu + innovation, f16, f64)
        if coded is not None:
            out = out * coded.float().repeat_interleave(8 * SKIP_BLOCK, 2).repeat_interleave(8 * SKIP_BLOCK, 3)
        return ((0 if state.prev is None else state.prev) + out).clamp(-1, 1)

    def _advance(self, state: VideoStreamState, prev: Tensor, innovation: Tensor, intra: bool) -> VideoStreamState:
        since_key = 1 if intra else state.since_key + 1
        return dataclasses.replace(
            state, prev=prev, innovation=innovation, frames=state.frames + 1, since_key=since_key
        )

    def _check_frame(self, frame: Tensor) -> None:
        h, w = self.cfg.frame_size
        if frame.dim() != 4 or tuple(frame.shape) != (1, 3, h, w):
            raise ValueError(f"frame must be [1, 3, {h}, {w}], got {list(frame.shape)}")

    def _quality_index(
        self, state: VideoStreamState, y: Tensor, mu: Tensor, s: Tensor, z_bits: float, intra: bool
    ) -> int:
        """The fixed quality's index, or with a target bitrate the highest index whose estimated bits fit this
        frame's budget: the target per frame less 1/8 of the debt so far, the estimate scaled by how far skipped
        blocks have brought inter frames under it."""
        fixed = round(state.quality * (QUALITY_LEVELS - 1))
        if state.bitrate is None:
            return fixed
        per_frame = state.bitrate / self.fps
        budget = min(max(per_frame - state.debt / 8, 0.1 * per_frame), 8 * per_frame)
        budget = budget / (1.0 if intra else state.ratio) - 8 * bs.FRAME_HEADER_BYTES - z_bits

        def bits_at(j: int) -> float:
            step = self._step(j)
            k = torch.round((y - mu) / step).clamp(-bs.MAX_SYMBOL, bs.MAX_SYMBOL)
            return float(gaussian_bits(k, self._snap(s / step)).sum())

        lo, hi = 0, QUALITY_LEVELS - 1  # the highest index that fits (bits grow with the index), else 0
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if bits_at(mid) <= budget:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def _blocks(self, t: Tensor) -> Tensor:
        """Per-cell [1, C, h, w] -> per skip block [1, 1, h/2, w/2] sums (cells of SKIP_BLOCK x SKIP_BLOCK)."""
        return F.avg_pool2d(t.sum(1, keepdim=True), SKIP_BLOCK) * SKIP_BLOCK**2

    def _skip_decision(
        self, frame: Tensor, state: VideoStreamState, coded_out: Tensor, bits: Tensor, qi: int
    ) -> Tensor:
        """Blocks to skip (bool [1, 1, h/2, w/2]): where repeating the previous frame costs less rate + lambda *
        distortion than the coded block (the encoder's choice; the decoder reads it)."""
        px = 8 * SKIP_BLOCK
        x = frame * 2 - 1
        prev = self._prev(state)
        sse_skip = F.avg_pool2d(((x - prev) ** 2).sum(1, keepdim=True), px) * px * px / 4  # in [0, 1] units
        sse_code = F.avg_pool2d(((x - coded_out) ** 2).sum(1, keepdim=True), px) * px * px / 4
        lmbda = float(self.cfg.lmbda(torch.tensor(qi / (QUALITY_LEVELS - 1))))
        return lmbda * (sse_skip - sse_code) / 3 < self._blocks(bits)

    @torch.inference_mode()
    def encode_step(self, frame: Tensor, state: VideoStreamState) -> tuple[bytes, VideoStreamState]:
        """frame: float [1, 3, H, W] in [0, 1] -> (packet bytes, state). The state's `prev` is then the frame the
        decoder will show (in [-1, 1])."""
        self._check_frame(frame)
        if state.prev is not None and state.key_interval > 0 and state.since_key >= state.key_interval:
            state = dataclasses.replace(state, prev=None, innovation=None)
        intra = state.prev is None
        f64, f16 = self._context(state)
        y = self.encoder(frame * 2 - 1, f16)
        mu_z, s_z = self.prior.z_params(f16)
        k_z = torch.round(self.prior.side(y, f16) - mu_z).clamp(-bs.MAX_SYMBOL, bs.MAX_SYMBOL)
        s_z = self._snap(s_z)
        mu, s = self.prior.y_params(mu_z + k_z, f16)
        z_bits = float(gaussian_bits(k_z, s_z).sum())
        qi = self._quality_index(state, y, mu, s, z_bits, intra)
        step = self._step(qi)
        k = torch.round((y - mu) / step).clamp(-bs.MAX_SYMBOL, bs.MAX_SYMBOL)
        s_y = self._snap(s / step)
        estimate = 8 * bs.FRAME_HEADER_BYTES + z_bits + float(gaussian_bits(k, s_y).sum())
        out = self._reconstruct(state, mu, step * k, f16, f64, None)
        skip_byte, flags, coded = 0, None, None
        if not intra:
            skip = self._skip_decision(frame, state, out, gaussian_bits(k, s_y), qi)
            settled = None  # (k, frame) for the current decisions, once computed
            for i in range(REFINE_PASSES + 1):  # zeroing skipped cells changes the coded blocks around them: recheck
                if not bool(skip.any()) or bool(skip.all()):
                    break
                k_try = k * self._cells(~skip)
                settled = k_try, self._reconstruct(state, mu, step * k_try, f16, f64, ~skip)
                if i == REFINE_PASSES:
                    break
                worse = self._skip_decision(frame, state, settled[1], gaussian_bits(k_try, s_y), qi) & ~skip
                if not bool(worse.any()):
                    break
                skip, settled = skip | worse, None
            if bool(skip.all()):
                packet = bs.pack_frame(False, qi, 255, None, [])
                state = self._advance(state, self._prev(state), torch.zeros_like(k), False)
                return packet, self._account(state, packet, estimate)
            if bool(skip.any()):
                skip_byte = min(max(round(float(skip.float().mean()) * 255), 1), 254)
                flags, coded = skip.flatten(), ~skip
                assert settled is not None
                k, out = settled
        sel = torch.ones_like(k, dtype=torch.bool) if coded is None else self._cells(coded).expand_as(k).bool()
        packet = bs.pack_frame(intra, qi, skip_byte, flags, [(k_z, s_z), (k[sel], s_y[sel])])
        return packet, self._account(self._advance(state, out, step * k, intra), packet, None if intra else estimate)

    @staticmethod
    def _prev(state: VideoStreamState) -> Tensor:
        """The previous decoded frame, which an inter frame needs (callers have checked the frame is one)."""
        if state.prev is None:
            raise bs.BitstreamError("video v2: an inter frame with no frame before it")
        return state.prev

    def _cells(self, coded: Tensor) -> Tensor:
        """Per skip block [1, 1, h/2, w/2] -> per latent cell [1, 1, h, w] (float)."""
        return coded.float().repeat_interleave(SKIP_BLOCK, 2).repeat_interleave(SKIP_BLOCK, 3)

    def _account(self, state: VideoStreamState, packet: bytes, estimate: float | None) -> VideoStreamState:
        spent = 8 * len(packet)
        debt = state.debt + spent - (state.bitrate / self.fps if state.bitrate else 0.0)
        ratio = state.ratio if estimate is None else 0.7 * state.ratio + 0.3 * min(max(spent / estimate, 0.05), 2.0)
        return dataclasses.replace(state, bits=state.bits + spent, debt=debt, ratio=ratio)

    @torch.inference_mode()
    def decode_step(self, packet: bytes, state: VideoStreamState) -> tuple[Tensor, VideoStreamState]:
        """packet bytes -> (frame float [1, 3, H, W] in [0, 1], state). A packet that is not a whole v2 frame,
        or an inter frame with no frame before it, raises ValueError."""
        intra, qi, skip_byte, reader = bs.open_frame(packet, QUALITY_LEVELS)
        if intra:
            state = dataclasses.replace(state, prev=None, innovation=None)
        elif state.prev is None:
            raise bs.BitstreamError(
                "video v2 packet: an inter frame with no frame before it (streams start with a key frame)"
            )
        if skip_byte == 255:
            reader.close()
            h, w = self.cfg.frame_size
            prev = self._prev(state)
            innovation = prev.new_zeros(1, self.cfg.latent_channels, h // 8, w // 8)
            return (prev + 1) / 2, self._advance(state, prev, innovation, False)
        coded = None
        if skip_byte:
            h, w = self.cfg.frame_size
            flags = reader.read_flags(skip_byte / 255, (h // 8 // SKIP_BLOCK) * (w // 8 // SKIP_BLOCK))
            coded = ~flags.view(1, 1, h // 8 // SKIP_BLOCK, w // 8 // SKIP_BLOCK)
        f64, f16 = self._context(state)
        mu_z, s_z = self.prior.z_params(f16)
        k_z = reader.read(self._snap(s_z))
        mu, s = self.prior.y_params(mu_z + k_z, f16)
        step = self._step(qi)
        s_y = self._snap(s / step)
        k = torch.zeros_like(mu)
        if coded is None:
            k = reader.read(s_y)
        else:
            sel = self._cells(coded).expand_as(k).bool()
            k[sel] = reader.read(s_y[sel])
        reader.close()
        out = self._reconstruct(state, mu, step * k, f16, f64, coded)
        return (out + 1) / 2, self._advance(state, out, step * k, intra)

    # --- offline: the same steps over every frame ---
    def encode(self, video: Tensor, **state_args) -> list[bytes]:
        """video float [T, 3, H, W] in [0, 1] -> one packet per frame (`state_args` go to `init_state`)."""
        state = self.init_state(**state_args)
        packets = []
        for t in range(video.shape[0]):
            packet, state = self.encode_step(video[t : t + 1], state)
            packets.append(packet)
        return packets

    def decode(self, packets: list[bytes]) -> Tensor:
        """packets -> video float [T, 3, H, W] in [0, 1]."""
        state = self.init_state()
        frames = []
        for packet in packets:
            frame, state = self.decode_step(packet, state)
            frames.append(frame[0])
        h, w = self.cfg.frame_size
        return torch.stack(frames) if frames else torch.zeros(0, 3, h, w)
