"""WebRTC with real aiortc peers on loopback: echo, chat, events, every refusal, and nothing left behind."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request

import aiohttp
import numpy as np
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from talkstream.audio_io import load_audio
from talkstream.bench.webrtc import RATE, SignalTrack, marked_signal, onset_latencies_ms, post_offer, rtc_session
from talkstream.data import SAMPLE_WAV
from talkstream.errors import UserError
from talkstream.services.app import ServerConfig
from talkstream.services.session import Limits
from talkstream.services.webrtc import parse_ice_server


@pytest.fixture(scope="module")
def speech48():
    return load_audio(SAMPLE_WAV, RATE)


@pytest.fixture(scope="module")
def server(start_server):
    limits = Limits(max_message_bytes=16 * 1024, frames_per_step=1)
    st = start_server(ServerConfig(port=0, http_port=0, max_sessions=3, limits=limits))
    yield st
    st.stop()


def run(coro, timeout=120):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def loudest(pcm: np.ndarray, block: int = RATE // 10) -> float:
    """RMS of the loudest 100 ms block (0 for less than a block)."""
    n = pcm.size // block
    return float(np.sqrt((pcm[: n * block].reshape(n, block) ** 2).mean(1)).max()) if n else 0.0


def live(server) -> tuple[int, int, int]:
    """Sessions, peers and tasks on the server's loop right now."""

    async def count():
        return len(server.srv.sessions), len(server.srv.http.rtc.peers), len(asyncio.all_tasks())

    return server.call(count())


def wait_idle(server, tasks: int, timeout: float = 15.0) -> tuple[int, int, int]:
    end = time.monotonic() + timeout
    while (now := live(server)) != (0, 0, tasks) and time.monotonic() < end:
        time.sleep(0.2)
    return now


def test_codec_echo_over_webrtc(server, speech48):
    signal, onsets = marked_signal(speech48, 4.0, period_s=1.0)
    r = run(rtc_session(server.http_url, signal, 4.5))
    ready = r.of_type("ready")
    assert ready and ready[0]["mode"] == "codec" and ready[0]["sample_rate"] == RATE
    assert not r.of_type("error")
    # Audio came back: the codec's reconstruction of every burst, each within a bounded mouth-to-ear time (loose:
    # the suite may share a small machine; `talkstream bench webrtc` is what measures it).
    assert r.pcm.size > 3 * RATE
    assert loudest(r.pcm) > 0.005
    lat = onset_latencies_ms(r, onsets, 1.0)
    assert lat.size == len(onsets), lat
    assert 20 < np.median(lat) < 2000, lat  # bounded, even when the machine is busy with other work
    # The data channel carried the protocol's events: the server's latency share, stats.
    latency = r.of_type("latency")
    assert len(latency) >= 2 and 0 < latency[-1]["server_ms_p50"] < 2000 and latency[-1]["frames"] > 0
    assert r.of_type("stats")  # (VAD events: the chat test, whose speech is longer than these bursts)
    metrics = urllib.request.urlopen(server.metrics_url).read().decode()
    assert "talkstream_sessions_total" in metrics and "talkstream_frame_latency_seconds_count" in metrics
    assert urllib.request.urlopen(f"{server.http_url}/healthz").read() == b"ok\n"
    page = urllib.request.urlopen(f"{server.http_url}/").read().decode()
    assert "static/app.js" in page


def test_chat_mode_answers_a_turn(server, speech48):
    speech = speech48[: int(1.5 * RATE)]
    signal = np.concatenate([speech, np.zeros(int(15.0 * RATE), np.float32)])

    ended: list[float] = []

    def answered(events):  # the answer was generated and has had time to play
        if not ended and any(e["type"] == "reply" and e["state"] == "end" for e in events):
            ended.append(time.monotonic())
        return bool(ended) and time.monotonic() - ended[0] > 1.5

    r = run(rtc_session(server.http_url, signal, 15.0, mode="chat", codebooks=4, until=answered))
    assert r.of_type("ready")[0]["codebooks"] == 4
    assert r.of_type("vad")
    states = [e["state"] for e in r.of_type("reply")]
    assert states[:2] == ["start", "end"], r.events
    # The answer (the echo responder says the turn back) is heard after the user stopped speaking.
    tail = r.pcm[int(2.0 * RATE) :]
    assert loudest(tail) > 0.005


