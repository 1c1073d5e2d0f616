"""`talkstream bench chat`: N chat sessions that all ask at once, against a server in its own process.

Each level starts N WebSocket clients together; each speaks a different held-out dialogue question (the eval split,
in the held-out voices, as `bench model` makes them) in real time, then stays silent until the answer has come. The
server is `talkstream serve` with the built-in Thinker-Talker, as served (onnx, one worker unless told), so every
session's hearing, answer and Talker steps share its cores. Reported per level: the first packet (the server's
`latency` event: end of the turn to the reply's first audio) p50/p95 over all sessions, how many were answered and
how many exactly, and the server's CPU. The issue's line: first-packet p95 <= 300 ms with all answering at once.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np

from talkstream.bench.serve import ServerProcess  # the same server process as bench serve
from talkstream.client import stream_audio
from talkstream.errors import UserError

TARGET_FIRST_PACKET_MS = 300.0


def held_out_questions(n: int) -> list[dict]:
    """n held-out dialogue questions spoken round-robin by the eval voices (as `bench model` speaks them), with a
    second of silence after each (the turn ends after 480 ms of silence)."""
    from talkstream.bench.model import speak_held_out
    from talkstream.models.dialogue import dialogues

    out = speak_held_out([{"text": q, "answer": a} for q, a in dialogues(n, "eval", seed=7)])
    for q in out:  # 0.2 s of silence already ends each clip
        q["pcm"] = np.concatenate([q["pcm"], np.zeros(19_200, np.float32)])
    return out


async def _ask_all(server: ServerProcess, questions: list[dict], sessions: int) -> dict:
    cpu0, t0 = server.cpu_s(), time.monotonic()

    async def one(i: int):
        q = questions[i % len(questions)]
        r = await stream_audio(server.url, q["pcm"], 24_000, mode="chat", codebooks=8, output=("pcm",), tail_s=8.0)
        firsts = [e["first_packet_ms"] for e in r.events if e.get("type") == "latency"]
        replies = r.final("reply_text")
        return {"first_packet_ms": firsts[0] if firsts else None, "reply": replies[0].strip() if replies else "",
                "answer": q["answer"], "errors": [e["code"] for e in r.errors()]}

    results = await asyncio.gather(*(one(i) for i in range(sessions)), return_exceptions=True)
    wall, cpu = time.monotonic() - t0, server.cpu_s() - cpu0
    ok = [r for r in results if not isinstance(r, BaseException)]
    firsts = [r["first_packet_ms"] for r in ok if r["first_packet_ms"] is not None]
    p50, p95 = (float(np.percentile(firsts, q)) for q in (50, 95)) if firsts else (None, None)
    return {
        "sessions": sessions,
        "failed_sessions": len(results) - len(ok),
        "answered": len(firsts),
        "exact": sum(r["reply"] == r["answer"] for r in ok),
        "first_packet_ms_p50": p50,
        "first_packet_ms_p95": p95,
        "first_packet_ms": firsts,
        "errors": sorted({c for r in ok for c in r["errors"]}),
        "server_cpu_cores": cpu / wall,
        "passes": bool(len(firsts) == sessions and p95 is not None and p95 <= TARGET_FIRST_PACKET_MS),
    }


def run_chat_load_bench(levels: list[int], workers: int = 1, thinker: str = "builtin") -> dict:
    if any(n < 1 for n in levels):
        raise UserError(f"--sessions must be at least 1 (got {levels})")
    if workers < 1:
        raise UserError(f"--workers must be at least 1 (got {workers})")
    print("speaking the held-out questions ...", flush=True)
    questions = held_out_questions(max(levels))
    print(f"starting a server with {workers} worker(s), the {thinker} answerer ...", flush=True)
    server = ServerProcess(workers, max(levels) + 2, [], thinker=thinker)
    rows = []
    try:
        server.wait_ready()
        for n in levels:
            print(f"{n} chat sessions asking at once ...", flush=True)
            rows.append(asyncio.run(_ask_all(server, questions, n)))
    finally:
        server.stop()
    passing = [r["sessions"] for r in rows if r["passes"]]
    result = {"workers": workers, "thinker": thinker, "target_first_packet_ms": TARGET_FIRST_PACKET_MS,
              "rows": rows, "max_sessions_passing": max(passing) if passing else 0}
    head = f"{'sessions':>8}{'answered':>9}{'exact':>7}{'p50 ms':>8}{'p95 ms':>8}{'srv cores':>10}  ok"
    print(head + "\n" + "-" * len(head))
    for r in rows:
        p50 = f"{r['first_packet_ms_p50']:>8.0f}" if r["first_packet_ms_p50"] is not None else f"{'-':>8}"
        p95 = f"{r['first_packet_ms_p95']:>8.0f}" if r["first_packet_ms_p95"] is not None else f"{'-':>8}"
        print(f"{r['sessions']:>8}{r['answered']:>9}{r['exact']:>7}{p50}{p95}{r['server_cpu_cores']:>10.2f}  "
              f"{'yes' if r['passes'] else 'no'}")
    print(f"first packet p95 <= {TARGET_FIRST_PACKET_MS:.0f} ms with all answering at once: up to "
          f"{result['max_sessions_passing']} sessions")
    return result
