"""`talkstream bench video`: the video codec against H.264 (libx264 through PyAV) on the held-out clips.

Both systems see the same RGB 128x128 frames at 25 fps and are scored on the RGB frames they give back: PSNR (over
each clip's whole MSE, 8-bit) and SSIM (skimage.metrics, per frame, averaged). Bits are what each system stores:
talkstream's 10-bit tokens (plus, for reference, the same tokens after lzma, what a generic entropy coder would
save), H.264's packet bytes. Speed: encode + decode of every frame, RGB to RGB, on 1 and on 2 threads (wall clock),
and on 1 thread in CPU time (`cpu_fps_1_thread`: what a core does when nothing else wants it); first-frame
latency: a fresh stream's first frame in to its reconstruction out. H.264 runs with tune zerolatency (no B-frames,
no lookahead, sliced threads) at the codec's bitrate, and at 1/2 and 1/4 of it for scale; each clip's x264
bit_rate setting is rescaled until what it actually spends is within 3% of the goal (`matched_rate`).

Long streams (`long_streams`): the held-out clips at 5 s, PSNR per second of video with one codec state throughout
and with a restart every `KEY_INTERVAL` frames (what live streams and `video encode` files do): how far the
codec's memory drifts, and what the key frames win back.
"""

from __future__ import annotations

import lzma
import time
from fractions import Fraction
from typing import Any

import numpy as np
import torch

from talkstream.codecs.container import pack_codes
from talkstream.codecs.video.codec import VideoCodec
from talkstream.codecs.video.data import clips_to_uint8, eval_clips


def psnr(ref: np.ndarray, out: np.ndarray) -> float:
    mse = float(np.mean((ref.astype(np.float64) - out.astype(np.float64)) ** 2))
    return float(10 * np.log10(255**2 / max(mse, 1e-10)))


def ssim(ref: np.ndarray, out: np.ndarray) -> float:
    from skimage.metrics import structural_similarity

    pairs = zip(ref, out, strict=True)
    return float(np.mean([structural_similarity(a, b, channel_axis=-1, data_range=255) for a, b in pairs]))


@torch.no_grad()
def run_talkstream(codec: VideoCodec, clip: np.ndarray, threads: int) -> dict:
    torch.set_num_threads(threads)
    x = torch.from_numpy(clip).permute(0, 3, 1, 2).float() / 255
    codec.decode_step(codec.encode_step(x[:1], codec.init_state())[0], codec.init_state())  # warm the thread pool
    enc, dec = codec.init_state(), codec.init_state()
    tokens, out, first_ms = [], [], 0.0
    c0, t0 = time.process_time(), time.perf_counter()
    for i in range(x.shape[0]):
        t, enc = codec.encode_step(x[i : i + 1], enc)
        y, dec = codec.decode_step(t, dec)
        if i == 0:
            first_ms = (time.perf_counter() - t0) * 1000
        tokens.append(t[0].numpy())
        out.append(y[0])
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    recon = clips_to_uint8(torch.stack(out))
    codes = np.stack(tokens, 1)
    packed = pack_codes(codes, codec.codebook_size)
    return {
        "recon": recon,
        "bits": len(packed) * 8,
        "bits_lzma": len(lzma.compress(packed, preset=9)) * 8,
        "seconds": seconds,
        "cpu_seconds": cpu,
        "first_frame_ms": first_ms,
    }


def run_h264(clip: np.ndarray, fps: int, bitrate: float, threads: int) -> dict:
    import av

    t_, h, w, _ = clip.shape
    enc = av.CodecContext.create("libx264", "w")
    enc.width, enc.height, enc.pix_fmt = w, h, "yuv420p"
    enc.time_base, enc.framerate = Fraction(1, fps), Fraction(fps)
    enc.bit_rate = int(bitrate)
    enc.options = {"tune": "zerolatency", "preset": "medium", "threads": str(threads)}
    dec = av.CodecContext.create("h264", "r")
    dec.thread_count, dec.thread_type = threads, "SLICE"
    bits, out, first_ms = 0, [], 0.0
    c0, t0 = time.process_time(), time.perf_counter()
    for i in range(t_):
        f = av.VideoFrame.from_ndarray(clip[i], format="rgb24").reformat(format="yuv420p")
        f.pts = i
        for p in enc.encode(f):
            bits += p.size * 8
            for g in dec.decode(p):
                out.append(g.to_ndarray(format="rgb24"))
        if i == 0:
            first_ms = (time.perf_counter() - t0) * 1000 if out else float("nan")
    for p in enc.encode(None):
        bits += p.size * 8
        out.extend(g.to_ndarray(format="rgb24") for g in dec.decode(p))
    out.extend(g.to_ndarray(format="rgb24") for g in dec.decode(None))
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {
        "recon": np.stack(out[:t_]),
        "bits": bits,
        "seconds": seconds,
        "cpu_seconds": cpu,
        "first_frame_ms": first_ms,
    }


def matched_rate(clip: np.ndarray, fps: int, goal: float, tries: int = 4) -> float:
    """The x264 bit_rate setting at which this clip comes out at `goal` bits/s (rate control overshoots on short
    clips: the first frame is an I-frame): a few rescaling passes."""
    rate = goal
    for _ in range(tries):
        got = run_h264(clip, fps, rate, 1)["bits"] / (clip.shape[0] / fps)
        if abs(got - goal) < 0.03 * goal:
            break
        rate *= goal / got
    return rate