def test_data_channel_messages_and_refusals(server, speech48):
    big = json.dumps({"type": "ping", "pad": "x" * 40_000})  # over the 16 KiB test limit, under SCTP's 256 KiB
    messages = [big, "not json", b"\x01\x01\x00\x00" + bytes(8), json.dumps({"type": "ping", "t": 7})]
    r = run(rtc_session(server.http_url, speech48[: 2 * RATE], 2.0, messages=messages))
    codes = [e["code"] for e in r.of_type("error")]
    assert "too_large" in codes and "bad_json" in codes and "bad_header" in codes
    assert {"type": "pong", "t": 7} in r.events  # still serving after each refusal
    assert loudest(r.pcm) > 0.005


def test_end_on_the_data_channel_sends_the_summary_and_closes(server, speech48):
    async def main():
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pc.addTrack(SignalTrack(speech48[:RATE]))
        ch = pc.createDataChannel("events")
        events = []
        ch.on("message", lambda m: events.append(json.loads(m)))
        ch.on("open", lambda: asyncio.get_running_loop().call_later(1.0, ch.send, json.dumps({"type": "end"})))
        closed = asyncio.Event()
        pc.on("connectionstatechange", lambda: pc.connectionState == "closed" and closed.set())
        await pc.setLocalDescription(await pc.createOffer())
        status, answer = await post_offer(server.http_url, {"sdp": pc.localDescription.sdp, "type": "offer"})
        await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))
        await asyncio.wait_for(closed.wait(), 15)  # the server closed the connection after the summary
        await pc.close()
        return events

    events = run(main())
    summary = [e for e in events if e["type"] == "summary"]
    assert summary and summary[0]["frames_in"] > 0 and summary[0]["stages"]


