"""`talkstream bench video --version 2`: the video codec v2 against H.264 (libx264 zerolatency, PyAV) at equal
bitrates on the held-out clips, what a static scene costs, and encode + decode speed on one core.

Rate points: v2's rate control is set to each target (32, 64, 128 kbps by default); each clip's x264 bit_rate setting
is then rescaled until x264 spends what v2 actually spent on that clip, within 3% (`matched_rate`), so every pair
of rows compares the two at equal bits. Bits: every byte of v2's packets (headers included), x264's packet bytes.
Quality: PSNR (over each clip's whole MSE, RGB 8-bit) and MS-SSIM (RGB, 4 scales: 128 px frames are too small for
the usual 5 with an 11-tap window; weights the first 4 of Wang et al.'s, renormalized), both averaged over clips.

Static vs moving: each held-out photo as a still clip (its first frame repeated) and as its camera move, both coded
at one fixed quality; the cost of the inter frames (frame 0 is a key frame in both) and of whole clips.

Speed: encode + decode of every frame (the encoder decodes its own packet too: it needs the decoded frame for the
next one), RGB to RGB, with torch on one thread: wall clock and CPU time.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from talkstream.bench.video import matched_rate, psnr, run_h264
from talkstream.codecs.video.codec_v2 import VideoCodecV2
from talkstream.codecs.video.data import clips_to_uint8, eval_clips

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363)


def _gauss(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - size // 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def ms_ssim(ref: np.ndarray, out: np.ndarray) -> float:
    """MS-SSIM of uint8 frames [T, H, W, 3] (per channel, averaged over channels and frames)."""
    a = torch.from_numpy(ref).permute(0, 3, 1, 2).double().reshape(-1, 1, *ref.shape[1:3])
    b = torch.from_numpy(out).permute(0, 3, 1, 2).double().reshape(-1, 1, *out.shape[1:3])
    g = _gauss()
    wx, wy = g.view(1, 1, 1, -1), g.view(1, 1, -1, 1)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    w = torch.tensor(MS_SSIM_WEIGHTS, dtype=torch.float64)
    w = w / w.sum()

    def blur(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.conv2d(x, wx), wy)

    score = torch.ones(a.shape[0], dtype=torch.float64)
    for i in range(len(w)):
        mu_a, mu_b = blur(a), blur(b)
        var_a, var_b = blur(a * a) - mu_a**2, blur(b * b) - mu_b**2
        cov = blur(a * b) - mu_a * mu_b
        cs = ((2 * cov + c2) / (var_a + var_b + c2)).flatten(1).mean(1)
        if i == len(w) - 1:
            lum = ((2 * mu_a * mu_b + c1) / (mu_a**2 + mu_b**2 + c1)).flatten(1).mean(1)
            score = score * (lum * cs).clamp_min(0) ** w[i]
        else:
            score = score * cs.clamp_min(0) ** w[i]
            a, b = F.avg_pool2d(a, 2), F.avg_pool2d(b, 2)
    return float(score.mean())


@torch.no_grad()
def run_v2(codec: VideoCodecV2, clip: np.ndarray, bitrate: float | None = None, quality: float = 0.75) -> dict:
    """One clip uint8 [T, H, W, 3] through encode + decode on one thread -> recon, bits per frame, times."""
    torch.set_num_threads(1)
    x = torch.from_numpy(clip).permute(0, 3, 1, 2).float() / 255
    enc, dec = codec.init_state(bitrate=bitrate, quality=quality), codec.init_state()
    out, bits = [], []
    c0, t0 = time.process_time(), time.perf_counter()
    for i in range(x.shape[0]):
        packet, enc = codec.encode_step(x[i : i + 1], enc)
        y, dec = codec.decode_step(packet, dec)
        bits.append(8 * len(packet))
        out.append(y[0])
    return {"recon": clips_to_uint8(torch.stack(out)), "frame_bits": bits, "bits": sum(bits),
            "seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0}  # fmt: skip


def _row(system: str, clips: list[np.ndarray], runs: list[dict], fps: int) -> dict:
    frames = sum(c.shape[0] for c in clips)
    pixels = sum(c.shape[0] * c.shape[1] * c.shape[2] for c in clips)
    scores = [psnr(c, r["recon"]) for c, r in zip(clips, runs, strict=True)]
    return {
        "system": system,
        "kbps": round(sum(r["bits"] for r in runs) / (frames / fps) / 1000, 2),
        "bpp": round(sum(r["bits"] for r in runs) / pixels, 4),
        "psnr_db": round(float(np.mean(scores)), 2),
        "ms_ssim": round(float(np.mean([ms_ssim(c, r["recon"]) for c, r in zip(clips, runs, strict=True)])), 4),
        "per_clip_psnr_db": [round(s, 2) for s in scores],
        "per_clip_kbps": [round(r["bits"] / (c.shape[0] / fps) / 1000, 2) for c, r in zip(clips, runs, strict=True)],
        "fps_1_thread": round(frames / sum(r["seconds"] for r in runs), 1),
        "cpu_fps_1_thread": round(frames / sum(r["cpu_seconds"] for r in runs), 1),
    }


def static_vs_moving(codec: VideoCodecV2, named: list[tuple[str, np.ndarray]], quality: float) -> dict:
    """Inter-frame and whole-clip bits of each held-out photo's camera move and of the same photo held still."""
    rows = []
    for name, clip in named:
        if not name.endswith("-camera"):
            continue
        still = np.repeat(clip[:1], clip.shape[0], 0)
        moving, static = run_v2(codec, clip, quality=quality), run_v2(codec, still, quality=quality)
        rows.append({
            "clip": name,
            "moving_inter_bits_per_frame": round(float(np.mean(moving["frame_bits"][1:])), 1),
            "static_inter_bits_per_frame": round(float(np.mean(static["frame_bits"][1:])), 1),
            "moving_clip_bits": moving["bits"], "static_clip_bits": static["bits"],
            "static_psnr_db": round(psnr(still, static["recon"]), 2),
        })  # fmt: skip
    inter = sum(r["static_inter_bits_per_frame"] for r in rows) / sum(r["moving_inter_bits_per_frame"] for r in rows)
    whole = sum(r["static_clip_bits"] for r in rows) / sum(r["moving_clip_bits"] for r in rows)
    return {"quality": quality, "static_over_moving_inter": round(inter, 4), "static_over_moving_clip": round(whole, 4),
            "clips": rows}  # fmt: skip


