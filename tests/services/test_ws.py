"""A real server on loopback and real clients: round trips, chat echo, every refusal with its code, no leaks."""

from __future__ import annotations

import asyncio
import json
import urllib.request

import numpy as np
import pytest
import torch
import websockets
from websockets.asyncio.client import connect

from talkstream.audio_io import load_audio
from talkstream.bench.metrics import stoi
from talkstream.client import ServerError, stream_audio
from talkstream.data import SAMPLE_WAV
from talkstream.errors import UserError
from talkstream.protocol import HEADER, pcm_frame
from talkstream.services.app import ServerConfig, TalkstreamServer
from talkstream.services.session import Limits


def serve(models, **kw):
    limits = kw.pop("limits", Limits())
    kw.setdefault("thinker", "echo")  # chat tests here are about the session, not the model: echo answers
    codec, vad = models
    return TalkstreamServer(ServerConfig(port=0, limits=limits, **kw), codec=codec, vad=vad)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 120))


async def hello(ws, **kw):
    await ws.send(json.dumps({"type": "hello", "version": 1, **kw}))
    return json.loads(await ws.recv())


async def next_event(ws, kind="error"):
    while True:
        msg = await ws.recv()
        if isinstance(msg, str) and json.loads(msg)["type"] == kind:
            return json.loads(msg)


def test_codec_roundtrip_matches_offline(models, speech):
    codec = models[0]

    async def main():
        async with serve(models) as srv:
            r = await stream_audio(srv.url, speech, 24_000, output=("pcm", "tokens"), realtime=True)
            return r, len(srv.sessions)

    # A client faster than real time: test_backpressure.py (live audio dropped oldest-first; a file's, never).
    r, live = run(main())
    assert live == 0 and r.summary is not None and not r.errors()
    assert r.ready["codec"]["frame_rate"] == 75 and r.summary["drops"] == 0
    # Tokens are the offline encoder's on the same audio (whole frames only). Chunked float sums differ from the
    # offline ones in the last bits, which can flip a latent that sits on a codebook cell's border: allow 1%.
    ref = codec.encode(torch.from_numpy(speech)[None, None], 8)[0].numpy()
    n = r.tokens.shape[1]
    assert n >= ref.shape[1] - 1 and (r.tokens[0] == ref[0, :n]).mean() > 0.99
    # The audio that comes back is the codec's reconstruction, one hop late.
    m = min(speech.size, r.pcm.size - codec.frame_size)
    assert stoi(speech[:m], r.pcm[codec.frame_size : codec.frame_size + m], 24_000) > 0.7
    assert [e["type"] for e in r.events].count("vad") >= 1


def test_other_rates_and_tokens_in(models, speech):
    codec = models[0]
    tokens = codec.encode(torch.from_numpy(speech)[None, None], 4)[0].numpy()

    async def main():
        async with serve(models) as srv:
            a = await stream_audio(srv.url, load_audio(SAMPLE_WAV, 16_000), 16_000, realtime=True)
            b = await stream_audio(srv.url, tokens=tokens, codebooks=4, realtime=False)
            return a, b

    a, b = run(main())
    assert abs(a.pcm.size / 16_000 - speech.size / 24_000) < 0.15  # 16 kHz in, 16 kHz back
    ref = codec.decode(torch.from_numpy(tokens)[None])[0, 0].numpy()
    np.testing.assert_allclose(b.pcm, ref[: b.pcm.size], atol=2 / 32768 + 1e-4)
    assert b.pcm.size == ref.size


def test_chat_echo_answers_each_turn(models, speech):
    silence = np.zeros(15_000, np.float32)

    async def main():
        async with serve(models) as srv:
            return await stream_audio(
                srv.url, np.concatenate([silence, speech, silence]), 24_000, mode="chat", realtime=True, tail_s=6
            )

    r = run(main())
    kinds = [(e["type"], e.get("state")) for e in r.events if e["type"] in ("vad", "reply")]
    assert kinds[:4] == [("vad", "start"), ("vad", "end"), ("reply", "start"), ("reply", "end")]
    # The echo says the turn back: about as long as the speech plus the pre-roll.
    assert speech.size / 24_000 - 0.3 < r.pcm.size / 24_000 < speech.size / 24_000 + 1.0
    assert r.summary["turns"] == 1


