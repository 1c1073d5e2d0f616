"""`talkstream bench serve`: N concurrent real-time codec sessions against a real server on loopback.

The server runs as its own process (`talkstream serve`), so its CPU time and memory are measured apart from the
clients'; the clients run in this process, each streaming speech in 20 ms frames at real time for a fixed time.
Latency per returned frame is measured with the client's own clock (the server echoes each input frame's
timestamp). A frame is late when its latency exceeds the algorithmic latency plus one codec frame (40 ms): the
budget the issue sets. Note that on a 2-core machine the clients compete with the server for the CPU.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from talkstream.audio_io import load_audio
from talkstream.client import stream_audio
from talkstream.data import SAMPLE_WAV


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _proc_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def _wait_ready(url: str, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    from websockets.asyncio.client import connect

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode}")
        try:
            async with connect(url, open_timeout=2):
                return
        except OSError:
            await asyncio.sleep(0.3)
    raise RuntimeError("server did not start in time")


async def _run_level(url: str, pid: int, audio: np.ndarray, sessions: int, seconds: float, budget_ms: float) -> dict:
    clip = np.tile(audio, int(np.ceil(seconds * 24_000 / audio.size)))[: int(seconds * 24_000)]
    cpu0, t0, own0 = _proc_cpu_s(pid), time.monotonic(), time.process_time()

    async def one(i: int):
        await asyncio.sleep(0.02 * i / max(sessions, 1))  # spread the 20 ms phases like independent callers
        return await stream_audio(url, clip, 24_000, mode="codec", codebooks=8, output=("pcm",), tail_s=0.3)

    results = await asyncio.gather(*(one(i) for i in range(sessions)), return_exceptions=True)
    wall, cpu, own = time.monotonic() - t0, _proc_cpu_s(pid) - cpu0, time.process_time() - own0
    ok = [r for r in results if not isinstance(r, BaseException)]
    lat = np.concatenate([np.asarray(r.latencies_ms, float) for r in ok]) if ok else np.zeros(1)
    first = [r.first_audio_ms for r in ok if r.first_audio_ms is not None]
    drops = sum((r.summary or {}).get("drops", 0) for r in ok)
    return {
        "sessions": sessions,
        "failed_sessions": len(results) - len(ok),
        "frames": int(lat.size),
        "latency_ms_p50": float(np.percentile(lat, 50)),
        "latency_ms_p95": float(np.percentile(lat, 95)),
        "latency_ms_p99": float(np.percentile(lat, 99)),
        "late_frames": int((lat > budget_ms).sum()),
        "late_share": float((lat > budget_ms).mean()),
        "drops": int(drops),
        "first_audio_ms_max": float(max(first)) if first else None,
        "server_cpu_cores": cpu / wall,
        "client_cpu_cores": own / wall,  # the clients share this machine: near 1.0 means they are the bottleneck
        "server_rss_mb": _proc_rss_mb(pid),
        "passes": bool(len(ok) == sessions and np.percentile(lat, 95) <= budget_ms and drops == 0),
    }


def run_serve_bench(
    levels: list[int],
    seconds: float,
    weights: str | None = None,
    frames_per_step: int = 2,
    gather_ms: float = 0.0,
    backend: str = "onnx",
) -> dict:
    from talkstream.models.loaders import load_audio_codec

    codec = load_audio_codec(weights)
    budget_ms = codec.algorithmic_latency_ms + 1000 / codec.frame_rate  # one frame beyond the algorithmic latency
    port = _free_port()
    cmd = [
        sys.executable,
        "-m",
        "talkstream.services.cli",
        "serve",
        "--port",
        str(port),
        "--max-sessions",
        str(max(levels) + 4),
        "--frames-per-step",
        str(frames_per_step),
        "--gather-ms",
        str(gather_ms),
        "--backend",
        backend,
        "--no-http",  # WebSocket only: no page, and no claim on port 8080
    ] + (["--weights", weights] if weights else [])
    errors = tempfile.TemporaryFile()  # a file, not a pipe: a chatty server must never block on a full pipe
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=errors)
    url = f"ws://127.0.0.1:{port}"
    audio = load_audio(SAMPLE_WAV, 24_000)
    rows = []
    try:
        try:
            asyncio.run(_wait_ready(url, proc))
        except RuntimeError as e:
            errors.seek(0)
            raise RuntimeError(f"{e}: {errors.read().decode(errors='replace')[-500:]}") from None
        for n in levels:
            print(f"{n} sessions for {seconds:.0f} s ...", flush=True)
            rows.append(asyncio.run(_run_level(url, proc.pid, audio, n, seconds, budget_ms)))
    finally:
        proc.terminate()
        proc.wait(10)
    passing = [r for r in rows if r["passes"]]
    best = max(passing, key=lambda r: r["sessions"]) if passing else None
    result = {
        "budget_ms": budget_ms,
        "seconds": seconds,
        "frames_per_step": frames_per_step,
        "gather_ms": gather_ms,
        "backend": backend,
        "cpu_count": os.cpu_count(),
        "rows": rows,
        "max_sessions_passing": best["sessions"] if best else 0,
        "sessions_per_server_core": (best["sessions"] / max(best["server_cpu_cores"], 1e-9)) if best else 0.0,
    }
    head = (
        f"{'sessions':>8}{'p50 ms':>8}{'p95 ms':>8}{'p99 ms':>8}{'late':>7}{'drops':>7}{'first ms':>9}"
        f"{'srv cores':>10}{'cli cores':>10}{'RSS MB':>8}  ok"
    )
    print(head + "\n" + "-" * len(head))
    for r in rows:
        first = f"{r['first_audio_ms_max']:>9.1f}" if r["first_audio_ms_max"] is not None else f"{'-':>9}"
        print(
            f"{r['sessions']:>8}{r['latency_ms_p50']:>8.1f}{r['latency_ms_p95']:>8.1f}{r['latency_ms_p99']:>8.1f}"
            f"{r['late_frames']:>7}{r['drops']:>7}{first}{r['server_cpu_cores']:>10.2f}"
            f"{r['client_cpu_cores']:>10.2f}{r['server_rss_mb']:>8.0f}"
            f"  {'yes' if r['passes'] else 'no'}"
        )
    print(
        f"budget: p95 <= {budget_ms:.1f} ms (algorithmic latency + one frame), no drops. Largest passing: "
        f"{result['max_sessions_passing']} sessions, {result['sessions_per_server_core']:.1f} per server core"
    )
    return result