def run_video_v2_bench(
    codec: VideoCodecV2, clips: int = 8, frames: int = 50, kbps: tuple[float, ...] = (32, 64, 128)
) -> dict:
    fps = round(codec.fps)
    named = [(n, clips_to_uint8(c)) for n, c in eval_clips(clips, frames, codec.frame_size)]
    data = [c for _, c in named]
    rows, points = [], []
    for target in kbps:
        ours = [run_v2(codec, c, bitrate=target * 1000) for c in data]
        goals = [r["bits"] / (c.shape[0] / fps) for c, r in zip(data, ours, strict=True)]
        h264 = [run_h264(c, fps, matched_rate(c, fps, g), 1) for c, g in zip(data, goals, strict=True)]
        a = _row(f"talkstream ({codec.codec_id}), target {target:g} kbps", data, ours, fps)
        b = _row(f"H.264 zerolatency, matched to {codec.codec_id} at {target:g} kbps", data, h264, fps)
        rows += [a, b]
        points.append({"target_kbps": target, "kbps": a["kbps"], "h264_kbps": b["kbps"],
                       "psnr_gap_db": round(b["psnr_db"] - a["psnr_db"], 2),
                       "ms_ssim_gap": round(b["ms_ssim"] - a["ms_ssim"], 4)})  # fmt: skip
    result: dict[str, Any] = {
        "clips": [n for n, _ in named],
        "frames_per_clip": frames,
        "frame_size": list(codec.frame_size),
        "fps": fps,
        "codec_id": codec.codec_id,
        "rows": rows,
        "points": points,
        "static_vs_moving": static_vs_moving(codec, named, quality=0.75),
        "speed_note": "encode + decode per frame, torch on 1 thread; x264 rows: libx264 threads=1",
    }
    print(f"{'system':<60} {'kbps':>7} {'PSNR':>6} {'MS-SSIM':>7} {'fps 1t':>7} {'fps CPU':>7}")
    for r in rows:
        print(f"{r['system']:<60} {r['kbps']:>7.1f} {r['psnr_db']:>6.2f} {r['ms_ssim']:>7.4f} "
              f"{r['fps_1_thread']:>7.1f} {r['cpu_fps_1_thread']:>7.1f}")  # fmt: skip
    for p in points:
        print(
            f"at {p['kbps']:.1f} kbps: x264 is {p['psnr_gap_db']:+.2f} dB PSNR, {p['ms_ssim_gap']:+.4f} MS-SSIM ahead"
        )
    s = result["static_vs_moving"]
    print(
        f"static / moving scene bits at quality {s['quality']}: inter frames {s['static_over_moving_inter']:.4f}, "
        f"whole clips {s['static_over_moving_clip']:.4f}"
    )
    return result