@pytest.mark.parametrize(
    "messages, code",
    [
        (["this is not json"], "bad_json"),
        (['{"type": "fly"}'], "unknown_type"),
        ([b"\x01\x01\x00\x00"], "bad_header"),
        ([HEADER.pack(7, 1, 0, 0, 0, 0)], "unknown_kind"),
        ([b"x" * 70_000], "too_large"),
        (['{"type": "config", "codebooks": 99}'], "bad_config"),
    ],
    ids=["bad-json", "unknown-type", "short-header", "unknown-kind", "oversize", "bad-config"],
)
def test_protocol_errors_keep_the_session_and_the_server(models, speech, messages, code):
    async def main():
        async with serve(models) as srv:
            other = asyncio.create_task(stream_audio(srv.url, speech[:24_000], 24_000, realtime=True))
            async with connect(srv.url) as ws:
                assert (await hello(ws))["type"] == "ready"
                for m in messages:
                    await ws.send(m)
                err = await next_event(ws)
                await ws.send(pcm_frame(speech[:480], 0, 1))  # the same session still works
                await ws.send('{"type": "ping", "t": 1}')
                pong = await next_event(ws, "pong")
            return err, pong, await other

    err, pong, other = run(main())
    assert err["code"] == code and not err["fatal"] and err["message"]
    assert pong["t"] == 1
    assert not other.errors() and other.pcm.size > 20_000  # the other session was served throughout


def test_binary_before_hello_is_dropped_with_an_error(models, speech):
    async def main():
        async with serve(models) as srv, connect(srv.url) as ws:
            await ws.send(pcm_frame(speech[:480], 0, 1))
            err = json.loads(await ws.recv())
            ready = await hello(ws)
            return err, ready

    err, ready = run(main())
    assert err["code"] == "not_ready" and ready["type"] == "ready"


def test_token_auth(models, speech):
    async def main():
        async with serve(models, limits=Limits(token="s3cret")) as srv:
            with pytest.raises(ServerError) as e:
                await stream_audio(srv.url, speech[:4800], 24_000, token="wrong", realtime=False)
            ok = await stream_audio(srv.url, speech[:4800], 24_000, token="s3cret", realtime=False)
            return e.value.code, ok

    code, ok = run(main())
    assert code == "unauthorized" and ok.pcm.size > 0


def test_limits_busy_idle_origin(models):
    async def main():
        async with serve(models, max_sessions=1, limits=Limits(idle_timeout_s=0.5)) as srv:
            async with connect(srv.url) as first:
                await hello(first)
                async with connect(srv.url) as second:
                    busy = json.loads(await second.recv())
                idle = await asyncio.wait_for(next_event(first), 5)
            async with connect(srv.url, origin="https://evil.example") as ws:
                origin = json.loads(await ws.recv())
            async with connect(srv.url, origin="http://localhost:8080") as ws:
                local = await hello(ws)
            return busy, idle, origin, local

    busy, idle, origin, local = run(main())
    assert busy["code"] == "busy" and busy["fatal"]
    assert idle["code"] == "idle_timeout"
    assert origin["code"] == "origin_not_allowed"
    assert local["type"] == "ready"


