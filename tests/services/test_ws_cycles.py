"""Many short WebSocket sessions on a real server: nothing is left behind (sessions, tasks, file descriptors,
memory), each measured before and after in the test."""

from __future__ import annotations

import asyncio
import gc
import json
import os

import numpy as np
import pytest
from websockets.asyncio.client import connect

from talkstream.checkpoint import load_audio_codec
from talkstream.protocol import pcm_frame
from talkstream.services.app import ServerConfig, TalkstreamServer
from talkstream.streaming.vad import SileroVAD

pytestmark = pytest.mark.slow  # docs/tests.md: the fast tier is -m 'not slow'

CYCLES = 1000


@pytest.fixture(scope="module")
def models():
    return load_audio_codec(), SileroVAD()


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


async def settle(srv) -> None:
    """Let closed sessions finish freeing themselves (their handlers run on after the client has gone)."""
    for _ in range(200):
        if not srv.sessions and len(asyncio.all_tasks()) <= 2:
            break
        await asyncio.sleep(0.02)
    gc.collect()


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts file descriptors through /proc")
def test_a_thousand_connect_disconnect_cycles_leave_nothing_behind(models):
    codec, vad = models
    pcm = (np.sin(np.arange(480) / 5) * 0.3).astype(np.float32)

    async def cycle(srv, i: int) -> None:
        ws = await connect(srv.url)
        await ws.send(json.dumps({"type": "hello", "version": 1, "mode": ("codec", "chat")[i % 2]}))
        assert json.loads(await ws.recv())["type"] == "ready"
        await ws.send(pcm_frame(pcm, i, i))
        if i % 3 == 0:
            ws.transport.abort()  # gone without a close handshake
        else:
            await ws.close()

    async def main():
        async with TalkstreamServer(ServerConfig(port=0, thinker="echo"), codec=codec, vad=vad) as srv:
            for i in range(100):  # warm: first-use allocations (caches, pools, graphs) are not leaks
                await cycle(srv, i)
            await settle(srv)
            before = len(asyncio.all_tasks()), open_fds(), rss_mb()
            for i in range(CYCLES):
                await cycle(srv, i)
            await settle(srv)
            after = len(asyncio.all_tasks()), open_fds(), rss_mb()
            active = srv.metrics.sessions._value.get()
            return len(srv.sessions), active, before, after

    live, active, (tasks0, fds0, mb0), (tasks1, fds1, mb1) = asyncio.run(asyncio.wait_for(main(), 900))
    print(f"\n{CYCLES} cycles: tasks {tasks0} -> {tasks1}, fds {fds0} -> {fds1}, RSS {mb0:.1f} -> {mb1:.1f} MB")
    assert live == 0 and active == 0
    assert tasks1 <= tasks0, "tasks left running"
    assert fds1 <= fds0, "file descriptors left open"
    assert mb1 - mb0 < 25, f"memory grew by {mb1 - mb0:.1f} MB over {CYCLES} sessions"
