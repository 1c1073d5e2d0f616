"""`talkstream bench soak`: many connect / converse / disconnect cycles against a server in its own process, and
what they leave behind.

Each cycle is one WebSocket session of one of three kinds, in turn: a chat conversation that says a short sentence
and hears the reply (the clean end: `end`, then the summary), a codec echo that streams a clip and ends cleanly, and
a session dropped mid-stream (the connection closed without `end`, as a vanished client does). `--concurrency`
cycles run at once. Before (after a warm-up) and after, the server's own gauges are read from `/metrics`: open
sessions, asyncio tasks on its loop, threads, open file descriptors, and its resident memory. What a long run must
show: no session open after, and tasks, threads and descriptors back where they were (a few of slack: a pool may
grow a thread).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import urllib.request

import numpy as np

from talkstream.bench.serve import ServerProcess
from talkstream.errors import UserError

SLACK = {"tasks": 2, "threads": 2, "open_fds": 4}
GAUGES = {"sessions": "talkstream_sessions_active", "tasks": "talkstream_event_loop_tasks",
          "threads": "talkstream_threads", "open_fds": "talkstream_open_fds"}


def read_gauges(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out = {}
    for name, metric in GAUGES.items():
        m = re.search(rf"^{metric} (\S+)$", text, re.M)
        out[name] = float(m.group(1)) if m else float("nan")
    return out


async def _cycle(url: str, kind: str, speech: np.ndarray, clip: np.ndarray) -> str | None:
    """One session; returns None, or what went wrong (an error event, an exception)."""
    from websockets.asyncio.client import connect

    from talkstream.client import stream_audio
    from talkstream.protocol import PROTOCOL_VERSION, pcm_frame

    try:
        if kind == "chat":
            r = await stream_audio(url, speech, 24_000, mode="chat", tail_s=2.0)
            if r.summary is None:
                return f"chat: no summary ({r.closed})"
            if not r.final("reply_text") and not r.pcm.size:
                return "chat: no reply"
        elif kind == "codec":
            r = await stream_audio(url, clip, 24_000, mode="codec", tail_s=0.2)
            if r.summary is None:
                return f"codec: no summary ({r.closed})"
        else:  # dropped mid-stream
            async with connect(url) as ws:
                await ws.send(json.dumps({"type": "hello", "version": PROTOCOL_VERSION, "mode": "chat",
                                          "sample_rate": 24_000}))
                await ws.recv()
                for i in range(10):
                    await ws.send(pcm_frame(clip[i * 480 : (i + 1) * 480], i, 0))
                    await asyncio.sleep(0.02)
        return None
    except Exception as e:  # noqa: BLE001 - counted, the soak goes on
        return f"{kind}: {type(e).__name__}: {e}"


async def _run(url: str, cycles: int, concurrency: int, speech: np.ndarray, clip: np.ndarray,
               progress: bool) -> list[str]:
    kinds = ("chat", "codec", "dropped")
    gate = asyncio.Semaphore(concurrency)
    problems: list[str] = []
    done = 0

    async def one(i: int) -> None:
        nonlocal done
        async with gate:
            problem = await _cycle(url, kinds[i % 3], speech, clip)
        if problem:
            problems.append(problem)
        done += 1
        if progress and done % 100 == 0:
            print(f"  {done}/{cycles} cycles, {len(problems)} problems", flush=True)

    await asyncio.gather(*(one(i) for i in range(cycles)))
    return problems


def _settle(port: int, before: dict[str, float], timeout: float = 10.0) -> dict[str, float]:
    """The gauges once the last sessions have closed (or after `timeout`)."""
    end = time.monotonic() + timeout
    while True:
        now = read_gauges(port)
        ok = now["sessions"] == 0 and all(now[k] <= before[k] + SLACK[k] for k in SLACK)
        if ok or time.monotonic() > end:
            return now
        time.sleep(0.5)


def run_soak_bench(cycles: int = 1000, concurrency: int = 8, thinker: str = "echo", progress: bool = True) -> dict:
    from talkstream.audio_io import load_audio
    from talkstream.data import SAMPLE_WAV

    if cycles < 1 or concurrency < 1:
        raise UserError(f"--cycles and --concurrency must be at least 1 (got {cycles}, {concurrency})")
    audio = load_audio(SAMPLE_WAV, 24_000)
    speech = np.concatenate([audio[: 24_000], np.zeros(24_000, np.float32)])  # a second said, then silence
    clip = audio[: 12_000]
    server = ServerProcess(1, concurrency + 4, ["--turn-end", "silence"], thinker=thinker)
    try:
        server.wait_ready()
        warm = min(12, cycles)
        problems = asyncio.run(_run(server.url, warm, concurrency, speech, clip, False))
        before = _settle(server.port, {k: float("inf") for k in SLACK})
        before["rss_mb"] = round(server.rss_mb(), 1)
        t0 = time.monotonic()
        problems += asyncio.run(_run(server.url, cycles, concurrency, speech, clip, progress))
        elapsed = time.monotonic() - t0
        after = _settle(server.port, before)
        after["rss_mb"] = round(server.rss_mb(), 1)
    finally:
        server.stop()
    leaked = {k: after[k] - before[k] for k in ("sessions", *SLACK)}
    passes = bool(after["sessions"] == 0 and all(after[k] <= before[k] + SLACK[k] for k in SLACK))
    result = {"cycles": cycles, "concurrency": concurrency, "thinker": thinker, "seconds": round(elapsed, 1),
              "kinds": ["chat", "codec", "dropped"], "problems": len(problems), "problem_examples": problems[:10],
              "before": before, "after": after, "grew": leaked, "slack": SLACK, "passes": passes}
    print(f"{cycles} cycles ({concurrency} at once) in {elapsed:.0f} s, {len(problems)} problems")
    print(f"{'':<10}{'sessions':>9}{'tasks':>7}{'threads':>8}{'fds':>6}{'rss MB':>8}")
    for name, g in (("before", before), ("after", after)):
        print(f"{name:<10}{g['sessions']:>9.0f}{g['tasks']:>7.0f}{g['threads']:>8.0f}{g['open_fds']:>6.0f}"
              f"{g['rss_mb']:>8.0f}")
    print("nothing left behind" if passes else "LEFT BEHIND: " + ", ".join(f"{k} +{v:g}" for k, v in leaked.items()
                                                                          if v > SLACK.get(k, 0)))
    return result
