"""Training and evaluation video made here: procedural scenes and scikit-image's bundled photos, animated.

Every clip is float [T, 3, H, W] in [0, 1], made from a seed, so the held-out set is the same everywhere.

- "image" clips: one of scikit-image's bundled data images (`skimage.data`, shipped inside the wheel) seen through a
  moving virtual camera: pan, zoom, a little rotation, and a brightness/contrast ramp (lighting change).
- "shapes" clips: moving discs and rectangles of random colours over a textured background (an image crop or
  smooth noise), with optional sensor noise.

Held out (never seen in training): the images in `EVAL_IMAGES`, and procedural clips from seeds >= `EVAL_SEED`.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from talkstream.errors import UserError

# Bundled in the scikit-image wheel (no download). Grey images are used as grey RGB.
TRAIN_IMAGES = (
    "brick", "camera", "cell", "chelsea", "clock_motion", "coins", "color", "grass", "gravel", "horse",
    "hubble_deep_field", "ihc", "logo", "microaneurysms", "moon", "motorcycle_left", "page", "phantom", "retina",
    "text", "chessboard_RGB",
)  # fmt: skip
EVAL_IMAGES = ("astronaut", "coffee", "rocket", "motorcycle_right")
EVAL_SEED = 1_000_000


def _data_dir() -> Path:
    try:
        import skimage.data
    except ImportError as e:
        raise UserError(f"video training data needs scikit-image: pip install 'talkstream[video]' ({e})") from None
    return Path(skimage.data.__file__).parent


def load_image(name: str) -> Tensor:
    """A bundled scikit-image picture as float [3, H, W] in [0, 1]."""
    import av

    d = _data_dir()
    path = next((p for p in d.glob(f"{name}.*") if p.suffix in (".png", ".jpg")), None)
    if path is None:
        raise ValueError(f"scikit-image has no bundled image {name!r}")
    with av.open(str(path)) as c:
        frame = next(c.decode(video=0))
    img = torch.from_numpy(frame.to_ndarray(format="rgb24")).permute(2, 0, 1).float() / 255
    scale = 256 / min(img.shape[-2:])  # views are at most 128 px: keep 2x detail, drop the rest (antialiased)
    if scale < 1:
        size = (round(img.shape[-2] * scale), round(img.shape[-1] * scale))
        img = F.interpolate(img[None], size=size, mode="bilinear", antialias=True, align_corners=False)[0]
    return img.clamp(0, 1)


class ImageBank:
    """The images of one split, loaded once."""

    def __init__(self, split: str = "train"):
        names = TRAIN_IMAGES if split == "train" else EVAL_IMAGES
        self.names = list(names)
        self.images = [load_image(n) for n in names]


def _camera(img: Tensor, t: int, size: tuple[int, int], g: torch.Generator) -> Tensor:
    """A pan/zoom/rotate/lighting move over `img` [3, H, W] -> [t, 3, h, w]."""

    def u(lo: float, hi: float, n: int = 1) -> Tensor:
        return torch.empty(n).uniform_(lo, hi, generator=g)

    h, w = size
    ih, iw = img.shape[-2:]
    # scale = share of the image's shorter side the view's height spans (1 = as much as fits)
    s0, s1 = float(u(0.3, 1.0)), float(u(0.3, 1.0))
    if float(u(0, 1)) < 0.4:
        s1 = s0  # pure pan
    ang0 = float(u(-0.15, 0.15))
    ang1 = ang0 + float(u(-0.1, 0.1))
    c0, c1 = u(-0.6, 0.6, 2), u(-0.6, 0.6, 2)
    k = torch.linspace(0, 1, t) * float(u(0.2, 1.0))
    thetas = []
    for i in range(t):
        a = float(k[i])
        s = s0 + (s1 - s0) * a
        sy, sx = s * min(ih, iw) / ih, s * min(ih, iw) * (w / h) / iw
        ang = ang0 + (ang1 - ang0) * a
        c = (c0 + (c1 - c0) * a) * torch.tensor([max(0.0, 1 - sx), max(0.0, 1 - sy)])
        cos, sin = math.cos(ang), math.sin(ang)
        thetas.append(torch.tensor([[sx * cos, -sy * sin, float(c[0])], [sx * sin, sy * cos, float(c[1])]]))
    theta = torch.stack(thetas)
    grid = F.affine_grid(theta, [t, 3, h, w], align_corners=False)
    out = F.grid_sample(
        img[None].expand(t, -1, -1, -1), grid, mode="bilinear", padding_mode="reflection", align_corners=False
    )
    gain = torch.linspace(float(u(0.6, 1.3)), float(u(0.6, 1.3)), t).view(t, 1, 1, 1)
    bias = torch.linspace(float(u(-0.1, 0.1)), float(u(-0.1, 0.1)), t).view(t, 1, 1, 1)
    return (0.5 + (out - 0.5) * gain + bias).clamp(0, 1)


def _smooth_noise(size: tuple[int, int], g: torch.Generator) -> Tensor:
    h, w = size
    cells = int(torch.randint(2, 16, (1,), generator=g))
    base = torch.rand(1, 3, cells, cells, generator=g)
    return F.interpolate(base, size=(h, w), mode="bicubic", align_corners=False)[0].clamp(0, 1)


def _shapes(bank: ImageBank, t: int, size: tuple[int, int], g: torch.Generator) -> Tensor:
    h, w = size
    if float(torch.rand(1, generator=g)) < 0.5:
        img = bank.images[int(torch.randint(len(bank.images), (1,), generator=g))]
        bg = _camera(img, t, size, g)
    else:
        bg = _smooth_noise(size, g)[None].expand(t, -1, -1, -1).clone()
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    frames = bg
    for _ in range(int(torch.randint(1, 6, (1,), generator=g))):
        color = torch.rand(3, 1, 1, generator=g)
        p0, v = torch.rand(2, generator=g), (torch.rand(2, generator=g) - 0.5) * 0.08
        r = float(torch.empty(1).uniform_(0.04, 0.25, generator=g))
        disc = float(torch.rand(1, generator=g)) < 0.5
        for i in range(t):
            cy, cx = (p0 + v * i).tolist()
            if disc:
                mask = ((yy - cy) ** 2 + (xx - cx) ** 2) < r * r
            else:
                mask = ((yy - cy).abs() < r * 0.7) & ((xx - cx).abs() < r)
            frames[i] = torch.where(mask, color, frames[i])
    if float(torch.rand(1, generator=g)) < 0.3:
        sigma = float(torch.empty(1).uniform_(0.01, 0.05, generator=g))
        frames = frames + torch.randn(frames.shape, generator=g) * sigma
    return frames.clamp(0, 1)


def make_clip(bank: ImageBank, seed: int, frames: int, size: tuple[int, int] = (128, 128)) -> Tensor:
    """One clip from a seed: 60% camera moves over a photo, 40% moving shapes. -> float [T, 3, H, W] in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    if float(torch.rand(1, generator=g)) < 0.6:
        img = bank.images[int(torch.randint(len(bank.images), (1,), generator=g))]
        return _camera(img, frames, size, g)
    return _shapes(bank, frames, size, g)


def eval_clips(count: int = 8, frames: int = 50, size: tuple[int, int] = (128, 128)) -> list[tuple[str, Tensor]]:
    """The held-out clips: a camera move over each held-out image, then procedural clips from held-out seeds."""
    bank = ImageBank("eval")
    out: list[tuple[str, Tensor]] = []
    for i, (name, img) in enumerate(zip(bank.names, bank.images, strict=True)):
        out.append((f"{name}-camera", _camera(img, frames, size, torch.Generator().manual_seed(EVAL_SEED + i))))
    i = 0
    while len(out) < count:
        seed = EVAL_SEED + 100 + i
        out.append((f"shapes-{seed}", _shapes(bank, frames, size, torch.Generator().manual_seed(seed))))
        i += 1
    return out[:count]


def clips_to_uint8(video: Tensor) -> np.ndarray:
    """[T, 3, H, W] in [0, 1] -> uint8 [T, H, W, 3] (what files and metrics use)."""
    return (video.clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).numpy()