def test_conversations_past_the_limit_are_refused_busy_at_hello(models):
    """--max-conversations: a chat hello past the worker's limit gets a fatal `busy` and the connection closes; codec
    sessions are not counted; a conversation that ends gives its slot to the next; a session that turns from chat
    to codec (a config message) gives its slot back."""
    async def main():
        async with serve(models, max_conversations=1) as srv:
            async with connect(srv.url) as first:
                assert (await hello(first, mode="chat"))["type"] == "ready"
                async with connect(srv.url) as second:
                    busy = await hello(second, mode="chat")
                    with pytest.raises(websockets.ConnectionClosed):
                        await asyncio.wait_for(second.recv(), 5)
                async with connect(srv.url) as codec_session:
                    codec_ready = await hello(codec_session, mode="codec")
                # the first turns into a codec session: its slot is free for the next conversation
                await first.send(json.dumps({"type": "config", "mode": "codec"}))
                assert (await next_event(first, "ready"))["mode"] == "codec"
                async with connect(srv.url) as third:
                    third_ready = await hello(third, mode="chat")
            for _ in range(50):  # the closed sessions are gone
                if not len(srv.sessions):
                    break
                await asyncio.sleep(0.05)
            async with connect(srv.url) as fourth:
                fourth_ready = await hello(fourth, mode="chat")
            return busy, codec_ready, third_ready, fourth_ready, srv.render_metrics().decode()

    busy, codec_ready, third_ready, fourth_ready, metrics = run(main())
    assert busy["type"] == "error" and busy["code"] == "busy" and busy["fatal"]
    assert "conversations" in busy["message"]
    assert codec_ready["type"] == third_ready["type"] == fourth_ready["type"] == "ready"
    assert 'code="busy"' in metrics  # counted


def test_a_conversation_limit_below_one_is_refused():
    from talkstream.services.registry import ConversationSlots

    with pytest.raises(ValueError, match="at least 1"):
        ConversationSlots(0)


def test_vanishing_clients_free_their_sessions(models, speech):
    async def main():
        async with serve(models) as srv:
            for _ in range(5):
                ws = await connect(srv.url)
                await hello(ws)
                for i in range(10):
                    await ws.send(pcm_frame(speech[i * 480 : (i + 1) * 480], i, 1000 + i))
                ws.transport.abort()  # gone without a close handshake
            for _ in range(50):
                if not srv.sessions:
                    break
                await asyncio.sleep(0.1)
            tasks = [t for t in asyncio.all_tasks() if t.get_name().startswith("stage-")]
            return len(srv.sessions), len(tasks)

    sessions, stage_tasks = run(main())
    assert sessions == 0 and stage_tasks == 0


def test_metrics_and_health(models, speech):
    async def main():
        async with serve(models) as srv:
            await stream_audio(srv.url, speech[:24_000], 24_000, realtime=False)
            loop = asyncio.get_running_loop()
            base = f"http://127.0.0.1:{srv.port}"
            health = await loop.run_in_executor(None, lambda: urllib.request.urlopen(base + "/healthz").read())
            metrics = await loop.run_in_executor(None, lambda: urllib.request.urlopen(base + "/metrics").read())
            return health, metrics.decode()

    health, metrics = run(main())
    assert health == b"ok\n"
    assert 'talkstream_stage_frames_in_total{stage="codec"}' in metrics
    assert "talkstream_frame_latency_seconds_bucket" in metrics and "talkstream_sessions_total 1.0" in metrics


def test_barge_in_interrupts_the_answer(models, speech):
    """Speak, pause (the echo starts playing), speak again over it: the answer stops and a new turn begins."""
    gap = np.zeros(24_000, np.float32)
    audio = np.concatenate([gap[:12_000], speech, gap, speech[:48_000], gap])

    async def main():
        async with serve(models) as srv:
            return await stream_audio(srv.url, audio, 24_000, mode="chat", realtime=True, tail_s=4)

    r = run(main())
    kinds = [(e["type"], e.get("state")) for e in r.events if e["type"] in ("vad", "reply")]
    assert ("reply", "interrupted") in kinds
    i = kinds.index(("reply", "interrupted"))
    assert kinds[i - 1] == ("vad", "start")  # it was the user's voice that stopped it
    assert r.summary["interruptions"] == 1 and r.summary["turns"] == 2
    # The first answer was cut short: less audio came back than two full echoes would be.
    assert r.pcm.size < speech.size + 48_000


