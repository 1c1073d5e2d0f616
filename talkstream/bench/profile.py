"""Where one worker's time goes: py-spy samples a one-worker server under N real-time codec sessions.

    pip install py-spy
    python -m talkstream.bench.profile [SESSIONS [SECONDS]]     # default 8 sessions, 15 s of steady state

The server runs in its own process (`talkstream serve --workers 1 --no-http --thinker echo`); the clients run here.
py-spy samples every thread of the server without stopping it (`--nonblocking`) after 3 s of warm-up, and the
busy samples are grouped by what they were doing (docs/benchmarks.md has the table).
"""

from __future__ import annotations

import asyncio
import collections
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from talkstream.audio_io import load_audio
from talkstream.bench.serve import ServerProcess
from talkstream.client import stream_audio
from talkstream.data import SAMPLE_WAV

IDLE = ("EpollSelector.select", "_worker (concurrent/futures/thread.py:81)", "Condition.wait", "Event.wait")


def group(frames: list[str]) -> str:
    """What a busy stack (root first) was doing."""
    if "Session.run (onnxruntime" in frames[-1]:
        return "VAD in onnxruntime" if any("vad.py" in f for f in frames) else "codec step in onnxruntime"
    checks = [
        ("VAD's Python (resampling, framing)", ("vad.py", "soxr")),
        ("codec engine's Python (states, batching)", ("codec_engine", "onnx_step", "codecs/audio/codec.py")),
        ("websockets", ("websockets/",)),
        ("session, stages, protocol, metrics", ("talkstream/services", "talkstream/streaming", "talkstream/protocol")),
    ]
    for name, keys in checks:
        if any(k in f for f in frames[-8:] for k in keys):
            return name
    if any("asyncio/" in f or "concurrent/futures" in f for f in frames[-4:]):
        return "asyncio loop and thread hand-offs"
    return "other"


def summarise(raw: Path) -> tuple[float, dict[str, float]]:
    """(busy share of all samples, {group: share of busy samples}) from py-spy's raw (collapsed) output."""
    total = busy = 0
    groups: collections.Counter[str] = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, n = line.rsplit(" ", 1)
        frames = stack.split(";")[1:]  # the first is the thread
        total += int(n)
        if not frames or any(frames[-1].startswith(i) for i in IDLE):
            continue
        busy += int(n)
        groups[group(frames)] += int(n)
    return busy / max(total, 1), {k: v / max(busy, 1) for k, v in groups.most_common()}


async def _load(url: str, sessions: int, seconds: float, raw: Path, pid: int) -> list:
    audio = load_audio(SAMPLE_WAV, 24_000)
    clip = np.tile(audio, int(np.ceil((seconds + 6) * 24_000 / audio.size)))[: int((seconds + 6) * 24_000)]

    async def one(i: int):
        await asyncio.sleep(0.02 * i / sessions)
        return await stream_audio(url, clip, 24_000, tail_s=0.3)

    tasks = [asyncio.create_task(one(i)) for i in range(sessions)]
    await asyncio.sleep(3)  # steady state only
    spy = await asyncio.create_subprocess_exec(
        "py-spy", "record", "--pid", str(pid), "--threads", "--nonblocking", "--rate", "100",
        "--duration", str(int(seconds)), "--format", "raw", "-o", str(raw), stdout=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    results = await asyncio.gather(*tasks)
    await spy.wait()
    return results


def main(sessions: int = 8, seconds: float = 15.0) -> None:
    if shutil.which("py-spy") is None:
        raise SystemExit("py-spy is not installed: pip install py-spy")
    server = ServerProcess(1, sessions + 4, [])
    try:
        server.wait_ready()
        with tempfile.TemporaryDirectory() as d:
            raw = Path(d) / "profile.raw"
            t0 = time.monotonic()
            results = asyncio.run(_load(server.url, sessions, seconds, raw, server.proc.pid))
            busy, groups = summarise(raw)
    finally:
        server.stop()
    lat = np.concatenate([r.latencies_ms for r in results])
    drops = sum((r.summary or {}).get("drops", 0) for r in results)
    print(
        f"{sessions} sessions, {time.monotonic() - t0:.0f} s: p50 {np.percentile(lat, 50):.0f} ms, "
        f"p95 {np.percentile(lat, 95):.0f} ms, drops {drops}; {100 * busy:.0f}% of the samples busy, of which:"
    )
    for name, share in groups.items():
        print(f"  {100 * share:5.1f}%  {name}")


if __name__ == "__main__":
    args = sys.argv[1:]
    main(int(args[0]) if args else 8, float(args[1]) if len(args) > 1 else 15.0)
