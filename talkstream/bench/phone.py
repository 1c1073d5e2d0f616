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


FILLER = frozenset("the a an is it so that".split())  # words a reply may lose without losing its answer


def answer_words(question: str, answer: str) -> list[str]:
    """What a reply says that the question did not: its words less the question's (each once) and a few fillers
    ("the day after sunday is monday" to "what day comes after sunday": ["monday"]; "seven times eleven is seventy
    seven": ["seventy", "seven"]). A reply that only repeats the question ("repeat
    after me ...") keeps all its words but the fillers."""
    from collections import Counter

    from talkstream.bench.listener import normalise_words

    asked = Counter(normalise_words(question).split())  # each word the question said takes one of the reply's
    said, new = [w for w in normalise_words(answer).split() if w not in FILLER], []
    for w in said:
        if asked[w]:
            asked[w] -= 1
        else:
            new.append(w)
    return new or said


def answer_heard(question: str, answer: str, heard: str) -> bool:
    """The recogniser heard the answer: every word of `answer_words`, in order, among the words it heard."""
    from talkstream.bench.listener import normalise_words

    words = iter(normalise_words(heard).split())
    return all(any(w == h for h in words) for w in answer_words(question, answer))


def _summary(rows: list[dict]) -> dict:
    v2v = [r["voice_to_voice_ms"] for r in rows if r["voice_to_voice_ms"] is not None]
    return {
        "answered": len(v2v),
        "right": sum(r["right"] for r in rows),  # the recogniser heard the expected reply word for word
        "answer_heard": sum(r["answer_heard"] for r in rows),  # ... heard what the reply answers (answer_words)
        "voice_to_voice_ms_p50": round(float(np.percentile(v2v, 50)), 1) if v2v else None,
        "voice_to_voice_ms_p95": round(float(np.percentile(v2v, 95)), 1) if v2v else None,
    }


def run_phone_bench(questions: int = 8, thinker: str = "builtin", answer_s: float = 7.0,
                    websocket: bool = True) -> dict:
    """One call per held-out question against `talkstream serve` in its own process; the replies heard by the
    recogniser at 8 kHz. `websocket`: each question also asked over the WebSocket path (24 kHz PCM, real time) on
    the same server, one after the other, for the latency and the answers side by side."""
    from talkstream.bench.listener import normalise_words, transcribe, wer
    from talkstream.bench.metrics import trim_24k
    from talkstream.bench.model import speak_held_out
    from talkstream.bench.serve import ServerProcess
    from talkstream.client import stream_audio
    from talkstream.errors import UserError
    from talkstream.models.dialogue import dialogues

    if questions < 1:
        raise UserError(f"--questions must be at least 1 (got {questions})")
    print("speaking the held-out questions ...", flush=True)
    items = speak_held_out([{"text": q, "answer": a} for q, a in dialogues(questions, "eval", seed=7)])
    print(f"starting a server with the {thinker} answerer ...", flush=True)
    server = ServerProcess(1, 4, [], thinker=thinker)
    rows, ws_rows = [], []

    def row_of(q: dict, heard: str, v2v_s: float | None, **more) -> dict:
        return {"question": q["text"], "voice": q["voice"], "answer": q["answer"], "heard": heard,
                "right": normalise_words(heard) == normalise_words(q["answer"]),
                "answer_heard": answer_heard(q["text"], q["answer"], heard),
                "voice_to_voice_ms": round(v2v_s * 1000, 1) if v2v_s is not None else None, **more}

    try:
        server.wait_ready()
        for i, q in enumerate(items):
            line = to_line(q["pcm"])
            speech_end = trim_24k(q["pcm"])  # where the speech itself ends (a voice's clip has its own silence)
            caller = asyncio.run(PhoneCaller(f"{server.url}/twilio").call(line, tail_s=answer_s))
            after = [t for t, _ in caller.received if t > speech_end]
            heard = transcribe(caller.reply_pcm(), RATE) if caller.received else ""
            row = row_of(q, heard, after[0] - speech_end if after else None,
                         reply_s=round(len(caller.received) * FRAME_SAMPLES / RATE, 2), marks=len(caller.marks))
            rows.append(row)
            print(f"{i + 1}/{len(items)} phone {row['voice_to_voice_ms']} ms  {q['text']!r} -> {heard!r}", flush=True)
            if websocket:
                rate = 24_000
                pcm = np.concatenate([q["pcm"], np.zeros(int(answer_s * rate), np.float32)])
                r = asyncio.run(stream_audio(server.url, pcm, rate, mode="chat", output=("pcm",), tail_s=3.0))
                heard = transcribe(r.pcm, rate) if r.pcm.size else ""
                first = r.first_audio_ms / 1000 - speech_end if r.first_audio_ms is not None else None
                ws_rows.append(row_of(q, heard, first))
                print(f"{i + 1}/{len(items)} websocket {ws_rows[-1]['voice_to_voice_ms']} ms  -> {heard!r}", flush=True)
    finally:
        server.stop()
    result = {
        "questions": len(rows),
        "thinker": thinker,
        **_summary(rows),
        "wer": wer([r["answer"] for r in rows], [r["heard"] for r in rows]),
        "rows": rows,
    }
    if websocket:
        result["websocket"] = {**_summary(ws_rows), "wer": wer([r["answer"] for r in ws_rows],
                                                               [r["heard"] for r in ws_rows]), "rows": ws_rows}
        a, b = result["voice_to_voice_ms_p95"], result["websocket"]["voice_to_voice_ms_p95"]
        result["p95_phone_minus_websocket_ms"] = round(a - b, 1) if a is not None and b is not None else None
    return result
