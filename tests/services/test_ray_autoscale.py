"""Ray Serve's autoscaler follows live talkstream sessions: one replica at first, a second once the sessions per
replica pass the target, and new sessions go to the new one (a one-node local Ray cluster on loopback)."""

from __future__ import annotations

import asyncio
import os
import socket
import time

import pytest

ray = pytest.importorskip("ray", reason="ray[serve] is not installed: pip install 'talkstream[ray]'")
serve = pytest.importorskip("ray.serve", reason="ray[serve] is not installed: pip install 'talkstream[ray]'")

from talkstream.audio_io import load_audio  # noqa: E402
from talkstream.data import SAMPLE_WAV  # noqa: E402
from talkstream.services.app import ServerConfig  # noqa: E402
from talkstream.services.ray_serve import application  # noqa: E402
from tests.services.test_ray_serve import Live  # noqa: E402

pytestmark = pytest.mark.slow  # docs/tests.md: the fast tier is -m 'not slow'


@pytest.fixture(scope="module")
def url():
    quick_metrics = {f"RAY_SERVE_{who}_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "1" for who in ("REPLICA", "HANDLE")}
    os.environ.update(RAY_SERVE_PROXY_PREFER_LOCAL_NODE_ROUTING="0", **quick_metrics)  # the cluster inherits them
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    try:
        serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
        quick = {"target_ongoing_requests": 2, "look_back_period_s": 11, "upscale_delay_s": 1}
        serve.run(application(ServerConfig(thinker="echo"), max_replicas=2, autoscaling=quick), name="talkstream")
        yield f"ws://127.0.0.1:{port}/"
    finally:
        serve.shutdown()
        ray.shutdown()
        for k in ["RAY_SERVE_PROXY_PREFER_LOCAL_NODE_ROUTING", *quick_metrics]:
            os.environ.pop(k, None)


def running_replicas() -> int:
    states = serve.status().applications["talkstream"].deployments["TalkstreamReplica"].replica_states
    return states.get("RUNNING", 0)


def test_a_second_replica_comes_for_live_sessions_and_takes_new_ones(url):
    clip = load_audio(SAMPLE_WAV, 24_000)

    async def main():
        assert await asyncio.to_thread(running_replicas) == 1
        first = [await Live.open(url) for _ in range(6)]  # three times the target of 2 per replica
        end = time.monotonic() + 180  # the new replica warms up its models before it is RUNNING
        while await asyncio.to_thread(running_replicas) < 2:
            assert time.monotonic() < end, "Serve did not start a second replica for 6 live sessions"
            await asyncio.gather(*(s.talk(25, clip) for s in first))  # the sessions stay live meanwhile
        later = [await Live.open(url) for _ in range(4)]
        await asyncio.gather(*(s.talk(10, clip) for s in first + later))
        for s in first + later:
            await s.ws.close()
        return first, later

    first, later = asyncio.run(asyncio.wait_for(main(), 300))
    assert len({s.ready["worker"] for s in first}) == 1  # one replica held them all at first
    assert all(s.closed is None for s in first + later)
    assert {s.ready["worker"] for s in later} - {first[0].ready["worker"]}, "new sessions went to the new replica"