def test_bad_tokens_and_refused_config_leave_the_session_working(models, speech):
    from talkstream.protocol import token_frame

    async def main():
        async with serve(models) as srv, connect(srv.url) as ws:
            await hello(ws, input="tokens", codebooks=2)
            await ws.send(token_frame(np.full((2, 3), 5000), 0, 1))  # codes beyond the codebook
            bad = await next_event(ws)
            await ws.send(token_frame(np.full((2, 151), 1), 1, 1))  # more frames than one message may hold
            big = await next_event(ws)
            await ws.send('{"type": "config", "mode": "chat"}')  # chat cannot take tokens: refused, nothing changes
            refused = await next_event(ws)
            for i in range(80):  # more than the input queue holds: nothing was left jammed
                await ws.send(token_frame(np.full((2, 3), 7), i, 1000 + i))
            await ws.send('{"type": "end"}')
            summary = await next_event(ws, "summary")
            return bad, big, refused, summary

    bad, big, refused, summary = run(main())
    assert bad["code"] == big["code"] == "bad_header" and refused["code"] == "bad_config"
    assert summary["frames_out"] == 80 and summary["errors"] == 3


def test_every_codebook_count_and_token_length_is_answered_without_an_export(models, monkeypatch):
    """Codec graphs for every shape a client may ask for are warmed before the port opens: each codebook count, PCM
    in (tokens out, or tokens and PCM) and token messages of several lengths, answered from the first message with
    no export at request time."""
    import time

    from talkstream.codecs.audio import onnx_step
    from talkstream.protocol import token_frame

    exports = []
    real = onnx_step.export_bytes
    monkeypatch.setattr(onnx_step, "export_bytes", lambda spec: exports.append(spec.name) or real(spec))
    codec = models[0]
    pcm = (np.sin(np.arange(960) / 7) * 8000).astype(np.int16)  # 40 ms: two codec frames, one step

    async def first_answer(ws, message) -> float:
        t0 = time.perf_counter()
        await ws.send(message)
        while isinstance(await ws.recv(), str):  # events (vad, stats) may come first
            pass
        return time.perf_counter() - t0

    async def main():
        waits = {}
        async with serve(models) as srv:
            warm = len(exports)
            for k in range(1, codec.num_codebooks + 1):
                for output in (["tokens"], ["tokens", "pcm"]):
                    async with connect(srv.url) as ws:
                        assert (await hello(ws, codebooks=k, output=output))["type"] == "ready"
                        waits[k, "pcm", len(output)] = await first_answer(ws, pcm_frame(pcm, 0, 1))
                for n in (1, 2, 3, 7, 150):
                    async with connect(srv.url) as ws:
                        await hello(ws, codebooks=k, input="tokens")
                        codes = np.random.default_rng(n).integers(0, codec.codebook_size, (k, n))
                        waits[k, "tokens", n] = await first_answer(ws, token_frame(codes, 0, 1))
            return waits, exports[warm:]

    waits, late = run(main())
    assert late == [], f"exported at request time: {late}"
    assert len(waits) == 8 * 7  # every shape answered; how fast is a figure, not a check on a shared machine
    slowest = max(waits.items(), key=lambda kv: kv[1])
    print(f"slowest first answer: {slowest[0]} after {slowest[1] * 1000:.0f} ms")


