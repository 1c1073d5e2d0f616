"""An async client for the WebSocket protocol (used by `talkstream client`, the tests and `talkstream bench serve`).

`stream_audio` sends audio in 20 ms frames (in real time by default), receives concurrently, and returns what came
back: PCM, tokens, events, and per-frame round-trip latency measured with the echoed timestamps. Not in real time,
its hello says so (`realtime: false`): the server then reads no faster than it processes, and drops nothing.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import websockets
from websockets.asyncio.client import connect

from talkstream.protocol import (
    KIND_PCM16,
    KIND_TOKENS,
    PROTOCOL_VERSION,
    parse_binary,
    pcm_frame,
    token_frame,
)


class ServerError(Exception):
    """The server sent a fatal error event or refused the session."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code


@dataclass
class StreamResult:
    ready: dict
    pcm: np.ndarray  # float32 at the session's sample rate
    tokens: np.ndarray  # int64 [K, F]
    events: list[dict] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)  # per returned audio frame: now - echoed timestamp
    first_audio_ms: float | None = None  # from the first frame sent to the first audio back
    summary: dict | None = None
    sent_s: float = 0.0  # seconds of input sent before the stream ended
    elapsed_s: float = 0.0  # from the first frame sent to the summary (or the stream's end)
    realtime: bool = True  # sent in real time; else the hello asked the server to read no faster than it processes
    closed: str | None = None  # why the server ended the stream before its summary: a fatal error, or the close

    def errors(self) -> list[dict]:
        return [e for e in self.events if e.get("type") == "error"]

    def final(self, kind: str) -> list[str]:
        """The final text of each turn for `transcript` or `reply_text` events (chat mode)."""
        return [e["text"] for e in self.events if e.get("type") == kind and e.get("final")]


def _percentiles(values: list[float]) -> str:
    if not values:
        return "n/a"
    p50, p95 = np.percentile(values, [50, 95])
    return f"p50 {p50:.1f} ms, p95 {p95:.1f} ms ({len(values)} frames)"


def report(r: StreamResult, sample_rate: int, input_s: float) -> list[str]:
    """What `talkstream client` prints: what came back, what was lost or cut, and in chat what was said."""
    lines = [f"sent {r.sent_s:.2f} of {input_s:.2f} s; {r.pcm.size / sample_rate:.2f} s of audio back; "
             f"took {r.elapsed_s:.2f} s"]
    if not r.realtime and r.ready.get("realtime") is not False:
        lines.append("the server took the input as live (an older server): what it could not keep up with was dropped")
    first = f"{r.first_audio_ms:.0f} ms after the first frame sent" if r.first_audio_ms is not None else "n/a"
    lines.append(f"first audio back: {first}")
    if r.ready.get("mode") == "chat":
        latency = [e["first_packet_ms"] for e in r.events if e.get("type") == "latency"]
        heard, said = r.final("transcript"), r.final("reply_text")
        answered = sum(e.get("type") == "reply" and e.get("state") == "start" for e in r.events)
        for i in range(max(len(heard), len(said), len(latency), answered)):
            lines.append(f"turn {i + 1} heard: {heard[i] if i < len(heard) else 'n/a'}")
            lines.append(f"turn {i + 1} reply: {said[i] if i < len(said) else 'n/a'}")
            ms = f"{latency[i]:.0f} ms" if i < len(latency) else "n/a"
            lines.append(f"turn {i + 1} reply latency (end of turn to first audio): {ms}")
        if not answered:
            lines.append("no reply came (a turn ends after 480 ms of silence or with the input; --tail waits longer)")
    else:
        lines.append(f"frame round trip: {_percentiles(r.latencies_ms)}")
    s = r.summary or {}
    if r.summary is not None:
        lost = [f"{s.get('drops', 0)} items dropped by the server (it fell behind)" if s.get("drops") else "",
                f"{s.get('interruptions', 0)} replies interrupted" if s.get("interruptions") else ""]
        lines.append("lost: " + ("; ".join(x for x in lost if x) or "nothing"))
    for e in r.errors():
        lines.append(f"error {e['code']}: {e['message']}")
    return lines


def _now_ms(t0: float) -> int:
    return int((time.monotonic() - t0) * 1000) & 0xFFFFFFFF


