"""`talkstream bench codec`: the codec against Opus, side by side in one run, on held-out voices.

Reports per configuration: bitrate, PESQ-WB, STOI (means over files), encode+decode real-time factor on one thread,
and for the codec the streaming step latency (one 13.3 ms frame in, one frame out) and algorithmic latency.
Also codebook usage on the eval set and the training throughput recorded with the weights.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from talkstream.audio_io import AudioInputError, load_audio
from talkstream.bench.metrics import opus_roundtrip, pesq_wb, stoi
from talkstream.codecs.audio.codec import AudioCodec
from talkstream.models.loaders import WEIGHTS_DIR

CODEBOOKS = (1, 2, 4, 8)
OPUS_BITRATES = (6000, 8000, 12000)
OPUS_LATENCY_MS = 26.5  # 20 ms frame + 6.5 ms lookahead


def eval_files(data: Path, max_files: int) -> list[Path]:
    """Held-out files, taken round-robin across voices so every eval voice is represented."""
    manifest = data / "manifest.jsonl"
    if not manifest.exists():
        raise AudioInputError(f"{data}: no manifest.jsonl (make one with `talkstream data speech --out {data}`)")
    by_voice: dict[str, list[Path]] = {}
    for line in manifest.read_text().splitlines():
        row = json.loads(line)
        if row["split"] == "eval":
            by_voice.setdefault(row["voice"], []).append(data / row["file"])
    if not by_voice:
        raise AudioInputError(f"{data}: manifest has no eval split")
    out: list[Path] = []
    i = 0
    while len(out) < max_files and any(i < len(v) for v in by_voice.values()):
        out += [v[i] for v in by_voice.values() if i < len(v)]
        i += 1
    return out[:max_files]


def streaming_step_latency(codec: AudioCodec, audio: np.ndarray, num_codebooks: int, chunk_frames: int = 1) -> dict:
    """encode_step + decode_step on chunks of `chunk_frames` frames, one thread: per-step ms (mean, p95) and RTF.

    One frame (13.3 ms) is the lowest-latency way to run; larger chunks pay Python's per-call overhead less often.
    """
    hop = codec.frame_size * chunk_frames
    x = torch.from_numpy(audio[: audio.size // hop * hop])[None, None]
    state = codec.init_state(1, num_codebooks)
    times = []
    with torch.inference_mode():
        for i in range(0, x.shape[-1], hop):
            t0 = time.perf_counter()
            codes, state = codec.encode_step(x[..., i : i + hop], state)
            _, state = codec.decode_step(codes, state)
            times.append(time.perf_counter() - t0)
    ms = np.array(times[3:]) * 1000  # skip warm-up steps
    chunk_ms = 1000 * hop / codec.sample_rate
    return {
        "chunk_ms": chunk_ms,
        "step_ms_mean": float(ms.mean()),
        "step_ms_p95": float(np.percentile(ms, 95)),
        "streaming_rtf": float(ms.mean() / chunk_ms),
    }


def _table(rows: list[dict]) -> str:
    head = (
        f"{'system':<18}{'kbps':>6}{'PESQ-WB':>8}{'STOI':>7}{'RTF':>8}{'step ms':>8}{'p95':>7}"
        f"{'strm RTF':>9}{'RTF@80ms':>9}{'latency':>8}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        if "frame" in r:
            f, c = r["frame"], r["chunk80"]
            stream = (
                f"{f['step_ms_mean']:>8.2f}{f['step_ms_p95']:>7.2f}{f['streaming_rtf']:>9.3f}{c['streaming_rtf']:>9.3f}"
            )
        else:
            stream = f"{'-':>8}{'-':>7}{'-':>9}{'-':>9}"
        lines.append(
            f"{r['system']:<18}{r['kbps']:>6.2f}{r['pesq_wb']:>8.2f}{r['stoi']:>7.3f}{r['rtf']:>8.4f}"
            f"{stream}{r['algorithmic_latency_ms']:>8.1f}"
        )
    lines.append(
        "RTF: offline encode+decode, 1 thread. step ms / strm RTF: streaming one 13.3 ms frame per step; "
        "RTF@80ms: streaming 6 frames per step. latency: algorithmic, ms."
    )
    return "\n".join(lines)


def run_codec_bench(codec: AudioCodec, data: Path, max_files: int = 24, weights_dir: str | None = None) -> dict:
    torch.set_num_threads(1)
    files = eval_files(data, max_files)
    refs = [load_audio(f, codec.sample_rate) for f in files]
    seconds = sum(r.size for r in refs) / codec.sample_rate
    rows = []
    usage = None
    for k in CODEBOOKS:
        scores, elapsed = [], 0.0
        for ref in tqdm(refs, desc=f"codec {k} codebooks", leave=False):
            x = torch.from_numpy(ref)[None, None]
            t0 = time.perf_counter()
            with torch.inference_mode():
                y = codec.reconstruct(x, k)[0, 0].numpy()
            elapsed += time.perf_counter() - t0
            scores.append((pesq_wb(ref, y, codec.sample_rate), stoi(ref, y, codec.sample_rate)))
        if k == max(CODEBOOKS):
            with torch.inference_mode():
                codes = torch.cat([codec.encode(torch.from_numpy(r)[None, None], k) for r in refs], dim=-1)
            usage = codec.quantizer.usage(codes)
        s = np.array(scores)
        rows.append(
            {
                "system": f"talkstream {k} cb",
                "codebooks": k,
                "kbps": codec.bitrate(k) / 1000,
                "pesq_wb": float(np.nanmean(s[:, 0])),
                "stoi": float(np.nanmean(s[:, 1])),
                "rtf": elapsed / seconds,
                "algorithmic_latency_ms": codec.algorithmic_latency_ms,
                "frame": streaming_step_latency(codec, refs[0], k, 1),
                "chunk80": streaming_step_latency(codec, refs[0], k, 6),
            }
        )
    for br in OPUS_BITRATES:
        scores, elapsed, nbytes = [], 0.0, 0
        for ref in tqdm(refs, desc=f"opus {br // 1000} kbps", leave=False):
            y, t, n = opus_roundtrip(ref, codec.sample_rate, br)
            elapsed += t
            nbytes += n
            scores.append((pesq_wb(ref, y, codec.sample_rate), stoi(ref, y, codec.sample_rate)))
        s = np.array(scores)
        rows.append(
            {
                "system": f"opus {br // 1000} kbps",
                "kbps": nbytes * 8 / seconds / 1000,
                "pesq_wb": float(np.nanmean(s[:, 0])),
                "stoi": float(np.nanmean(s[:, 1])),
                "rtf": elapsed / seconds,
                "algorithmic_latency_ms": OPUS_LATENCY_MS,
            }
        )
    training = Path(weights_dir or WEIGHTS_DIR / "audio_codec") / "training.json"
    result = {
        "files": len(files),
        "seconds": seconds,
        "voices": sorted({f.name.rsplit("_", 1)[0] for f in files}),
        "rows": rows,
        "codebook_usage": usage,
        "training": json.loads(training.read_text()) if training.exists() else None,
    }
    print(_table(rows))
    if usage:
        print(
            "codebook usage at 8 cb (share of codes used / perplexity): "
            + ", ".join(f"{u['used']:.2f}/{u['perplexity']:.0f}" for u in usage)
        )
    if result["training"]:
        t = result["training"]
        speeds = ", ".join(f"{v:.1f} on {d}" for d, v in t.get("audio_s_per_s", {}).items())
        print(f"training throughput (s of audio per s): {speeds or 'not recorded'}; {t.get('steps')} steps")
    return result
