"""`talkstream bench phone`: questions asked over a phone line, as a telephony platform delivers them.

`PhoneCaller` does what Twilio does on a call (a scripted platform, loopback only): it opens the media stream
(`/twilio`), sends `start` (G.711 mu-law, 8 kHz), the caller's audio as 20 ms `media` messages in real time and keys
as `dtmf`; it plays what comes back (its arrival times kept), echoes each `mark` once the audio before it has played,
and drops what it holds at `clear`. The tests place their calls with it too.

The benchmark speaks held-out dialogue questions in the eval voices (as `bench model` does), carries them at 8 kHz
over G.711 into `talkstream serve` in its own process, one call per question, and reports per question the reply as
the independent recogniser hears it over the line (answered right or not) and the voice-to-voice latency: the end of
the caller's speech to the first reply audio reaching the platform (VAD end of turn, the answer, the 8 kHz line).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json

import numpy as np

from talkstream.protocol.telephony import FRAME_SAMPLES, RATE, MediaStream

SID = "MZ00000000000000000000000000000000"


class PhoneCaller:
    """One scripted call. `telnyx`: Telnyx's field names (`stream_id`, `media_format`, PCMU)."""

    def __init__(self, url: str, params: dict[str, str] | None = None, telnyx: bool = False):
        self.url, self.params, self.telnyx = url, dict(params or {}), telnyx
        self.sid_field = "stream_id" if telnyx else "streamSid"
        self.stream = MediaStream()  # our side's G.711, as the call's format says
        self.received: list[tuple[float, bytes]] = []  # (arrival s since the call began, G.711 bytes) per media
        self.clears: list[float] = []
        self.marks: list[tuple[float, str]] = []
        self.other: list[dict] = []
        self.t0 = 0.0

    def start_message(self) -> str:
        if self.telnyx:
            return json.dumps({"event": "start", "sequence_number": "1", "stream_id": SID,
                               "start": {"call_control_id": "v3:bench", "media_format": {
                                   "encoding": "PCMU", "sample_rate": RATE, "channels": 1}}})
        return json.dumps({"event": "start", "sequenceNumber": "1", "streamSid": SID,
                           "start": {"streamSid": SID, "callSid": "CAbench", "tracks": ["inbound"],
                                     "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": RATE, "channels": 1},
                                     "customParameters": self.params}})

    def _msg(self, kind: str, **body) -> str:
        return json.dumps({"event": kind, self.sid_field: SID, **body})

    async def call(self, pcm: np.ndarray, keys: dict[float, str] | None = None, tail_s: float = 6.0,
                   extra: dict[float, str] | None = None) -> PhoneCaller:
        """pcm: the caller's speech, float32 at 8 kHz, then `tail_s` of silence (a live line never stops sending);
        keys: {seconds into the call: key}; extra: {seconds: a raw text message to send}."""
        import websockets
        from websockets.asyncio.client import connect

        pcm = np.concatenate([pcm, np.zeros(int(tail_s * RATE), np.float32)])
        async with connect(self.url) as ws:
            await ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
            await ws.send(self.start_message())
            self.stream.receive(self.start_message())
            reader = asyncio.create_task(self._read(ws))
            self.t0 = asyncio.get_running_loop().time()
            with contextlib.suppress(websockets.ConnectionClosed):  # the server may end the call (a refusal)
                await self._speak(ws, pcm, dict(keys or {}), dict(extra or {}))
            await asyncio.wait_for(reader, 10)  # the server closes the stream after stop
        return self

    async def _speak(self, ws, pcm: np.ndarray, keys: dict, extra: dict) -> None:
        loop = asyncio.get_running_loop()
        for i in range(0, pcm.size - FRAME_SAMPLES + 1, FRAME_SAMPLES):
            t = i / RATE
            await asyncio.sleep(max(0.0, self.t0 + t - loop.time()))
            for at in [a for a in keys if a <= t]:
                await ws.send(self._msg("dtmf", dtmf={"track": "inbound_track", "digit": keys.pop(at)}))
            for at in [a for a in extra if a <= t]:
                await ws.send(extra.pop(at))
            payload = base64.b64encode(self.stream.encode(pcm[i : i + FRAME_SAMPLES])).decode()
            await ws.send(self._msg("media", media={"track": "inbound", "chunk": str(i // FRAME_SAMPLES + 1),
                                                    "timestamp": str(int(t * 1000)), "payload": payload}))
        await ws.send(self._msg("stop", stop={"callSid": "CAbench"}))

    async def _read(self, ws) -> None:
        import websockets

        loop = asyncio.get_running_loop()
        playhead = 0.0  # when what we were sent ends playing
        pending: set[asyncio.Task] = set()

        async def played(name: str, at: float) -> None:
            await asyncio.sleep(max(0.0, at - (loop.time() - self.t0)))
            with contextlib.suppress(websockets.ConnectionClosed):
                await ws.send(self._msg("mark", mark={"name": name}))

        try:
            async for text in ws:
                now = loop.time() - self.t0
                msg = json.loads(text)
                if msg.get(self.sid_field) != SID:
                    raise AssertionError(f"a message for another stream: {msg}")
                if msg["event"] == "media":
                    data = base64.b64decode(msg["media"]["payload"])
                    self.received.append((now, data))
                    playhead = max(playhead, now) + len(data) / RATE
                elif msg["event"] == "mark":
                    self.marks.append((now, msg["mark"]["name"]))
                    task = loop.create_task(played(msg["mark"]["name"], playhead))
                    pending.add(task)
                    task.add_done_callback(pending.discard)
                elif msg["event"] == "clear":
                    self.clears.append(now)
                    playhead = now
                else:
                    self.other.append(msg)
        except websockets.ConnectionClosed:
            pass
        finally:
            for task in pending:
                task.cancel()

    def reply_pcm(self) -> np.ndarray:
        """Everything that came down the line, float32 at 8 kHz, back to back."""
        return self.stream.decode(b"".join(d for _, d in self.received)) if self.received else np.zeros(0, np.float32)


def to_line(pcm_24k: np.ndarray) -> np.ndarray:
    """24 kHz speech as a phone line carries it: 8 kHz (G.711 is applied by the caller)."""
    import soxr

    return soxr.resample(pcm_24k, 24_000, RATE).astype(np.float32)


def run_phone_bench(questions: int = 8, thinker: str = "builtin", answer_s: float = 7.0) -> dict:
    """One call per held-out question against `talkstream serve` in its own process; the replies heard by the
    recogniser at 8 kHz."""
    from talkstream.bench.listener import normalise_words, transcribe, wer
    from talkstream.bench.model import speak_held_out
    from talkstream.bench.serve import ServerProcess
    from talkstream.errors import UserError
    from talkstream.models.dialogue import dialogues

    if questions < 1:
        raise UserError(f"--questions must be at least 1 (got {questions})")
    print("speaking the held-out questions ...", flush=True)
    items = speak_held_out([{"text": q, "answer": a} for q, a in dialogues(questions, "eval", seed=7)])
    print(f"starting a server with the {thinker} answerer ...", flush=True)
    server = ServerProcess(1, 4, [], thinker=thinker)
    rows = []
    try:
        server.wait_ready()
        for i, q in enumerate(items):
            line = to_line(q["pcm"])
            speech_end = (line.size - int(0.2 * RATE)) / RATE  # the clip ends with 0.2 s of silence
            caller = asyncio.run(PhoneCaller(f"{server.url}/twilio").call(line, tail_s=answer_s))
            after = [t for t, _ in caller.received if t > speech_end]
            heard = transcribe(caller.reply_pcm(), RATE) if caller.received else ""
            row = {"question": q["text"], "voice": q["voice"], "answer": q["answer"], "heard": heard,
                   "right": normalise_words(heard) == normalise_words(q["answer"]),
                   "voice_to_voice_ms": round((after[0] - speech_end) * 1000, 1) if after else None,
                   "reply_s": round(len(caller.received) * FRAME_SAMPLES / RATE, 2), "marks": len(caller.marks)}
            rows.append(row)
            print(f"{i + 1}/{len(items)} {row['voice_to_voice_ms']} ms  {q['text']!r} -> {heard!r}", flush=True)
    finally:
        server.stop()
    v2v = [r["voice_to_voice_ms"] for r in rows if r["voice_to_voice_ms"] is not None]
    return {
        "questions": len(rows),
        "thinker": thinker,
        "answered": len(v2v),
        "right": sum(r["right"] for r in rows),  # the recogniser heard the expected answer word for word
        "wer": wer([r["answer"] for r in rows], [r["heard"] for r in rows]),
        "voice_to_voice_ms_p50": float(np.percentile(v2v, 50)) if v2v else None,
        "voice_to_voice_ms_p95": float(np.percentile(v2v, 95)) if v2v else None,
        "rows": rows,
    }
