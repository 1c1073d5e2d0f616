"""`talkstream serve --workers N` as users start it: sessions spread over the workers on one port, each works, the
metrics add up across workers, a worker that dies is reported and replaced, and a signal stops them all."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from talkstream.audio_io import load_audio
from talkstream.cli import main
from talkstream.client import stream_audio
from talkstream.data import SAMPLE_WAV
from talkstream.errors import UserError
from talkstream.services.workers import cgroup_cpu_limit, reserve_port


class Served:
    """`talkstream serve` in its own process group (as from a terminal), its output in a file (a pipe could fill and
    block it)."""

    def __init__(self, *args: str):
        self.log = tempfile.NamedTemporaryFile("w+", suffix=".log")
        cmd = [sys.executable, "-m", "talkstream.cli", "serve", "--port", "0", *args]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def output(self) -> str:
        return Path(self.log.name).read_text()

    def wait_for(self, pattern: str, timeout: float = 300) -> re.Match:
        end = time.monotonic() + timeout  # the workers warm up their models side by side on a busy CPU
        while time.monotonic() < end:
            m = re.search(pattern, self.output())
            if m:
                return m
            assert self.proc.poll() is None, self.output()
            time.sleep(0.3)
        raise AssertionError(f"no {pattern!r} in {timeout} s:\n{self.output()}")

    def workers(self) -> set[int]:
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        return {int(c) for c in children if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()}

    def stop(self, ctrl_c: bool = False) -> int:
        if ctrl_c:  # a terminal's Ctrl-C: SIGINT to the whole process group, the workers included
            os.killpg(self.proc.pid, signal.SIGINT)
        else:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(60)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            self.final_output = self.output()
            self.log.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is gone too


async def _sessions(url: str, n: int, clip) -> list:
    async def one(i: int):
        await asyncio.sleep(0.02 * i)  # callers arrive one by one, each from its own port
        return await stream_audio(url, clip, 24_000, realtime=True, tail_s=0.3)

    return await asyncio.gather(*(one(i) for i in range(n)))


@pytest.mark.slow
def test_two_workers_share_the_port_and_stop_together():
    clip = load_audio(SAMPLE_WAV, 24_000)[:24_000]  # one second each
    served = Served("--workers", "2", "--no-http", "--thinker", "echo", "--max-sessions", "32")
    try:
        m = served.wait_for(r"serving (ws://127\.0\.0\.1:(\d+)) .* with 2 workers \(pids (\d+), (\d+)\)")
        url, port, pids = m.group(1), int(m.group(2)), {int(m.group(3)), int(m.group(4))}
        assert served.workers() == pids

        results = asyncio.run(asyncio.wait_for(_sessions(url, 16, clip), 240))
        assert all(r.summary is not None and not r.errors() and r.pcm.size > 0.5 * clip.size for r in results)
        # The kernel spread the connections: both workers hold sessions (all 16 on one: 2 in 65,536).
        assert {r.ready["worker"] for r in results} == pids
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        assert re.search(r"^talkstream_sessions_total 16\.0$", metrics, re.M), "every worker's sessions are counted"
        assert re.search(r"^talkstream_sessions_active 0\.0$", metrics, re.M)

        # A worker killed outright: reported, replaced, and the port keeps serving.
        dead = min(pids)
        os.kill(dead, signal.SIGKILL)
        served.wait_for(rf"worker \d \(pid {dead}\) died \(killed by SIGKILL\)")
        served.wait_for(r"worker \d is back \(pid (\d+)\)")
        now = served.workers()
        assert dead not in now and len(now) == 2
        results = asyncio.run(asyncio.wait_for(_sessions(url, 4, clip), 120))
        assert all(r.summary is not None and not r.errors() for r in results)
        assert {r.ready["worker"] for r in results} <= now
    except BaseException:
        print(served.output())
        raise
    finally:
        code = served.stop()
    assert code == 0, served.final_output
    assert not any(_alive(p) for p in now), "every worker stopped with the supervisor"


async def _conversation_on_each_worker(url: str, pids: set[int], clip, kill_after_s: float):
    """One chat conversation held open on each worker (connections are opened until each worker has one; the rest
    are closed), speaking in real time; `kill_after_s` in, one worker is killed. Per worker: how its conversation
    ended ("summary", or "closed" and how long after the kill) and whether any error event came."""
    import json

    from websockets.asyncio.client import connect

    from talkstream.protocol import PROTOCOL_VERSION, pcm_frame

    hello = {"type": "hello", "version": PROTOCOL_VERSION, "mode": "chat", "sample_rate": 24_000, "output": ["pcm"]}
    held: dict[int, object] = {}
    for _ in range(40):
        ws = await connect(url)
        await ws.send(json.dumps(hello))
        ready = json.loads(await ws.recv())
        assert ready["type"] == "ready", ready
        if ready["worker"] in held:
            await ws.close()
        else:
            held[ready["worker"]] = ws
        if set(held) == pids:
            break
    assert set(held) == pids, "the kernel gave every connection to one worker 40 times"
    victim = min(pids)
    killed_at: list[float] = []

    async def talk(pid: int, ws) -> dict:
        loop = asyncio.get_running_loop()
        out = {"errors": [], "ended": None, "after_kill_s": None}
        t0 = loop.time()
        try:
            for i, j in enumerate(range(0, clip.size, 480)):
                await asyncio.sleep(max(0.0, t0 + i * 0.02 - loop.time()))
                await ws.send(pcm_frame(clip[j : j + 480], i, 0))
            await ws.send(json.dumps({"type": "end"}))
            async for msg in ws:
                if isinstance(msg, str):
                    event = json.loads(msg)
                    if event["type"] == "error":
                        out["errors"].append(event["code"])
                    if event["type"] == "summary":
                        out["ended"] = "summary"
                        break
        except Exception:  # the connection went with its worker
            out["ended"] = "closed"
            out["after_kill_s"] = loop.time() - killed_at[0] if killed_at else None
        finally:
            await ws.close()
        return out

    async def kill() -> None:
        await asyncio.sleep(kill_after_s)
        killed_at.append(asyncio.get_running_loop().time())
        os.kill(victim, signal.SIGKILL)

    results = await asyncio.gather(*(talk(pid, ws) for pid, ws in held.items()), kill())
    return victim, dict(zip(held, results[:-1], strict=True))


@pytest.mark.slow
def test_a_worker_killed_mid_conversation_closes_its_client_and_spares_the_others():
    """A worker killed outright while a conversation on it and one on another worker are speaking: its client's
    connection closes at once (no hang; a dead process can send no error event), the other conversation goes on to
    its summary without an error, and the supervisor replaces the dead worker."""
    clip = np.tile(load_audio(SAMPLE_WAV, 24_000), 3)[: 6 * 24_000]
    served = Served("--workers", "2", "--no-http", "--thinker", "echo")
    try:
        m = served.wait_for(r"serving (ws://127\.0\.0\.1:(\d+)) .* with 2 workers \(pids (\d+), (\d+)\)")
        url, pids = m.group(1), {int(m.group(3)), int(m.group(4))}
        victim, ended = asyncio.run(asyncio.wait_for(_conversation_on_each_worker(url, pids, clip, 2.0), 120))
        (other,) = pids - {victim}
        assert ended[victim]["ended"] == "closed" and ended[victim]["after_kill_s"] < 2.0, ended
        assert ended[other] == {"errors": [], "ended": "summary", "after_kill_s": None}, ended
        served.wait_for(r"worker \d is back \(pid (\d+)\)")
        assert victim not in served.workers() and len(served.workers()) == 2
    except BaseException:
        print(served.output())
        raise
    finally:
        served.stop()


@pytest.mark.slow
def test_ctrl_c_stops_the_supervisor_and_every_worker_cleanly():
    served = Served("--workers", "2", "--no-http", "--thinker", "echo")
    try:
        served.wait_for(r"with 2 workers")
        pids = served.workers()
    finally:
        code = served.stop(ctrl_c=True)
    out = served.final_output
    assert "talkstream serving" in out
    assert code == 0 and len(pids) == 2 and not any(_alive(p) for p in pids), out
    assert "Traceback" not in out and "died" not in out, out  # the workers' own exits are not taken for deaths


def udp_ports(pid: int) -> set[int]:
    """The UDP ports the sockets of process `pid` are bound to (from /proc: its fds' inodes in /proc/net/udp*)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            cols = line.split()
            if cols[9] in inodes:
                ports.add(int(cols[1].rsplit(":", 1)[1], 16))
    return ports


@pytest.mark.slow
def test_webrtc_media_goes_to_the_worker_that_answered_the_offer():
    from talkstream.bench.webrtc import RATE, rtc_session

    speech = load_audio(SAMPLE_WAV, RATE)[: 2 * RATE]
    served = Served("--workers", "2", "--http-port", "0", "--thinker", "echo")
    try:
        http_url = served.wait_for(r"web page and WebRTC: (http://\S+)/").group(1)
        owned: list[set[int]] = [set() for _ in range(4)]

        def note_ports(i: int):
            def until(events: list[dict]) -> bool:  # while session i is up: the UDP ports its worker holds
                ready = [e for e in events if e.get("type") == "ready"]
                if ready and not owned[i]:
                    owned[i] = udp_ports(ready[0]["worker"])
                return False

            return until

        async def main():
            return await asyncio.gather(*(rtc_session(http_url, speech, 3.5, until=note_ports(i)) for i in range(4)))

        results = asyncio.run(asyncio.wait_for(main(), 240))
    except BaseException:
        print(served.output())
        raise
    finally:
        served.stop()
    for r, held in zip(results, owned, strict=True):
        # echoed audio came back: more than half the 2 s sent (recording runs 3.5 s: a busy machine's ICE is slow)
        assert r.of_type("ready") and not r.of_type("error") and r.pcm.size > RATE
        ports = {int(line.split()[5]) for line in r.answer["sdp"].splitlines() if line.startswith("a=candidate")}
        assert ports and ports <= held, "the answer's ICE candidates are UDP ports of the worker that answered"


def test_workers_below_one_are_refused_in_one_line(capsys):
    assert main(["serve", "--port", "0", "--no-http", "--workers", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "talkstream: error: --workers must be at least 1 (got 0)"


@pytest.mark.parametrize("flag", ["--gather-ms", "--step-interval-ms"])
def test_a_negative_wait_is_refused_in_one_line(capsys, flag):
    assert main(["serve", "--port", "0", "--no-http", flag, "-1"]) == 2
    assert capsys.readouterr().err.strip() == f"talkstream: error: {flag} must be at least 0 (got -1)"


def test_a_port_in_use_is_refused_before_any_worker_starts():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(UserError, match=rf"cannot listen on 127\.0\.0\.1:{port}: .*another server"):
            reserve_port("127.0.0.1", port)


def test_a_reserved_port_is_shared_by_reuse_port_listeners_only():
    held = reserve_port("127.0.0.1", 0)
    port = held.getsockname()[1]
    try:
        with socket.socket() as worker:  # what each worker's server does
            worker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            worker.bind(("127.0.0.1", port))
            worker.listen()
        with pytest.raises(UserError, match="another server"):  # a second `serve` on the same port
            reserve_port("127.0.0.1", port)
    finally:
        held.close()


@pytest.mark.parametrize(
    "files, cores",
    [
        ({"cpu.max": "200000 100000\n"}, 2.0),
        ({"cpu.max": "150000 100000\n"}, 1.5),
        ({"cpu.max": "max 100000\n"}, None),
        ({"cpu/cpu.cfs_quota_us": "50000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 0.5),
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({}, None),
    ],
    ids=["v2-two", "v2-one-and-a-half", "v2-unlimited", "v1-half", "v1-unlimited", "no-cgroup"],
)
def test_a_container_cpu_quota_caps_the_default_worker_count(tmp_path, files, cores):
    """`docker run --cpus 2` on a big host: the affinity mask shows every core, the cgroup's quota says 2."""
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert cgroup_cpu_limit(tmp_path) == cores


@pytest.mark.parametrize("error, user", [(UserError("bad weights"), True), (ZeroDivisionError("a bug"), False)],
                         ids=["user-error", "bug"])
def test_a_worker_that_cannot_start_tells_its_supervisor_whether_the_user_can_fix_it(monkeypatch, error, user):
    """The supervisor raises a worker's UserError as one (one line from the CLI) and anything else as a bug."""
    import multiprocessing

    import torch

    from talkstream.services import workers
    from talkstream.services.app import ServerConfig

    async def fail(*args):
        raise error

    monkeypatch.setattr(workers, "_serve_worker", fail)
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)  # this process's threads stay as they are
    mine, theirs = multiprocessing.Pipe()
    with pytest.raises(SystemExit):
        workers._worker_main(ServerConfig(port=0), 3, theirs, 1)
    assert mine.recv() == ("error", 3, os.getpid(), str(error), user)
