"""Speech quality metrics and the Opus reference, shared by benchmarks and training evaluation."""

from __future__ import annotations

import fractions
import importlib
import time

import numpy as np

from talkstream.audio_io import resample
from talkstream.errors import UserError

# PESQ is defined on 8-20 s files (ITU-T P.862), and the pesq package's C code crashes the process (a segfault, no
# message) once it finds more than about 50 utterances in one call, which a minute of speech can hold. Longer audio
# is scored in equal pieces of at most PESQ_PIECE_S and averaged by length; STOI likewise, to bound its memory.
PESQ_PIECE_S = 16.0
STOI_PIECE_S = 60.0


class MetricsUnavailable(UserError, RuntimeError):
    """pesq or pystoi is not installed (they are the `metrics` extra: pesq builds from source)."""


def require_metrics() -> None:
    """Raise MetricsUnavailable (one line, with the install command) unless PESQ and STOI can run."""
    for module in ("pesq", "pystoi"):
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise MetricsUnavailable(f"PESQ/STOI need {module} ({e}): pip install -e '.[metrics]'") from None


def pieces(n: int, sample_rate: int, max_s: float) -> list[slice]:
    """`n` samples cut into the fewest equal pieces of at most `max_s` seconds."""
    count = max(1, -(-n // int(max_s * sample_rate)))
    edges = np.linspace(0, n, count + 1).round().astype(int)
    return [slice(a, b) for a, b in zip(edges[:-1].tolist(), edges[1:].tolist(), strict=True)]


def _mean_by_length(scores: list[tuple[float, int]]) -> float:
    scores = [(s, w) for s, w in scores if np.isfinite(s)]
    if not scores:
        return float("nan")
    return float(np.average([s for s, _ in scores], weights=[w for _, w in scores]))


def pesq_wb(ref: np.ndarray, deg: np.ndarray, sample_rate: int) -> float:
    """Wide-band PESQ (ITU-T P.862.2) at 16 kHz, averaged over pieces of at most PESQ_PIECE_S; NaN where PESQ
    finds no speech."""
    require_metrics()
    from pesq import pesq
    from pesq.cypesq import PesqError

    r, d = resample(ref, sample_rate, 16_000), resample(deg, sample_rate, 16_000)
    scores = []
    for sl in pieces(min(r.size, d.size), 16_000, PESQ_PIECE_S):
        try:
            scores.append((float(pesq(16_000, r[sl], d[sl], "wb")), sl.stop - sl.start))
        except PesqError:
            pass  # no utterance in this piece
    return _mean_by_length(scores)


def stoi(ref: np.ndarray, deg: np.ndarray, sample_rate: int) -> float:
    """STOI, averaged over pieces of at most STOI_PIECE_S (it is itself a mean over 384 ms segments)."""
    require_metrics()
    from pystoi import stoi as _stoi

    return _mean_by_length([(float(_stoi(ref[sl], deg[sl], sample_rate, extended=False)), sl.stop - sl.start)
                            for sl in pieces(min(ref.size, deg.size), sample_rate, STOI_PIECE_S)])


def align(ref: np.ndarray, deg: np.ndarray, max_lag: int) -> np.ndarray:
    """Shift `deg` by the lag (0..max_lag samples) that best matches `ref`; returns deg cut to ref's length."""
    n = min(ref.size, deg.size) - max_lag
    best = max(range(max_lag + 1), key=lambda lag: float(np.dot(ref[:n], deg[lag : lag + n])))
    out = deg[best:]
    return np.pad(out, (0, max(0, ref.size - out.size)))[: ref.size]


def opus_roundtrip(audio: np.ndarray, sample_rate: int, bitrate: int) -> tuple[np.ndarray, float, int]:
    """Encode + decode with libopus through PyAV (20 ms frames, VOIP application).

    Returns (decoded audio aligned to the input, encode+decode seconds, payload bytes).
    """
    import av

    enc = av.CodecContext.create("libopus", "w")
    enc.sample_rate, enc.layout, enc.format = sample_rate, "mono", "s16"
    enc.bit_rate = bitrate
    enc.time_base = fractions.Fraction(1, sample_rate)
    enc.options = {"application": "voip", "frame_duration": "20"}
    dec = av.CodecContext.create("libopus", "r")
    dec.sample_rate, dec.layout = sample_rate, "mono"
    pcm16 = (np.clip(audio, -1, 1) * 32767).astype(np.int16)
    frame_len = sample_rate // 50
    pcm16 = np.pad(pcm16, (0, -pcm16.size % frame_len + frame_len))
    out, nbytes = [], 0
    t0 = time.perf_counter()
    packets = []
    for i in range(0, pcm16.size, frame_len):
        frame = av.AudioFrame.from_ndarray(pcm16[None, i : i + frame_len], format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = sample_rate, i, enc.time_base
        packets += enc.encode(frame)
    packets += enc.encode(None)
    out_rate = sample_rate
    for p in packets:
        nbytes += p.size
        for f in dec.decode(p):
            x = f.to_ndarray().reshape(-1)
            out.append(x.astype(np.float32) / 32768.0 if x.dtype.kind == "i" else x.astype(np.float32))
            out_rate = f.sample_rate  # libopus decodes at 48 kHz whatever was asked
    decoded = resample(np.concatenate(out), out_rate, sample_rate)
    elapsed = time.perf_counter() - t0
    return align(audio, decoded, max_lag=sample_rate // 50), elapsed, nbytes


def trim_24k(pcm: np.ndarray) -> float:
    """Seconds from the clip's start to the end of its speech (its last 20 ms frame above -40 dB of the peak)."""
    hop = 24_000 // 50
    n = pcm.size // hop
    rms = np.sqrt(np.mean(pcm[: n * hop].reshape(n, hop) ** 2, axis=1) + 1e-12)
    loud = np.flatnonzero(20 * np.log10(rms / rms.max()) > -40)
    return (loud[-1] + 1) * hop / 24_000 if loud.size else 0.0