@pytest.mark.slow
def test_a_client_that_stops_reading_is_closed_and_holds_little(models, speech):
    """Clients send audio and never read the echo: the server's buffers fill to their bounds (live input is
    dropped, the process's memory stays put), and once nothing could be sent for send_timeout_s the session is
    closed with slow_consumer, the close frame's reason, which a client that reads again finds after what it left
    unread; one that never reads again is cut off. Meanwhile another client's real-time echo is served whole."""
    import os
    import socket

    def rss_mb() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    async def stalled(srv, read_again: bool) -> dict:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window: the server fills it soon
        sock.connect(("127.0.0.1", srv.port))
        async with connect(srv.url, sock=sock, max_queue=1) as ws:
            sid = (await hello(ws, sample_rate=48_000))["session"]
            session = next(s for s in srv.sessions if s.id == sid)
            loop = asyncio.get_running_loop()
            t0, depth, ended_by_server = loop.time(), 0, False
            audio = load_audio(SAMPLE_WAV, 48_000)
            # 20 ms frames, 4x faster than real time, until the server gives up on this client (read_again) or
            # has freed its session
            try:
                for i in range(20_000):
                    j = i * 960 % (audio.size - 960)
                    await ws.send(pcm_frame(audio[j : j + 960], i, 1))
                    if session.input is not None:
                        depth = max(depth, sum(session.input.queue_depths().values()))
                    ended_by_server = session.closed if read_again else session not in srv.sessions
                    if ended_by_server or loop.time() - t0 > 40:  # the guard: a server that never gives up
                        break
                    await asyncio.sleep(0.005)
            except websockets.ConnectionClosed:
                pass
            seconds, close = loop.time() - t0, None
            if read_again:  # what the server had sent, then its close frame
                try:
                    while True:
                        await ws.recv()
                except websockets.ConnectionClosed as e:
                    close = (e.rcvd.code, e.rcvd.reason) if e.rcvd else (None, "")
            return {"seconds": seconds, "depth": depth, "session": session, "close": close, "ended": ended_by_server}

    async def main():
        async with serve(models, limits=Limits(send_timeout_s=1.0)) as srv:
            mb0 = rss_mb()
            other = stream_audio(srv.url, speech, 24_000, realtime=True)
            reads, never, served = await asyncio.gather(stalled(srv, True), stalled(srv, False), other)
            grew = rss_mb() - mb0
            for _ in range(100):  # the handler frees the session of the client that read again a moment later
                if not srv.sessions:
                    break
                await asyncio.sleep(0.05)
            return reads, never, served, grew, len(srv.sessions), srv.render_metrics().decode()

    reads, never, served, grew, live, metrics = run(main())
    print(f"\nstalled clients given up on after {reads['seconds']:.1f} s, cut off after {never['seconds']:.1f} s; "
          f"RSS meanwhile {grew:+.1f} MB; queue depth at most {max(reads['depth'], never['depth'])}")
    assert live == 0 and reads["session"].closed and never["session"].closed, "both sessions closed and freed"
    assert reads["close"] == (1008, "slow_consumer"), reads["close"]
    assert 'talkstream_errors_total{code="slow_consumer"} 2.0' in metrics
    for r in (reads, never):  # bounded queues: the live inbox and each stage's, whatever the client does
        assert r["depth"] <= 32 + 4 * 64
    assert reads["ended"] and never["ended"], "the server gave up on both clients (not the test's 40 s guard)"
    assert grew < 50, f"the server grew by {grew:.1f} MB holding two clients that read nothing"
    # The other session was served throughout: every frame came back, nothing refused.
    assert not served.errors() and served.summary["errors"] == 0, served.events
    assert served.summary["drops"] == 0 and abs(served.pcm.size - speech.size) <= 960, served.pcm.size


def test_a_client_of_another_codec_is_refused_with_a_code(models):
    """Tokens of another codec would decode to wrong audio: a hello naming another codec_id is refused, the server's
    own id is accepted."""
    import websockets

    codec_id = models[0].cfg.codec_id

    async def main():
        async with serve(models) as srv:
            async with websockets.connect(srv.url) as ws:
                refused = await hello(ws, codec_id="talkstream-audio-v0", input="tokens")
            async with websockets.connect(srv.url) as ws:
                accepted = await hello(ws, codec_id=codec_id)
            return refused, accepted

    refused, accepted = run(main())
    assert refused["type"] == "error" and refused["code"] == "codec_mismatch" and refused["fatal"]
    assert codec_id in refused["message"]
    assert accepted["type"] == "ready" and accepted["codec"]["codec_id"] == codec_id


def test_a_taken_port_is_refused_before_the_warm_up(models):
    """A second server on a port in use says so at once, in one line, without warming its models first."""
    import socket

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        codec, vad = models
        server = TalkstreamServer(ServerConfig(port=port, thinker="echo"), codec=codec, vad=vad)
        warmed = []
        server.engine.warmup = lambda *a, **k: warmed.append(1)
        with pytest.raises(UserError, match=f"cannot listen on 127.0.0.1:{port}"):
            run(server.start())
        assert not warmed  # refused before any model was warmed, however long that would have taken
