"""`talkstream bench codec`: the codec against Opus, side by side in one run, on held-out voices.

Intelligibility first, as a listener judges it (bench/listener.py): per configuration the recogniser's word error
rate against the text ("WER") and against its own transcript of the original audio ("drift": what the codec loses,
whatever the recogniser gets wrong anyway), and DNSMOS OVRL; per eval voice too, so one voice cannot hide another.
Then PESQ-WB, STOI (means over files), bitrate, encode+decode real-time factor on one thread, and for the codec the
streaming step latency (one 13.3 ms frame in, one frame out), algorithmic latency and the decoder's compute in
MFLOPs per second of audio. Also codebook usage on the eval set and the training throughput recorded with the weights.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from talkstream.audio_io import AudioInputError, load_audio
from talkstream.bench import listener
from talkstream.bench.metrics import opus_roundtrip, pesq_wb, stoi
from talkstream.checkpoint import WEIGHTS_DIR
from talkstream.codecs.audio.codec import AudioCodec

CODEBOOKS = (1, 2, 4, 8)
LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")  # Debian pocketsphinx-testdata: real readings
OPUS_BITRATES = (6000, 8000, 12000)
OPUS_LATENCY_MS = 26.5  # 20 ms frame + 6.5 ms lookahead


def eval_files(data: Path, max_files: int) -> list[Path]:
    """Held-out files, taken round-robin across voices so every eval voice is represented."""
    return [row["path"] for row in eval_rows(data, max_files)]


def eval_rows(data: Path, max_files: int) -> list[dict]:
    """Held-out rows {'path', 'voice', 'text'}, round-robin across voices."""
    manifest = data / "manifest.jsonl"
    if not manifest.exists():
        raise AudioInputError(f"{data}: no manifest.jsonl (make one with `talkstream data speech --out {data}`)")
    by_voice: dict[str, list[dict]] = {}
    for line in manifest.read_text().splitlines():
        row = json.loads(line)
        if row["split"] == "eval":
            by_voice.setdefault(row["voice"], []).append(
                {"path": data / row["file"], "voice": row["voice"], "text": row.get("text", "")}
            )
    if not by_voice:
        raise AudioInputError(f"{data}: manifest has no eval split")
    out: list[dict] = []
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


def _fft_mflops(n: int, calls_per_frame: float, frame_rate: float) -> float:
    """A real FFT of n points counted as 2.5 n log2 n FLOPs (half a complex FFT's 5 n log2 n): torch's FLOP counter
    counts matrix products and convolutions only."""
    return 2.5 * n * np.log2(n) * calls_per_frame * frame_rate / 1e6


def decoder_mflops_per_second(codec: AudioCodec, num_codebooks: int = 8) -> float:
    """The decoder's compute for one second of audio, in MFLOPs (2 x multiply-adds), as LRAC counts it (codec v4:
    voiced frames, and its two FFTs per frame)."""
    from torch.utils.flop_counter import FlopCounterMode

    frames = round(codec.frame_rate)
    codes = torch.zeros(1, codec.pitch_rows + min(num_codebooks, codec.num_codebooks), frames, dtype=torch.long)
    if codec.pitch_rows:
        codes[:, 0] = 1 << (codec.cfg.pitch_bits - 2)  # voiced: the harmonic source runs
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        codec.decode(codes)
    ffts = _fft_mflops(2 * codec.frame_size, 2, codec.frame_rate) if codec.excited else 0.0
    return counter.get_total_flops() / 1e6 + ffts


def encoder_mflops_per_second(codec: AudioCodec, num_codebooks: int = 8) -> float:
    """The encoder's compute for one second of audio in MFLOPs (codec v4: the pitch tracker's three FFTs per frame
    and its decimating filter included)."""
    from torch.utils.flop_counter import FlopCounterMode

    pcm = torch.randn(1, 1, codec.sample_rate) * 0.1
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        codec.encode(pcm, num_codebooks)
    extra = 0.0
    if codec.pitch_tracker is not None:
        extra = _fft_mflops(codec.pitch_tracker.n_fft, 3, codec.frame_rate)
    return counter.get_total_flops() / 1e6 + extra


class _Listener:
    """The recogniser and DNSMOS when installed; otherwise the rows carry no listener columns (said once)."""

    def __init__(self) -> None:
        try:
            listener.recogniser()
            listener.dnsmos(np.zeros(1600, np.float32) + 1e-3, 16_000)
            self.ok = True
        except listener.ListenerMissing as e:
            print(f"note: {e}; WER and DNSMOS are left out")
            self.ok = False

    def hear(self, pcm: np.ndarray, sample_rate: int) -> tuple[str, float]:
        return listener.transcribe(pcm, sample_rate), listener.dnsmos(pcm, sample_rate)["ovrl"]


def level(ref: np.ndarray, y: np.ndarray) -> dict:
    """The output's level against the input's (dB of RMS) and its share of samples at full scale."""
    rms = lambda a: float(np.sqrt(np.mean(np.square(a, dtype=np.float64)) + 1e-12))  # noqa: E731
    return {"level_db": 20 * np.log10(rms(y) / rms(ref)), "clipped": float(np.mean(np.abs(y) >= 0.999))}


def _summarise(name: str, items: list[dict], texts: list[str], originals: list[str], voices: list[str]) -> dict:
    out: dict[str, Any] = {
        "pesq_wb": float(np.nanmean([i["pesq"] for i in items])),
        "stoi": float(np.nanmean([i["stoi"] for i in items])),
        "level_db": float(np.mean([i["level_db"] for i in items])),
        "clipped": float(np.mean([i["clipped"] for i in items])),
    }
    if "hyp" in items[0]:
        hyps = [i["hyp"] for i in items]
        out["wer"] = listener.wer(texts, hyps)
        out["wer_drift"] = listener.wer(originals, hyps)
        out["dnsmos_ovrl"] = float(np.mean([i["ovrl"] for i in items]))
        out["per_voice"] = {
            v: {
                "wer": listener.wer([t for t, w in zip(texts, voices, strict=True) if w == v],
                                    [h for h, w in zip(hyps, voices, strict=True) if w == v]),
                "dnsmos_ovrl": float(np.mean([i["ovrl"] for i, w in zip(items, voices, strict=True) if w == v])),
            }
            for v in sorted(set(voices))
        }
    return out


def _table(rows: list[dict]) -> str:
    head = (
        f"{'system':<18}{'kbps':>6}{'WER':>7}{'drift':>7}{'OVRL':>6}{'PESQ-WB':>8}{'STOI':>7}{'RTF':>8}{'step ms':>8}"
        f"{'p95':>7}{'strm RTF':>9}{'RTF@80ms':>9}{'latency':>8}{'level':>7}"
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
        heard = f"{'-':>7}{'-':>7}{'-':>6}"
        if "wer" in r:
            heard = f"{r['wer']:>7.1%}{r['wer_drift']:>7.1%}{r['dnsmos_ovrl']:>6.2f}"
        lines.append(
            f"{r['system']:<18}{r['kbps']:>6.2f}{heard}{r['pesq_wb']:>8.2f}{r['stoi']:>7.3f}{r['rtf']:>8.4f}"
            f"{stream}{r['algorithmic_latency_ms']:>8.1f}{r.get('level_db', 0.0):>+7.1f}"
        )
    lines.append(
        "WER: recogniser (Whisper tiny.en) vs the text; drift: vs its transcript of the original. OVRL: DNSMOS P.835. "
        "RTF: offline encode+decode, 1 thread. step ms / strm RTF: streaming one 13.3 ms frame per step; "
        "RTF@80ms: streaming 6 frames per step. latency: algorithmic, ms. level: output RMS against input, dB."
    )
    return "\n".join(lines)


def real_rows(folder: Path = LIBRIVOX) -> list[dict]:
    """Real recordings with their text: LibriVox readings (Debian `pocketsphinx-testdata`, 16 kHz); [] without it."""
    if not (folder / "transcription").is_file():
        return []
    rows = []
    for line in (folder / "transcription").read_text().splitlines():
        text, _, name = line.rpartition("(")
        path = folder / f"{name.strip(') ')}.wav"
        if path.is_file():
            text = text.replace("<s>", "").replace("</s>", "").strip()
            rows.append({"path": path, "voice": "librivox", "text": text})
    return rows


def run_codec_bench(codec: AudioCodec, data: Path, max_files: int = 24, weights_dir: str | None = None,
                    codebooks: tuple[int, ...] = CODEBOOKS, opus: tuple[int, ...] = OPUS_BITRATES,
                    baseline: AudioCodec | None = None, real: Path | None = LIBRIVOX) -> dict:
    """The codec (and a `baseline` codec, side by side in the same run) against Opus on `max_files` held-out files of
    `data`, then on the real recordings under `real` (skipped, said once, when absent)."""
    torch.set_num_threads(1)
    ear = _Listener()
    codecs = [codec] + ([baseline] if baseline is not None else [])
    rows_in = eval_rows(data, max_files)
    rows, usage, seconds = _evaluate(codecs, rows_in, ear, codebooks, opus, with_usage=True)
    real_in = real_rows(real) if real is not None else []
    if real is not None and not real_in:
        print(f"note: no real recordings at {real} (apt-get install pocketsphinx-testdata): that table is left out")
    real_out = _evaluate(codecs, real_in, ear, codebooks, opus)[0] if real_in else []
    print(_table(rows))
    if real_out:
        print(f"\nreal recordings ({len(real_in)} LibriVox readings, 16 kHz):")
        print(_table(real_out))
    return _result(codec, rows_in, seconds, rows, usage, weights_dir, real_in, real_out)


def _labels(codecs: list[AudioCodec]) -> list[str]:
    """Row prefixes: "talkstream " alone; beside a baseline, each codec's version ("v4 ", "v3 "), or "new " and
    "baseline " when both have the same id (two trainings of one codec)."""
    if len(codecs) == 1:
        return ["talkstream "]
    ids = [c.cfg.codec_id.rsplit("-", 1)[-1] for c in codecs]
    return [f"{i} " for i in ids] if len(set(ids)) == len(ids) else ["new ", "baseline "]


def _evaluate(codecs: list[AudioCodec], rows_in: list[dict], ear: _Listener, codebooks: tuple[int, ...],
              opus: tuple[int, ...], with_usage: bool = False) -> tuple[list[dict], list | None, float]:
    """-> (rows, codebook usage of the first codec when asked, seconds of audio)."""
    sr = codecs[0].sample_rate
    refs = [load_audio(r["path"], sr) for r in rows_in]
    texts, voices = [r["text"] for r in rows_in], [r["voice"] for r in rows_in]
    seconds = sum(r.size for r in refs) / sr

    def score(ref: np.ndarray, y: np.ndarray) -> dict:
        item = {"pesq": pesq_wb(ref, y, sr), "stoi": stoi(ref, y, sr), **level(ref, y)}
        if ear.ok:
            item["hyp"], item["ovrl"] = ear.hear(y, sr)
        return item

    originals, rows = [], []
    if ear.ok:
        heard = [ear.hear(r, sr) for r in tqdm(refs, desc="original audio", leave=False)]
        originals = [h for h, _ in heard]
        rows.append({
            "system": "original", "kbps": 384.0, "pesq_wb": 4.64, "stoi": 1.0, "rtf": 0.0,
            "algorithmic_latency_ms": 0.0, "wer": listener.wer(texts, originals), "wer_drift": 0.0,
            "dnsmos_ovrl": float(np.mean([o for _, o in heard])), "level_db": 0.0,
            "clipped": float(np.mean([level(r, r)["clipped"] for r in refs])),
        })
    usage = None
    for codec, name in zip(codecs, _labels(codecs), strict=True):
        for k in codebooks:
            items, elapsed = [], 0.0
            for ref in tqdm(refs, desc=f"{name}{k} codebooks", leave=False):
                x = torch.from_numpy(ref)[None, None]
                t0 = time.perf_counter()
                with torch.inference_mode():
                    y = codec.reconstruct(x, k)[0, 0].numpy()
                elapsed += time.perf_counter() - t0
                items.append(score(ref, y))
            if with_usage and codec is codecs[0] and k == max(codebooks):
                with torch.inference_mode():
                    codes = torch.cat([codec.encode(torch.from_numpy(r)[None, None], k) for r in refs], dim=-1)
                usage = codec.quantizer.usage(codes[:, codec.pitch_rows :])
            rows.append(
                {
                    "system": f"{name}{k} cb",
                    "codec_id": codec.cfg.codec_id,
                    "codebooks": k,
                    "kbps": codec.bitrate(k) / 1000,
                    **_summarise(f"{k} cb", items, texts, originals, voices),
                    "rtf": elapsed / seconds,
                    "algorithmic_latency_ms": codec.algorithmic_latency_ms,
                    "decoder_mflops_per_s": decoder_mflops_per_second(codec, k),
                    "encoder_mflops_per_s": encoder_mflops_per_second(codec, k),
                    "frame": streaming_step_latency(codec, refs[0], k, 1),
                    "chunk80": streaming_step_latency(codec, refs[0], k, 6),
                }
            )
    for br in opus:
        items, elapsed, nbytes = [], 0.0, 0
        for ref in tqdm(refs, desc=f"opus {br // 1000} kbps", leave=False):
            y, t, n = opus_roundtrip(ref, sr, br)
            elapsed += t
            nbytes += n
            items.append(score(ref, y))
        rows.append(
            {
                "system": f"opus {br // 1000} kbps",
                "kbps": nbytes * 8 / seconds / 1000,
                **_summarise(f"opus {br}", items, texts, originals, voices),
                "rtf": elapsed / seconds,
                "algorithmic_latency_ms": OPUS_LATENCY_MS,
            }
        )
    return rows, usage, seconds


def _result(codec: AudioCodec, rows_in: list[dict], seconds: float, rows: list[dict], usage: list | None,
            weights_dir: str | None, real_in: list[dict], real_out: list[dict]) -> dict:
    voices = [r["voice"] for r in rows_in]
    training = Path(weights_dir or WEIGHTS_DIR / "audio_codec") / "training.json"
    result: dict[str, Any] = {
        "codec_id": codec.cfg.codec_id,
        "files": len(rows_in),
        "seconds": seconds,
        "voices": sorted(set(voices)),
        "rows": rows,
        "real": {"files": [str(r["path"]) for r in real_in], "rows": real_out},
        "codebook_usage": usage,
        "training": json.loads(training.read_text()) if training.exists() else None,
    }
    for r in rows:
        if "per_voice" in r:
            print(f"{r['system']:<18} per voice WER: "
                  + ", ".join(f"{v} {pv['wer']:.0%}" for v, pv in r["per_voice"].items()))
    for r in rows:
        if "decoder_mflops_per_s" in r and r["codebooks"] == max(x.get("codebooks", 0) for x in rows):
            print(f"{r['system']}: decoder {r['decoder_mflops_per_s']:.0f}, encoder {r['encoder_mflops_per_s']:.0f} "
                  "MFLOPs per second of audio (targets: 300 and 400)")
    if usage:
        print(
            "codebook usage (share of codes used / perplexity): "
            + ", ".join(f"{u['used']:.2f}/{u['perplexity']:.0f}" for u in usage)
        )
    if result["training"]:
        t = result["training"]
        speeds = ", ".join(f"{v:.1f} on {d}" for d, v in t.get("audio_s_per_s", {}).items())
        print(f"training throughput (s of audio per s): {speeds or 'not recorded'}; {t.get('steps')} steps")
    return result