def _row(system: str, clips: list[np.ndarray], runs: dict[int, list[dict]], fps: int) -> dict:
    pixels = sum(c.shape[0] * c.shape[1] * c.shape[2] for c in clips)
    frames = sum(c.shape[0] for c in clips)
    one = runs[1]
    row = {
        "system": system,
        "kbps": round(sum(r["bits"] for r in one) / (frames / fps) / 1000, 2),
        "bpp": round(sum(r["bits"] for r in one) / pixels, 4),
        "psnr_db": round(float(np.mean([psnr(c, r["recon"]) for c, r in zip(clips, one, strict=True)])), 2),
        "ssim": round(float(np.mean([ssim(c, r["recon"]) for c, r in zip(clips, one, strict=True)])), 4),
        "per_clip_psnr_db": [round(psnr(c, r["recon"]), 2) for c, r in zip(clips, one, strict=True)],
        "first_frame_ms": round(float(np.median([r["first_frame_ms"] for r in one])), 2),
    }
    for n, rs in runs.items():
        row[f"fps_{n}_thread"] = round(frames / sum(r["seconds"] for r in rs), 1)
    if 1 in runs:  # CPU time, not wall time: what one core does when nothing else wants it
        row["cpu_fps_1_thread"] = round(frames / sum(r["cpu_seconds"] for r in runs[1]), 1)
    if "bits_lzma" in one[0]:
        row["bpp_lzma"] = round(sum(r["bits_lzma"] for r in one) / pixels, 4)
    return row


@torch.no_grad()
def long_streams(codec: VideoCodec, clips: int = 4, seconds: int = 5) -> dict:
    """PSNR (dB) per second of video over `seconds`-second held-out clips, mean over clips: one state for the
    whole clip ("continuous") and a restart every KEY_INTERVAL frames ("key_frames")."""
    from talkstream.codecs.video.files import KEY_INTERVAL

    fps = round(codec.fps)
    out: dict[str, list[list[float]]] = {"continuous": [], "key_frames": []}
    for _, clip in eval_clips(clips, seconds * fps, codec.frame_size):
        ref = clips_to_uint8(clip)
        for name, interval in (("continuous", 0), ("key_frames", KEY_INTERVAL)):
            frames = []
            for i in range(clip.shape[0]):
                if i == 0 or (interval and i % interval == 0):
                    enc, dec = codec.init_state(), codec.init_state()
                t, enc = codec.encode_step(clip[i : i + 1], enc)
                y, dec = codec.decode_step(t, dec)
                frames.append(y[0])
            recon = clips_to_uint8(torch.stack(frames))
            out[name].append([psnr(ref[s * fps : (s + 1) * fps], recon[s * fps : (s + 1) * fps])
                              for s in range(seconds)])
    return {"clips": clips, "seconds": seconds, "key_interval": KEY_INTERVAL,
            **{name: [round(float(np.mean(col)), 2) for col in zip(*runs, strict=True)] for name, runs in out.items()}}


def run_video_bench(codec: VideoCodec, clips: int = 8, frames: int = 50, threads: tuple[int, ...] = (1, 2)) -> dict:
    fps = round(codec.fps)
    named = [(n, clips_to_uint8(c)) for n, c in eval_clips(clips, frames, codec.frame_size)]
    data = [c for _, c in named]
    rows = []
    runs = {n: [run_talkstream(codec, c, n) for c in data] for n in threads}
    rows.append(_row(f"talkstream ({codec.cfg.codec_id})", data, runs, fps))
    for share in (1.0, 0.5, 0.25):
        goal = codec.bitrate(fps) * share
        rates = [matched_rate(c, fps, goal) for c in data]
        runs = {n: [run_h264(c, fps, rate, n) for c, rate in zip(data, rates, strict=True)] for n in threads}
        rows.append(_row(f"H.264 zerolatency, {goal / 1000:.0f} kbps matched", data, runs, fps))
    for r in rows:
        r.pop("recon", None)
    result: dict[str, Any] = {
        "clips": [n for n, _ in named],
        "frames_per_clip": frames,
        "frame_size": list(codec.frame_size),
        "fps": fps,
        "codec_bitrate_kbps": codec.bitrate(fps) / 1000,
        "torch_threads_note": "torch.set_num_threads(n); libx264 threads=n, decoder slice threads=n",
        "rows": rows,
        "long_streams": long_streams(codec),
    }
    print(
        f"{'system':<40} {'kbps':>7} {'bpp':>7} {'PSNR':>6} {'SSIM':>6} "
        + " ".join(f"{f'fps {n}t':>7}" for n in threads)
        + f" {'fps CPU':>7} {'1st ms':>7}"
    )
    for r in rows:
        print(
            f"{r['system']:<40} {r['kbps']:>7.1f} {r['bpp']:>7.4f} {r['psnr_db']:>6.2f} {r['ssim']:>6.3f} "
            + " ".join(f"{r[f'fps_{n}_thread']:>7.1f}" for n in threads)
            + f" {r.get('cpu_fps_1_thread', float('nan')):>7.1f} {r['first_frame_ms']:>7.1f}"
        )
    d = result["long_streams"]
    print(f"PSNR per second of {d['seconds']} s streams ({d['clips']} held-out clips): one state "
          + " ".join(f"{v:.1f}" for v in d["continuous"]) + f"; key frame every {d['key_interval']} "
          + " ".join(f"{v:.1f}" for v in d["key_frames"]))
    return result
