"""talkstream on Ray Serve, on a local Ray cluster (a head and a worker node, both on 127.0.0.1 only:
tests/conftest.py): sessions through Serve's ingress spread over two replicas and stay on theirs; a replica killed
closes its sessions, they reconnect to the other, and the other's sessions keep going."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import time

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="ray[serve] is not installed: pip install 'talkstream[ray]'")
serve = pytest.importorskip("ray.serve", reason="ray[serve] is not installed: pip install 'talkstream[ray]'")

from websockets.asyncio.client import connect  # noqa: E402
from websockets.exceptions import ConnectionClosed  # noqa: E402

from talkstream.audio_io import load_audio  # noqa: E402
from talkstream.client import stream_audio  # noqa: E402
from talkstream.data import SAMPLE_WAV  # noqa: E402
from talkstream.errors import UserError  # noqa: E402
from talkstream.protocol import parse_binary, pcm_frame  # noqa: E402
from talkstream.services.app import ServerConfig  # noqa: E402
from talkstream.services.ray_serve import application, build, unplaced_message  # noqa: E402
from tests.services.test_workers import udp_ports  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def url():
    from ray.cluster_utils import Cluster

    # Serve's proxy prefers replicas on its own node until they are full (64 sessions): spread by load instead, as
    # deploy/ray/README.md says to for talkstream. The nodes' processes inherit this from here.
    os.environ["RAY_SERVE_PROXY_PREFER_LOCAL_NODE_ROUTING"] = "0"
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)  # a second node: each replica wants a whole CPU, so one lands on each
    ray.init(address=cluster.address, logging_level="WARNING")
    port = _free_port()
    try:
        serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
        config = ServerConfig(thinker="echo", http_port=0)  # http: WebRTC signaling through the ingress too
        serve.run(application(config, replicas=2), name="talkstream", route_prefix="/")
        yield f"ws://127.0.0.1:{port}/"
    finally:
        serve.shutdown()
        ray.shutdown()
        cluster.shutdown()
        os.environ.pop("RAY_SERVE_PROXY_PREFER_LOCAL_NODE_ROUTING", None)


def run(coro, timeout=240):
    return asyncio.run(asyncio.wait_for(coro, timeout))


@pytest.fixture(scope="module")
def clip():
    return load_audio(SAMPLE_WAV, 24_000)[:24_000]


@pytest.mark.slow
def test_sessions_spread_over_both_replicas_and_each_works(url, clip):
    async def main():
        async def one(i):
            await asyncio.sleep(0.1 * i)  # the router learns each replica's load as sessions arrive
            return await stream_audio(url, clip, 24_000, realtime=True, tail_s=0.3)

        return await asyncio.gather(*(one(i) for i in range(8)))

    results = run(main())
    assert all(r.summary is not None and not r.errors() and r.pcm.size > 0.5 * clip.size for r in results)
    assert len({r.ready["worker"] for r in results}) == 2, "Serve's router used both replicas"


class Live:
    """A session held open: hello, then a 20 ms frame at a time, counting the audio that comes back."""

    def __init__(self, ws, ready: dict):
        self.ws, self.ready, self.back, self.closed = ws, ready, 0, None
        self.t0 = time.monotonic() - 1.0  # timestamps from 1000 ms: the server echoes each in its reply frames

    @classmethod
    async def open(cls, url: str) -> Live:
        ws = await connect(url, max_size=None)
        await ws.send(json.dumps({"type": "hello", "version": 1}))
        while True:
            msg = json.loads(await ws.recv())
            if msg["type"] == "ready":
                return cls(ws, msg)

    def now_ms(self) -> int:
        return int((time.monotonic() - self.t0) * 1000)

    async def talk(self, frames: int, pcm: np.ndarray) -> list[int]:
        """Stream `frames` 20 ms frames in real time; the round trip of each audio frame that came back, in ms."""
        latencies = []
        try:
            for i in range(frames):
                await self.ws.send(pcm_frame(pcm[(i % 40) * 480 : (i % 40 + 1) * 480], i, self.now_ms()))
                await asyncio.sleep(0.02)
                while True:  # what has come back so far
                    try:
                        msg = await asyncio.wait_for(self.ws.recv(), 0.001)
                    except TimeoutError:
                        break
                    if isinstance(msg, bytes):
                        self.back += 1
                        frame = parse_binary(msg)
                        if frame.timestamp:
                            latencies.append(self.now_ms() - frame.timestamp)
        except ConnectionClosed as e:
            self.closed = e.rcvd.code if e.rcvd is not None else 1006
        return latencies


@pytest.mark.slow
def test_a_killed_replica_closes_its_sessions_which_reconnect_to_the_other(url, clip):
    async def main():
        sessions = [await Live.open(url) for _ in range(6)]
        pids = {s.ready["worker"] for s in sessions}
        if len(pids) < 2:  # the router may put six on one replica; open more until both hold some
            for _ in range(10):
                sessions.append(await Live.open(url))
                pids = {s.ready["worker"] for s in sessions}
                if len(pids) == 2:
                    break
        assert len(pids) == 2
        victim = sessions[0].ready["worker"]
        gone = [s for s in sessions if s.ready["worker"] == victim]
        kept = [s for s in sessions if s.ready["worker"] != victim]
        lat_before = await asyncio.gather(*(s.talk(100, clip) for s in sessions))
        before = {id(s): s.back for s in sessions}
        os.kill(victim, signal.SIGKILL)
        lat_after = await asyncio.gather(*(s.talk(100, clip) for s in sessions))
        # The surviving replica's sessions, before and after the kill (a figure for the docs, not a check).
        for name, lat in (("before", lat_before), ("after", lat_after)):
            ms = np.concatenate([lat[i] for i, s in enumerate(sessions) if s in kept] or [[0]])
            print(
                f"kept sessions' round trip {name} the kill: p50 {np.percentile(ms, 50):.0f} ms, "
                f"p95 {np.percentile(ms, 95):.0f} ms ({ms.size} frames, {len(kept)} sessions)"
            )
        again = [await Live.open(url) for _ in gone]  # the clients of the dead replica come back
        await asyncio.gather(*(s.talk(25, clip) for s in again))
        for s in sessions + again:
            await s.ws.close()
        return victim, gone, kept, before, again

    victim, gone, kept, before, again = run(main())
    assert all(s.closed is not None for s in gone), [s.closed for s in gone]
    assert all(s.closed is None and s.back > before[id(s)] + 50 for s in kept), "the other replica's sessions went on"
    assert all(s.ready["worker"] != victim and s.closed is None and s.back > 0 for s in again)
    print(f"close codes seen by the dead replica's clients: {sorted({s.closed for s in gone})}")


@pytest.mark.slow
def test_webrtc_signaling_through_the_ingress_media_straight_to_the_replica(url):
    from talkstream.bench.webrtc import RATE, rtc_session

    speech = load_audio(SAMPLE_WAV, RATE)[: 2 * RATE]
    held: set[int] = set()

    def note_ports(events: list[dict]) -> bool:  # while the session is up: the UDP ports its replica holds
        ready = [e for e in events if e.get("type") == "ready"]
        if ready and not held:
            held.update(udp_ports(ready[0]["worker"]))
        return False

    r = run(rtc_session(url.replace("ws://", "http://").rstrip("/"), speech, 2.5, until=note_ports))
    assert r.of_type("ready") and not r.of_type("error") and r.pcm.size > RATE  # echoed
    ports = {int(line.split()[5]) for line in r.answer["sdp"].splitlines() if line.startswith("a=candidate")}
    assert ports and ports <= held, "the answer's ICE candidates are UDP ports of the replica that answered"


def test_the_serve_config_refuses_unknown_options():
    with pytest.raises(UserError, match="unknown talkstream options in the Serve config: tinker"):
        build({"tinker": "echo"})


def test_replicas_without_room_are_counted_with_what_is_missing():
    cpu = {"CPU": 1.0}
    why = unplaced_message("127.0.0.1:6379", 4, cpu, {"CPU": 2.0}, {"CPU": 0.0}, {"CPU": 2.0})  # 2 placed, none free
    assert why is not None and why.startswith("2 of 4 replicas cannot be placed on the Ray cluster at 127.0.0.1:6379")
    assert "the cluster has 2 CPU in all and 0 CPU free (missing 2 CPU)" in why
    assert unplaced_message("h:1", 2, cpu, {"CPU": 2.0}, {"CPU": 0.0}, {"CPU": 2.0}) is None  # both placed (warming up)
    assert unplaced_message("h:1", 4, cpu, {"CPU": 4.0}, {"CPU": 2.0}, {"CPU": 4.0}) is None  # room: being placed