async def stream_audio(
    url: str,
    audio: np.ndarray | None = None,
    sample_rate: int = 24_000,
    mode: str = "codec",
    codebooks: int = 8,
    output: tuple[str, ...] = ("pcm",),
    tokens: np.ndarray | None = None,
    realtime: bool = True,
    frame_ms: float = 20.0,
    token: str | None = None,
    tail_s: float = 1.0,
    extra_hello: dict[str, Any] | None = None,
    open_timeout: float = 10.0,
) -> StreamResult:
    """Stream `audio` (float32 [T] at `sample_rate`) or `tokens` (int [K, F]) and collect the answer.

    tail_s: after the last frame, how long to keep listening (chat replies come after the turn ends) before
    sending `end` and waiting for the summary. Codec mode not in real time waits for none: `end` drains it all.
    """
    t0 = time.monotonic() - 1.0  # timestamps start at 1000 ms: 0 means "no timestamp" (chat replies)
    hello = {
        "type": "hello",
        "version": PROTOCOL_VERSION,
        "mode": mode,
        "sample_rate": sample_rate,
        "codebooks": codebooks,
        "output": list(output),
        "input": "tokens" if tokens is not None else "pcm",
        **({"token": token} if token else {}),
        **({} if realtime else {"realtime": False}),
        **(extra_hello or {}),
    }
    pcm_out: list[np.ndarray] = []
    tok_out: list[np.ndarray] = []
    result = StreamResult(ready={}, pcm=np.zeros(0, np.float32), tokens=np.zeros((codebooks, 0), np.int64),
                          realtime=hello.get("realtime", True))
    first_sent: list[float] = []

    async with connect(url, max_size=2**22, open_timeout=open_timeout, compression=None) as ws:
        await ws.send(json.dumps(hello))
        while True:
            msg = json.loads(await ws.recv())
            result.events.append(msg)
            if msg["type"] == "ready":
                result.ready = msg
                break
            if msg["type"] == "error":  # before ready, any error means the hello was refused
                raise ServerError(msg["code"], msg["message"])

        async def receive() -> None:
            async for data in ws:
                if isinstance(data, str):
                    msg = json.loads(data)
                    result.events.append(msg)
                    if msg["type"] == "summary":
                        result.summary = msg
                        return
                    if msg["type"] == "error" and msg.get("fatal"):  # mid-stream: the stream ends early, and why
                        result.closed = f"{msg['code']}: {msg['message']}"
                        return
                    continue
                frame = parse_binary(data)
                if frame.kind == KIND_PCM16:
                    pcm_out.append(frame.pcm())
                    if frame.timestamp:
                        result.latencies_ms.append((_now_ms(t0) - frame.timestamp) & 0xFFFFFFFF)
                    if result.first_audio_ms is None and first_sent:
                        result.first_audio_ms = (time.monotonic() - first_sent[0]) * 1000
                elif frame.kind == KIND_TOKENS:
                    tok_out.append(frame.tokens())

        receiver = asyncio.create_task(receive())
        try:
            if tokens is not None:
                per = max(1, round(frame_ms / 1000 * result.ready["codec"]["frame_rate"]))
                start = time.monotonic()
                for i, j in enumerate(range(0, tokens.shape[1], per)):
                    if not first_sent:
                        first_sent.append(time.monotonic())
                    await ws.send(token_frame(tokens[:, j : j + per], i, _now_ms(t0)))
                    if realtime:
                        await _sleep_until(start + (i + 1) * per / result.ready["codec"]["frame_rate"])
            elif audio is not None:
                n = round(sample_rate * frame_ms / 1000)
                start = time.monotonic()
                for i, j in enumerate(range(0, audio.size, n)):
                    if not first_sent:
                        first_sent.append(time.monotonic())
                    await ws.send(pcm_frame(audio[j : j + n], i, _now_ms(t0)))
                    result.sent_s = min(j + n, audio.size) / sample_rate
                    if realtime:
                        await _sleep_until(start + (i + 1) * frame_ms / 1000)
                    if receiver.done():
                        break
            if not receiver.done() and (realtime or mode != "codec"):
                await asyncio.wait([receiver], timeout=tail_s)
            if not receiver.done():
                await ws.send(json.dumps({"type": "end"}))
                # A chat answer plays in real time before the summary comes: allow for one as long as the input.
                seconds = (audio.size / sample_rate) if audio is not None else 0.0
                await asyncio.wait_for(receiver, timeout=30 + seconds)
            receiver.result()  # re-raise a fatal server error
        except websockets.ConnectionClosed:
            pass
        finally:
            receiver.cancel()
            result.elapsed_s = time.monotonic() - first_sent[0] if first_sent else 0.0
        if result.summary is None and result.closed is None and ws.close_code is not None:
            result.closed = f"{ws.close_code} {ws.close_reason}".strip()
    result.pcm = np.concatenate(pcm_out) if pcm_out else result.pcm
    result.tokens = np.concatenate(tok_out, axis=1) if tok_out else result.tokens
    return result


async def _sleep_until(t: float) -> None:
    delay = t - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)