def test_many_connects_and_disconnects_leave_nothing_behind(server, speech48):
    _, _, base_tasks = wait_idle(server, live(server)[2])

    async def one_by_one():
        for i in range(6):
            await rtc_session(server.http_url, speech48[: RATE // 2], 0.6 + 0.1 * (i % 3))

    async def at_once():  # several at once, closed at once (tabs closed together)
        await asyncio.gather(*(rtc_session(server.http_url, speech48[:RATE], 1.0) for _ in range(3)))

    run(one_by_one())
    # The server frees a session when it sees the peer go, a moment after the client closed: wait for that before
    # three more arrive, or the last one still counts against the limit of 3 and a new one is refused as busy.
    assert wait_idle(server, base_tasks) == (0, 0, base_tasks)
    run(at_once())
    assert wait_idle(server, base_tasks) == (0, 0, base_tasks)


def test_bad_offers_get_clear_http_errors(server, speech48):
    async def main():
        out = {}
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{server.http_url}/offer", data=b"{nope") as r:
                out["json"] = r.status, await r.json()
            async with http.post(f"{server.http_url}/offer", data=b"x" * 300_000) as r:
                out["huge"] = r.status, await r.json()
            async with http.get(f"{server.http_url}/offer") as r:
                out["get"] = r.status, await r.json()
        out["garbage"] = await post_offer(server.http_url, {"sdp": "v=0\r\nthis is not sdp", "type": "offer"})
        out["type"] = await post_offer(server.http_url, {"sdp": "v=0", "type": "answer"})

        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))  # a data channel and no microphone
        pc.createDataChannel("events")
        await pc.setLocalDescription(await pc.createOffer())
        offer = {"sdp": pc.localDescription.sdp, "type": "offer"}
        out["no_audio"] = await post_offer(server.http_url, offer)
        await pc.close()

        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pc.addTransceiver("audio", direction="sendrecv")
        await pc.setLocalDescription(await pc.createOffer())
        offer = {"sdp": pc.localDescription.sdp, "type": "offer"}
        out["codebooks"] = await post_offer(server.http_url, {**offer, "codebooks": 99})
        out["mode"] = await post_offer(server.http_url, {**offer, "mode": "karaoke"})
        broken = offer["sdp"].replace("a=fingerprint:", "a=fingerprint-gone:")
        out["insecure"] = await post_offer(server.http_url, {**offer, "sdp": broken})
        broken = offer["sdp"].replace("a=ice-ufrag:", "a=ice-ufrag-gone:")
        out["unusable"] = await post_offer(server.http_url, {**offer, "sdp": broken})
        out["unknown"] = await post_offer(server.http_url, {**offer, "session": "feedbeef"})
        # Accepted, never connected: the session holds a slot until it connects or its deadline passes.
        status, answer = await post_offer(server.http_url, offer)
        out["ok"] = status, answer
        out["live"] = await post_offer(server.http_url, {**offer, "session": answer["session"]})
        await pc.close()
        return out

    out = run(main())
    expect = {
        "json": (400, "bad_json"),
        "huge": (413, "too_large"),
        "get": (405, "method_not_allowed"),
        "garbage": (400, "bad_sdp"),
        "type": (400, "bad_offer"),
        "no_audio": (400, "no_audio"),
        "codebooks": (400, "bad_config"),
        "mode": (400, "bad_config"),
        "insecure": (400, "bad_sdp"),
        "unusable": (400, "bad_sdp"),
        "unknown": (404, "session_closed"),
        "live": (409, "renegotiation"),
    }
    for name, (status, code) in expect.items():
        assert out[name][0] == status and out[name][1]["code"] == code, (name, out[name])
        assert out[name][1]["type"] == "error" and out[name][1]["message"]
    assert out["ok"][0] == 200 and out["ok"][1]["type"] == "answer"
    # A second offer on the session once it has closed is refused as closed; the server goes on serving.
    sid = out["ok"][1]["session"]
    server.call(server.srv.http.rtc.peers[sid].close())
    status, body = run(post_offer(server.http_url, {"sdp": "v=0", "type": "offer", "session": sid}))
    assert (status, body["code"]) == (404, "session_closed") and "closed" in body["message"]
    r = run(rtc_session(server.http_url, speech48[:RATE], 1.5))
    assert r.pcm.size and not r.of_type("error")


@pytest.mark.slow  # 8 s; the fast tier keeps the connect/disconnect leak check
def test_max_sessions_unconnected_offers_and_shutdown_free_everything(start_server):
    st = start_server(ServerConfig(port=0, http_port=0, max_sessions=2))
    rtc = st.srv.http.rtc

    async def offers(n: int):
        """n offers from peers that go away before connecting (a tab closed during ICE)."""
        pcs, answers = [], []
        for _ in range(n):
            pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
            pc.addTransceiver("audio", direction="sendrecv")
            await pc.setLocalDescription(await pc.createOffer())
            answers.append(await post_offer(st.http_url, {"sdp": pc.localDescription.sdp, "type": "offer"}))
            pcs.append(pc)
        for pc in pcs:
            await pc.close()
        return answers

    try:
        rtc.connect_timeout_s = 1.0
        answers = run(offers(3))
        assert [a[0] for a in answers] == [200, 200, 503] and answers[2][1]["code"] == "busy"
        assert live(st)[:2] == (2, 2)
        time.sleep(2.0)  # never connected: freed at the deadline
        assert live(st)[:2] == (0, 0)
        rtc.connect_timeout_s = 60.0
        assert [a[0] for a in run(offers(2))] == [200, 200]
        peers = list(rtc.peers.values())
        assert len(peers) == 2
    finally:
        st.stop()
    # Shutdown closed the rest.
    assert not st.srv.sessions and not rtc.peers
    assert all(p.closed and p.pc.connectionState == "closed" for p in peers)


def test_ice_server_specs():
    assert parse_ice_server("stun:stun.example.org:3478").urls == "stun:stun.example.org:3478"
    turn = parse_ice_server("turn:turn.example.org:3478,user,secret")
    assert (turn.username, turn.credential) == ("user", "secret")
    for bad in ["http://x", "turn:x,user", ""]:
        with pytest.raises(UserError):
            parse_ice_server(bad)


class StallingTrack(SignalTrack):
    """Sends `signal`, then nothing at all: a tab that crashed or lost its network without closing."""

    async def recv(self):
        if len(self.sent_at) * 960 >= self.signal.size:
            await asyncio.Event().wait()
        return await super().recv()


def test_a_peer_that_stops_sending_is_freed(server, speech48):
    rtc = server.srv.http.rtc
    base_tasks = wait_idle(server, live(server)[2])[2]

    async def main():
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pc.addTrack(StallingTrack(speech48[:RATE]))
        ch = pc.createDataChannel("events")
        events = []
        ch.on("message", lambda m: events.append(json.loads(m)))
        await pc.setLocalDescription(await pc.createOffer())
        _, answer = await post_offer(server.http_url, {"sdp": pc.localDescription.sdp, "type": "offer"})
        await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))
        t0 = time.monotonic()
        while time.monotonic() - t0 < 10 and answer["session"] in rtc.peers:  # 10 s: the guard
            await asyncio.sleep(0.1)
        freed = answer["session"] not in rtc.peers
        await pc.close()
        return events, freed, time.monotonic() - t0

    rtc.media_timeout_s = 1.5
    try:
        events, freed, took = run(main())
    finally:
        rtc.media_timeout_s = 5.0
    # Freed by the media timeout (1.5 s after the last packet), long before the session's idle limit (30 s) and
    # before the test's guard.
    print(f"\nfreed {took:.1f} s after connecting (1 s of audio, then 1.5 s of no media)")
    assert freed, took
    assert any(e["type"] == "error" and e["code"] == "idle_timeout" for e in events), events
    assert wait_idle(server, base_tasks) == (0, 0, base_tasks)
