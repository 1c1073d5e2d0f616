"""`talkstream bench webrtc`: N aiortc clients in this process against `talkstream serve` in its own, mouth-to-ear.

Each client sends a marked signal on its microphone track: silence with a burst of speech (a slice of the bundled
sample) every `period_s`. The time a burst's first sample leaves the client's track (handed to the Opus encoder) and
the time its echo's first sample comes out of the client's receiving track (after aiortc's jitter buffer) give one
mouth-to-ear figure: Opus both ways, the network (loopback), the server's resampling, VAD and codec, and both
paced tracks. Jitter is the standard deviation of those figures within a session. The budget is p95 < 150 ms
(issue 5), for codec echo at 8 codebooks. The server runs as its own process(es) (`--workers 1 2`: servers of each
worker count side by side, every level on each in turn), so its CPU is measured apart from the clients'; they
still share this machine's cores.

`rtc_session` is also the aiortc client the tests use.
"""

from __future__ import annotations

import asyncio
import fractions
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import aiohttp
import av
import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from talkstream.bench.serve import ServerProcess
from talkstream.errors import UserError
from talkstream.services.webrtc import mono_s16, set_jitter_frames

RATE = 48_000
FRAME = 960  # 20 ms
BUDGET_MS = 150.0


class SignalTrack(MediaStreamTrack):
    """Plays a float signal at 48 kHz in 20 ms frames against the clock (silence after it); notes when each frame
    left, so the send time of any sample is known."""

    kind = "audio"

    def __init__(self, signal: np.ndarray):
        super().__init__()
        self.signal = np.round(np.clip(signal, -1, 32767 / 32768) * 32768).astype(np.int16)
        self.sent_at: list[float] = []
        self._start: float | None = None

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        i = len(self.sent_at)
        if self._start is None:
            self._start = time.monotonic()
        else:
            await asyncio.sleep(max(0.0, self._start + i * FRAME / RATE - time.monotonic()))
        x = np.zeros(FRAME, np.int16)
        chunk = self.signal[i * FRAME : (i + 1) * FRAME]
        x[: chunk.size] = chunk
        frame = av.AudioFrame.from_ndarray(x[None], format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = RATE, i * FRAME, fractions.Fraction(1, RATE)
        self.sent_at.append(time.monotonic())
        return frame


@dataclass
class RTCResult:
    answer: dict
    pcm: np.ndarray  # float32 at 48 kHz, mono: everything the server's track sent
    frame_times: np.ndarray  # monotonic time each received 20 ms frame came out of the receiving track
    sent_at: np.ndarray  # monotonic time each sent 20 ms frame left the sending track
    events: list[dict] = field(default_factory=list)

    def of_type(self, kind: str) -> list[dict]:
        return [e for e in self.events if e.get("type") == kind]


async def post_offer(http_url: str, body: dict) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as http, http.post(f"{http_url}/offer", json=body) as r:
        return r.status, await r.json(content_type=None)


async def rtc_session(
    http_url: str,
    signal: np.ndarray,
    seconds: float,
    mode: str = "codec",
    codebooks: int = 8,
    messages: Sequence[bytes | str] = (),
    jitter_frames: int | None = None,
    until: Callable[[list[dict]], bool] | None = None,
) -> RTCResult:
    """One aiortc client: offer with a microphone track and a data channel, play `signal`, record for `seconds`,
    send `messages` on the data channel once it opens, then close. `jitter_frames`: packets the receiving jitter
    buffer holds before playout (None: aiortc's default, 4 = 80 ms). `until`: stop early once it is true of the
    events received."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))  # host candidates only: nothing outside is contacted
    source = SignalTrack(signal)
    pc.addTrack(source)
    channel = pc.createDataChannel("events")
    events: list[dict] = []
    chunks: list[np.ndarray] = []
    times: list[float] = []
    tasks: list[asyncio.Task] = []
    resampler = av.AudioResampler(format="s16", layout="mono", rate=RATE)

    channel.on("message", lambda m: events.append(json.loads(m)) if isinstance(m, str) else None)

    @channel.on("open")
    def _open() -> None:
        for m in messages:
            channel.send(m)

    async def receive(track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            now = time.monotonic()
            for pcm in mono_s16(cast(av.AudioFrame, frame), resampler):  # an audio track's frames
                chunks.append(pcm.astype(np.float32) / 32768)
                times.append(now)

    pc.on("track", lambda track: tasks.append(asyncio.ensure_future(receive(track))))
    try:
        await pc.setLocalDescription(await pc.createOffer())
        body = {"sdp": pc.localDescription.sdp, "type": "offer", "mode": mode, "codebooks": codebooks}
        status, answer = await post_offer(http_url, body)
        if status != 200:
            raise RuntimeError(f"offer refused ({status}): {answer}")
        await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))
        if jitter_frames is not None:
            for t in pc.getTransceivers():
                set_jitter_frames(t.receiver, jitter_frames)
        end = time.monotonic() + seconds
        while time.monotonic() < end and not (until is not None and until(events)):
            await asyncio.sleep(0.05)
    finally:
        await pc.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    pcm = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    return RTCResult(answer, pcm, np.array(times), np.array(source.sent_at), events)


def marked_signal(speech48: np.ndarray, seconds: float, period_s: float = 0.5, burst_s: float = 0.1):
    """Silence with a speech burst every `period_s`; returns the signal and the burst onsets (samples)."""
    start = int(np.argmax(np.abs(speech48) > 0.2 * np.abs(speech48).max()))  # a loud stretch: a clear onset
    burst = speech48[start : start + int(burst_s * RATE)]
    x = np.zeros(int(seconds * RATE), np.float32)
    onsets = np.arange(int(0.3 * RATE), x.size - int(period_s * RATE), int(period_s * RATE))
    for o in onsets:
        x[o : o + burst.size] = burst
    return x, onsets


def onset_latencies_ms(r: RTCResult, onsets: np.ndarray, period_s: float) -> np.ndarray:
    """For each sent burst, the first echoed 5 ms block above a threshold after it: its arrival minus its send time."""
    if not r.pcm.size or not r.sent_at.size:
        return np.zeros(0)
    block = RATE // 200
    n = r.pcm.size // block
    level = np.sqrt((r.pcm[: n * block].reshape(n, block) ** 2).mean(1))
    loud = np.flatnonzero(level > max(0.1 * level.max(), 1e-3))
    # Received sample s came out with frame s // FRAME; the sent sample o left with frame o // FRAME.
    recv_time = r.frame_times[np.minimum(loud * block // FRAME, r.frame_times.size - 1)] + (loud * block % FRAME) / RATE
    out = []
    for o in onsets:
        if o // FRAME >= r.sent_at.size:
            break
        t_sent = r.sent_at[o // FRAME] + (o % FRAME) / RATE
        after = recv_time[(recv_time > t_sent) & (recv_time < t_sent + period_s)]
        if after.size:
            out.append((after[0] - t_sent) * 1000)
    return np.array(out)


async def _run_level(
    server: ServerProcess, sessions: int, seconds: float, speech48: np.ndarray, period_s: float, jitter_frames: int
) -> dict:
    http_url = server.http_url
    assert http_url is not None, "the server was started without HTTP"
    signal, onsets = marked_signal(speech48, seconds, period_s)
    t0, cpu0, server0 = time.monotonic(), time.process_time(), server.cpu_s()

    async def one(i: int) -> RTCResult:
        await asyncio.sleep(0.02 * i / max(sessions, 1))  # spread the 20 ms phases like independent callers
        return await rtc_session(http_url, signal, seconds + 0.5, jitter_frames=jitter_frames)

    results = await asyncio.gather(*(one(i) for i in range(sessions)), return_exceptions=True)
    wall = time.monotonic() - t0
    cpu, server_cpu = (time.process_time() - cpu0) / wall, (server.cpu_s() - server0) / wall
    ok = [r for r in results if isinstance(r, RTCResult)]
    per = [onset_latencies_ms(r, onsets, period_s) for r in ok]
    lat = np.concatenate(per) if per else np.zeros(0)
    expected = len(onsets) * sessions
    latency_events = [r.of_type("latency")[-1] for r in ok if r.of_type("latency")]
    server_share = [e["server_ms_p50"] for e in latency_events]
    workers = {e.get("worker") for r in ok for e in r.of_type("ready")}
    row: dict[str, Any] = {
        "workers": server.workers,
        "step_interval_ms": server.step_interval_ms,
        "sessions": sessions,
        "failed_sessions": len(results) - len(ok),
        "workers_used": len(workers),
        "bursts_sent": int(expected),
        "bursts_back": int(lat.size),
        "mouth_to_ear_ms_p50": float(np.percentile(lat, 50)) if lat.size else None,
        "mouth_to_ear_ms_p95": float(np.percentile(lat, 95)) if lat.size else None,
        "mouth_to_ear_ms_max": float(lat.max()) if lat.size else None,
        "jitter_ms": float(np.mean([p.std() for p in per if p.size > 1])) if any(p.size > 1 for p in per) else None,
        "server_share_ms_p50": float(np.median(server_share)) if server_share else None,  # arrival -> leaving
        "per_session_p95_ms": [round(float(np.percentile(p, 95)), 1) if p.size else None for p in per],
        "server_cpu_cores": server_cpu,  # the server's processes (supervisor and workers)
        "client_cpu_cores": cpu,  # the aiortc clients, in this process
    }
    # Echoes later than the burst period cannot be told apart (an echo would be matched to a later burst): when
    # fewer than 90% of the bursts came back within it, the server is overloaded and no latency figure stands.
    row["overloaded"] = bool(lat.size < 0.9 * expected)
    if row["overloaded"]:
        for k in ("mouth_to_ear_ms_p50", "mouth_to_ear_ms_p95", "mouth_to_ear_ms_max", "jitter_ms"):
            row[k] = None
    row["passes"] = bool(
        not row["failed_sessions"] and not row["overloaded"] and row["mouth_to_ear_ms_p95"] < BUDGET_MS
    )
    return row


async def _bench(levels: list[int], seconds: float, weights: str | None, frames_per_step: int, backend: str,
                 jitter_frames: int, variants: list[tuple[int, float]]) -> list[dict]:
    from talkstream.audio_io import load_audio
    from talkstream.data import SAMPLE_WAV
    from talkstream.services.webrtc import allow_loopback_candidates

    allow_loopback_candidates()  # the clients too: a machine with loopback alone can still reach itself
    speech48 = load_audio(SAMPLE_WAV, RATE)
    options = ["--frames-per-step", str(frames_per_step), "--backend", backend, "--thinker", "echo"]
    options += ["--weights", weights] if weights else []
    servers: list[ServerProcess] = []
    rows = []
    try:
        for w, interval in variants:  # one at a time: warm-ups side by side would only slow each other down
            print(f"starting a server with {w} worker(s), step interval {interval:g} ms ...", flush=True)
            servers.append(ServerProcess(w, max(levels) + 4, options, http=True, step_interval_ms=interval))
            await asyncio.to_thread(servers[-1].wait_ready)
        for n in levels:
            for server in servers:
                print(f"{n} sessions for {seconds:.0f} s on {server.workers} worker(s), step interval "
                      f"{server.step_interval_ms:g} ms ...", flush=True)
                rows.append(await _run_level(server, n, seconds, speech48, 0.5, jitter_frames))
                await asyncio.sleep(1.0)  # let the closed peers go before the next level
    finally:
        for server in servers:
            server.stop()
    return rows


def run_webrtc_bench(
    levels: list[int],
    seconds: float,
    weights: str | None = None,
    frames_per_step: int = 2,
    backend: str = "onnx",
    client_jitter_frames: int = 4,
    workers: list[int] | None = None,
    step_intervals: list[float] | None = None,
) -> dict:
    """`client_jitter_frames`: packets each client's jitter buffer holds before playout (aiortc's default: 4, 80 ms;
    a browser adapts its own to the network, 20-60 ms on a quiet loopback). `workers`: the server's worker counts,
    each its own server process(es), measured side by side (every level on each in turn), as are `step_intervals`
    (the server's --step-interval-ms; default: the server's own)."""
    from talkstream.services.app import ServerConfig

    workers = workers or [1]
    intervals = step_intervals or [ServerConfig.step_interval_ms]
    if any(w < 1 for w in workers) or any(n < 1 for n in levels):
        raise UserError(f"--workers and --sessions must be at least 1 (got {workers}, {levels})")
    if any(i < 0 for i in intervals):
        raise UserError(f"--step-interval-ms must be at least 0 (got {intervals})")
    variants = [(w, i) for w in workers for i in intervals]
    rows = asyncio.run(_bench(levels, seconds, weights, frames_per_step, backend, client_jitter_frames, variants))
    passing = [r for r in rows if r["passes"]]
    result: dict[str, Any] = {
        "budget_ms": BUDGET_MS,
        "mode": "codec, 8 codebooks",
        "seconds": seconds,
        "frames_per_step": frames_per_step,
        "backend": backend,
        "client_jitter_frames": client_jitter_frames,
        "cpu_count": os.cpu_count(),
        "workers": workers,
        "step_intervals_ms": intervals,
        "rows": rows,
        "max_sessions_passing": max((r["sessions"] for r in passing), default=0),
        "by_workers": [
            {
                "workers": w,
                "step_interval_ms": i,
                "max_sessions_passing": max(
                    (r["sessions"] for r in rows if (r["workers"], r["step_interval_ms"]) == (w, i) and r["passes"]),
                    default=0,
                ),
            }
            for w, i in variants
        ],
    }

    def ms(v):
        return f"{v:>8.1f}" if v is not None else f"{'-':>8}"

    head = f"{'workers':>7}{'step ms':>8}{'sessions':>9}{'p50 ms':>8}{'p95 ms':>8}{'max ms':>8}{'jitter':>8}"
    head += f"{'server':>8}{'bursts':>10}{'failed':>8}{'srv cores':>10}{'cli cores':>10}  ok"
    print(head + "\n" + "-" * len(head))
    for r in rows:
        print(
            f"{r['workers']:>7}{r['step_interval_ms']:>8g}{r['sessions']:>9}{ms(r['mouth_to_ear_ms_p50'])}{ms(r['mouth_to_ear_ms_p95'])}"
            f"{ms(r['mouth_to_ear_ms_max'])}{ms(r['jitter_ms'])}{ms(r['server_share_ms_p50'])}"
            f"{r['bursts_back']:>5}/{r['bursts_sent']:<4}"
            f"{r['failed_sessions']:>8}{r['server_cpu_cores']:>10.2f}{r['client_cpu_cores']:>10.2f}"
            f"  {'yes' if r['passes'] else 'no'}"
        )
    print(
        f"server: its share of p50 (input arrival -> echo leaving its track). budget: mouth-to-ear p95 < "
        f"{BUDGET_MS:.0f} ms on loopback, codec echo. Largest passing: "
        + ", ".join(f"{b['max_sessions_passing']} sessions with {b['workers']} worker(s) at step interval "
                    f"{b['step_interval_ms']:g} ms" for b in result["by_workers"])
        + f" (the server in its own process(es), the clients in this one, {os.cpu_count()} cores)"
    )
    return result
