"""`talkstream bench turns`: turn-taking on held-out material, the turn heads side by side with silence alone.

Everything is spoken by the evaluation voices (data/voices.py EVAL_VOICES, never trained on) from sentences never
trained on (the Harvard sentences and turn_data's EVAL_REQUESTS), plus real LibriVox readings (Debian
pocketsphinx-testdata) where installed. Each stream goes through the server's own input stages (`VoiceActivity`
with and without `TurnTaking`), 20 ms at a time, so the figures are the server's decisions:
- pauses: a sentence with a 0.5-1.2 s pause inside it (cut at a quiet point of the whole sentence, or spoken in
  two parts): the share of turns ended at the pause (cut off);
- complete: a whole sentence then silence: from the end of speech to the end of the turn (the decision), ms;
- barge-in: a backchannel or an interruption over the reply: the share of backchannels the reply talks through, and
  of interruptions that stop it within 300 ms of their onset;
- with `--server`: end of speech to the first reply audio over WebSocket in real time with the built-in
  Thinker-Talker, both policies on one server (the hello's `turn_end`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from pathlib import Path
from typing import Any

import numpy as np

from talkstream.bench.metrics import trim_24k
from talkstream.data.sentences import HARVARD
from talkstream.data.voices import EVAL_VOICES, Voice, synthesize
from talkstream.errors import UserError
from talkstream.streaming.stages import AudioChunk, VoiceActivity
from talkstream.streaming.turn_taking import TurnTaking, TurnTakingConfig
from talkstream.streaming.vad import SileroVAD
from talkstream.training.turn_data import (
    EVAL_BACKCHANNELS,
    EVAL_INTERRUPTIONS,
    EVAL_REQUESTS,
    quiet_cut,
    trim,
)

RATE = 24_000
CHUNK = 480  # 20 ms
STOP_WITHIN_MS = 300.0


CACHE = Path.home() / ".cache" / "talkstream" / "bench_turns"


def _speak(voice: Voice, text: str) -> np.ndarray:
    """Speech at 24 kHz, leading and trailing silence off (kept in ~/.cache/talkstream: TTS is most of a run)."""
    import hashlib

    import soxr

    from talkstream.training.turn_data import RATE as R16

    key = CACHE / (hashlib.sha1(f"{voice.id}|{text}".encode()).hexdigest() + ".npy")
    if key.exists():
        return np.load(key)
    audio = synthesize(voice, text)
    t16 = trim(soxr.resample(audio, RATE, R16).astype(np.float32))
    out = soxr.resample(t16, R16, RATE).astype(np.float32) if t16.size else t16
    CACHE.mkdir(parents=True, exist_ok=True)
    np.save(key, out)
    return out


def _noise(n: int, level: float, rng: np.random.Generator) -> np.ndarray:
    return (rng.standard_normal(n) * level).astype(np.float32)


async def run_stream(stage: VoiceActivity, pcm: np.ndarray) -> list[tuple[float, str, float]]:
    """(stream time when raised, kind, probability) for every event the stage raises on `pcm`, 20 ms at a time."""
    stage.reset()
    out = []
    for i in range(0, pcm.size, CHUNK):
        chunk = AudioChunk(pcm[i : i + CHUNK], 0, time.monotonic())
        await stage.process(chunk)
        now = min(pcm.size, i + CHUNK) / RATE
        out += [(now, e.kind, e.probability) for e in chunk.vad_events]
    return out


def _materials(seed: int, limit: int | None) -> list[dict]:
    rng = random.Random(seed)
    texts = HARVARD + EVAL_REQUESTS
    rows: list[dict[str, Any]] = []
    for v in EVAL_VOICES:
        chosen = texts if limit is None else rng.sample(texts, min(limit, len(texts)))
        for text in chosen:
            rows.append({"voice": v.id, "text": text, "pcm": _speak(v, text)})
    return [r for r in rows if r["pcm"].size > RATE // 2]


def _real() -> list[dict]:
    from talkstream.audio_io import load_audio
    from talkstream.bench.codec import LIBRIVOX, real_rows

    rows = []
    for r in real_rows(LIBRIVOX):
        pcm = load_audio(r["path"], RATE)
        rows.append({"voice": "librivox", "text": r["text"], "pcm": pcm.astype(np.float32)})
    return rows


def pause_streams(rows: list[dict], seed: int) -> list[dict]:
    """Each sentence with one pause of 0.5-1.2 s at a quiet point inside it."""
    import soxr

    rng, g = random.Random(seed), np.random.default_rng(seed)
    out = []
    for r in rows:
        pcm16 = soxr.resample(r["pcm"], RATE, 16_000).astype(np.float32)
        cut16 = quiet_cut(pcm16, rng)
        if cut16 is None:
            continue
        cut = cut16 * 3 // 2
        pause = rng.uniform(0.5, 1.2)
        lead = np.zeros(int(0.5 * RATE), np.float32)
        gap = np.zeros(int(pause * RATE), np.float32)
        tail = np.zeros(int(2.5 * RATE), np.float32)
        x = np.concatenate([lead, r["pcm"][:cut], gap, r["pcm"][cut:], tail])
        x = x + _noise(x.size, 3e-4, g)
        end_s = (lead.size + cut + gap.size + (r["pcm"].size - cut)) / RATE
        out.append({**r, "pcm": x, "pause_s": pause, "pause_at_s": (lead.size + cut) / RATE, "end_s": end_s})
    return out


def complete_streams(rows: list[dict], seed: int) -> list[dict]:
    g = np.random.default_rng(seed)
    out = []
    for r in rows:
        lead, tail = np.zeros(int(0.5 * RATE), np.float32), np.zeros(int(2.5 * RATE), np.float32)
        x = np.concatenate([lead, r["pcm"], tail])
        out.append({**r, "pcm": x + _noise(x.size, 3e-4, g), "end_s": (lead.size + r["pcm"].size) / RATE})
    return out


def _stats(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    p50, p90 = np.percentile(values, [50, 90])
    return {"n": len(values), "p50": round(float(p50), 1), "p90": round(float(p90), 1)}


async def _policies(turns: TurnTaking, vad: SileroVAD) -> dict[str, VoiceActivity]:
    return {"silence": VoiceActivity(vad, RATE), "semantic": VoiceActivity(vad, RATE, turn_taking=turns)}


async def measure_pauses(stages: dict[str, VoiceActivity], streams: list[dict]) -> dict:
    result = {}
    for name, stage in stages.items():
        cut, held, rows = 0, 0, []
        for s in streams:
            events = await run_stream(stage, s["pcm"])
            early = [t for t, k, _ in events if k == "end" and t < s["end_s"] - 0.05]
            cut += bool(early)
            held += any(k == "hold" for _, k, _ in events)
            rows.append({"voice": s["voice"], "pause_s": round(s["pause_s"], 2), "cut_off": bool(early)})
        n = len(streams)
        result[name] = {"streams": n, "cut_off": cut, "cut_off_rate": round(cut / max(n, 1), 3),
                        "held_at_a_pause": held, "rows": rows}
    return result


async def measure_complete(stages: dict[str, VoiceActivity], streams: list[dict]) -> dict:
    result = {}
    for name, stage in stages.items():
        delays, missed, cut = [], 0, 0
        for s in streams:
            events = await run_stream(stage, s["pcm"])
            cut += any(k == "end" and t < s["end_s"] - 0.05 for t, k, _ in events)  # at a pause inside it
            ends = [t for t, k, _ in events if k == "end" and t >= s["end_s"] - 0.05]
            if ends:
                delays.append(1000 * (ends[0] - s["end_s"]))
            else:
                missed += 1
        result[name] = {"streams": len(streams), "no_end": missed, "cut_inside": cut,
                        "end_of_turn_ms": _stats(delays)}
    return result


async def measure_barge(stages: dict[str, VoiceActivity], rows: list[dict], seed: int) -> dict:
    """Each clip alone after 1 s of silence (the agent's reply is playing; what the stage says is what matters)."""
    g = np.random.default_rng(seed)
    result = {}
    for name, stage in stages.items():
        kept, stopped, late, n_bc, n_int, decide_ms = 0, 0, 0, 0, 0, []
        for r in rows:
            lead = np.zeros(RATE, np.float32)
            x = np.concatenate([lead, r["pcm"], np.zeros(int(1.5 * RATE), np.float32)])
            events = await run_stream(stage, x + _noise(x.size, 3e-4, g))
            onset = lead.size / RATE
            if name == "silence":  # every speech start interrupts
                verdicts = [(t, "interruption") for t, k, _ in events if k == "start"][:1]
            else:
                verdicts = [(t, k) for t, k, _ in events if k in ("backchannel", "interruption", "long")]
            first_stop = next((t for t, k in verdicts if k in ("interruption", "long")), None)
            if r["kind"] == "backchannel":
                n_bc += 1
                kept += first_stop is None
            else:
                n_int += 1
                if first_stop is not None:
                    decide_ms.append(1000 * (first_stop - onset))
                    stopped += first_stop - onset <= STOP_WITHIN_MS / 1000
                    late += first_stop - onset > STOP_WITHIN_MS / 1000
        result[name] = {
            "backchannels": n_bc, "backchannels_talked_through": kept,
            "backchannel_kept_rate": round(kept / max(n_bc, 1), 3),
            "interruptions": n_int, "stopped_within_300ms": stopped, "stopped_late": late,
            "interruption_stop_rate": round(stopped / max(n_int, 1), 3),
            "interruption_decision_ms": _stats(decide_ms),
        }
    return result


def _barge_rows() -> list[dict]:
    rows = []
    for v in EVAL_VOICES:
        for kind, texts in (("backchannel", EVAL_BACKCHANNELS), ("interruption", EVAL_INTERRUPTIONS)):
            for text in texts:
                pcm = _speak(v, text)
                if pcm.size:
                    rows.append({"voice": v.id, "text": text, "kind": kind, "pcm": pcm})
    return rows


async def measure_echo(stage: VoiceActivity, replies: list[np.ndarray], user: list[np.ndarray], seed: int) -> dict:
    """A client that plays each reply into its own microphone (20-200 ms later, -6 to -20 dB, a room's noise),
    heard raw and through the server's echo canceller (`EchoCanceller`, the reply as reference): the speech starts
    during the reply (each one a self-interruption with silence-only turns, a barge-in to judge with the heads).
    Half the replies also have the user break in 1 s into them (a held-out voice): heard within 300 ms or not."""
    from talkstream.streaming.echo_cancel import EchoCanceller, EchoConfig

    rng, g = random.Random(seed), np.random.default_rng(seed)
    canceller = EchoCanceller(EchoConfig(sample_rate=RATE))
    out: dict[str, Any] = {"replies": len(replies), "raw": {"self_starts": 0, "replies_self_interrupted": 0},
                           "cancelled": {"self_starts": 0, "replies_self_interrupted": 0}, "barge_ins": 0,
                           "barge_ins_heard_within_300ms": 0, "rows": []}
    for n, reply in enumerate(replies):
        delay, level = rng.uniform(0.02, 0.2), rng.uniform(-20, -6)
        d = int(delay * RATE)
        mic = np.zeros(reply.size + d + int(1.5 * RATE), np.float32)
        mic[d : d + reply.size] += reply * 10 ** (level / 20)
        mic += _noise(mic.size, 3e-4, g)
        barge_at = None
        if n % 2 == 1:
            u = user[n % len(user)]
            barge_at = d + RATE
            mic[barge_at : barge_at + u.size] += u[: mic.size - barge_at] * 0.5
        state, pieces = canceller.init_state(), []
        for i in range(0, mic.size, CHUNK):  # the reply queued as the server sends it: a chunk ahead of the mic
            state = canceller.play(reply[i : i + CHUNK], state)
            c, state = canceller.step(mic[i : i + CHUNK], state)
            pieces.append(c)
        clean = np.concatenate(pieces)
        row: dict[str, Any] = {"delay_ms": round(delay * 1000), "level_db": round(level, 1),
                               "barge_in": barge_at is not None}
        for name, x in (("raw", mic), ("cancelled", clean)):
            events = await run_stream(stage, x)
            before = barge_at / RATE if barge_at is not None else mic.size / RATE
            selfs = [t for t, k, _ in events if k == "start" and t < before]
            out[name]["self_starts"] += len(selfs)
            out[name]["replies_self_interrupted"] += bool(selfs)
            row[f"{name}_self_starts"] = len(selfs)
            if name == "cancelled" and barge_at is not None:
                out["barge_ins"] += 1
                heard = [t for t, k, _ in events if k in ("interruption", "start") and t >= before]
                ok = bool(heard) and heard[0] - before <= STOP_WITHIN_MS / 1000 + 0.1
                out["barge_ins_heard_within_300ms"] += ok
                row["barge_in_heard_ms"] = round(1000 * (heard[0] - before)) if heard else None
        out["rows"].append(row)
    return out


async def measure_server(questions: int, seed: int) -> dict:
    """End of speech to first reply audio over WebSocket, real time, both policies on one server (built-in
    Thinker-Talker), questions from the held-out dialogue split in the held-out voices."""
    from talkstream.bench.chat_load import held_out_questions
    from talkstream.bench.serve import ServerProcess
    from talkstream.client import stream_audio

    qs = held_out_questions(questions)
    result: dict = {}
    server = ServerProcess(1, 4, ["--turn-end", "semantic"], thinker="builtin")
    try:
        server.wait_ready()
        for name in ("silence", "semantic"):
            v2v, first_packet, right = [], [], 0
            for q in qs:
                speech = trim_24k(q["pcm"])
                # A microphone goes on sending after the question: 2.5 s of silence (a held turn ends at 1.6 s).
                pcm = np.concatenate([q["pcm"], np.zeros(int(2.5 * RATE), np.float32)])
                await asyncio.sleep(0.5)
                r = await stream_audio(server.url, pcm, RATE, mode="chat", output=("pcm",), tail_s=6.0,
                                       extra_hello={"turn_end": name})
                if r.first_audio_ms is not None:
                    v2v.append(r.first_audio_ms - 1000 * speech)
                # The server's own share: from the turn handed to the answerer to its first audio block.
                first_packet += [e["first_packet_ms"] for e in r.events if e.get("type") == "latency"][:1]
                replies = r.final("reply_text")
                right += bool(replies) and q["answer"].lower() in replies[0].lower()
            result[name] = {"questions": len(qs), "answered_right": right, "voice_to_voice_ms": _stats(v2v),
                            "answer_first_packet_ms": _stats(first_packet)}
    finally:
        server.stop()
    return result


def run_turns_bench(limit: int | None = None, seed: int = 0, real: bool = True, server_questions: int = 0,
                    config: TurnTakingConfig | None = None, heads: Path | None = None) -> dict:
    """`heads`: a folder holding turn_end and turn_barge (a training run's output) to measure instead of the shipped
    heads (the offline measures; `server_questions` always serve the shipped ones)."""
    from talkstream.models.turn_head import load_turn_judge

    try:
        judge = load_turn_judge(end_path=heads / "turn_end" if heads else None,
                                barge_path=heads / "turn_barge" if heads else None)
    except Exception as e:
        raise UserError(f"the turn heads did not load: {e}") from e
    vad = SileroVAD()
    config = config or TurnTakingConfig()
    stages = asyncio.run(_policies(TurnTaking(judge, config), vad))
    print("speaking the held-out material ...", flush=True)
    rows = _materials(seed, limit)
    real_rows = _real() if real else []
    barge = _barge_rows()
    print(f"{len(rows)} sentences, {len(real_rows)} real readings, {len(barge)} barge-in clips", flush=True)
    out: dict = {
        "voices": [v.id for v in EVAL_VOICES],
        "config": dataclasses.asdict(config),
        "heads": str(heads) if heads else "shipped",
        "thresholds": {"end": judge.end.cfg.threshold, "barge": judge.barge.cfg.threshold},
        "pauses": asyncio.run(measure_pauses(stages, pause_streams(rows, seed))),
        "complete": asyncio.run(measure_complete(stages, complete_streams(rows, seed))),
        "barge_in": asyncio.run(measure_barge(stages, barge, seed)),
    }
    if real_rows:
        out["real"] = {
            "pauses": asyncio.run(measure_pauses(stages, pause_streams(real_rows, seed))),
            "complete": asyncio.run(measure_complete(stages, complete_streams(real_rows, seed))),
        }
    replies = [_speak(Voice("kokoro", "jm_kumo"), t) for t in EVAL_REQUESTS]  # the Talker's voice
    user = [r["pcm"] for r in barge if r["kind"] == "interruption"]
    out["echo"] = asyncio.run(measure_echo(stages["semantic"], replies, user, seed))
    if server_questions:
        out["server"] = asyncio.run(measure_server(server_questions, seed))
    print(table(out))
    return out


def table(r: dict) -> str:
    lines = ["| measure | silence only | turn heads |", "|---|---|---|"]

    def row(label, get):
        lines.append(f"| {label} | {get('silence')} | {get('semantic')} |")

    p, c, b = r["pauses"], r["complete"], r["barge_in"]
    row("mid-sentence pause 0.5-1.2 s: cut off", lambda k: f"{p[k]['cut_off']}/{p[k]['streams']}")
    row("complete turn: end of speech to end of turn, p50/p90 ms",
        lambda k: f"{c[k]['end_of_turn_ms'].get('p50')}/{c[k]['end_of_turn_ms'].get('p90')}")
    row("complete turn: cut off at a pause inside it", lambda k: f"{c[k].get('cut_inside', '-')}/{c[k]['streams']}")
    row("backchannel: reply goes on", lambda k: f"{b[k]['backchannels_talked_through']}/{b[k]['backchannels']}")
    row("interruption: stopped within 300 ms", lambda k: f"{b[k]['stopped_within_300ms']}/{b[k]['interruptions']}")
    if "echo" in r:
        e = r["echo"]
        lines.append(f"| reply played into the mic (20-200 ms, -6..-20 dB): replies with a speech start, raw / "
                     f"echo-cancelled | {e['raw']['replies_self_interrupted']}/{e['replies']} | "
                     f"{e['cancelled']['replies_self_interrupted']}/{e['replies']} |")
        lines.append(f"| ... the user's barge-in over it heard (cancelled) | | "
                     f"{e['barge_ins_heard_within_300ms']}/{e['barge_ins']} |")
    if "real" in r:
        rp, rc = r["real"]["pauses"], r["real"]["complete"]
        row("real readings: pause cut off", lambda k: f"{rp[k]['cut_off']}/{rp[k]['streams']}")
        row("real readings: end of turn p50 ms", lambda k: f"{rc[k]['end_of_turn_ms'].get('p50')}")
    if "server" in r:
        s = r["server"]
        row("server: end of speech to first reply audio p50/p90 ms",
            lambda k: f"{s[k]['voice_to_voice_ms'].get('p50')}/{s[k]['voice_to_voice_ms'].get('p90')}")
        row("server: the answer's first audio after the turn (first_packet_ms) p50/p90",
            lambda k: f"{s[k].get('answer_first_packet_ms', {}).get('p50')}/"
                      f"{s[k].get('answer_first_packet_ms', {}).get('p90')}")
        row("server: answered right", lambda k: f"{s[k]['answered_right']}/{s[k]['questions']}")
    return "\n".join(lines)
