"""The README's first command on a fresh machine: a new virtual environment, `pip install .` with no extras, then
`talkstream serve` answers a spoken chat turn over WebSocket and serves the page; the process loads libespeak-ng from
the espeakng-loader wheel, not from the system.

The environment gets the CPU build of torch first (`pip install torch==2.13.0`, the file this machine keeps on disk,
as .ci/run does): any other torch would download a multi-GB CUDA build. Everything else comes from the package index.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from talkstream.client import stream_audio
from talkstream.models.phonemes import speak

pytestmark = pytest.mark.slow  # docs/tests.md: the fast tier is -m 'not slow'

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pip(venv: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", *args],
                          capture_output=True, text=True, timeout=1500)


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory) -> Path:
    venv = tmp_path_factory.mktemp("fresh") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    torch = _pip(venv, "torch==2.13.0")
    if torch.returncode != 0:
        pytest.skip(f"no CPU build of torch 2.13.0 to install here: {torch.stderr.strip()[-200:]}")
    plain = _pip(venv, str(ROOT))
    assert plain.returncode == 0, plain.stderr[-2000:]
    return venv


def test_plain_install_serves_a_chat_turn_and_the_page(fresh_venv, tmp_path):
    ws_port, http_port = _free_port(), _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    server = subprocess.Popen(
        [str(fresh_venv / "bin" / "talkstream"), "serve", "--port", str(ws_port), "--http-port", str(http_port)],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        deadline = time.monotonic() + 300
        while True:  # the warm-up (models, ONNX graphs) takes a while on a CPU
            assert server.poll() is None, server.stdout.read()
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{ws_port}/healthz", timeout=2)
                break
            except OSError:
                assert time.monotonic() < deadline, "the server did not come up in 300 s"
                time.sleep(1)
        page = urllib.request.urlopen(f"http://127.0.0.1:{http_port}/", timeout=10).read().decode()
        assert "talkstream" in page.lower()
        silence = np.zeros(15_000, np.float32)
        audio = np.concatenate([silence, speak("what is two plus three", "en-us+m8").audio, silence])
        r = asyncio.run(asyncio.wait_for(
            stream_audio(f"ws://127.0.0.1:{ws_port}", audio, 24_000, mode="chat", realtime=True, tail_s=6), 120))
        finals = [e["text"] for e in r.events if e["type"] == "reply_text" and e["final"]]
        assert finals == ["two plus three is five."], r.events
        assert r.pcm.size > 0.3 * 24_000  # the answer was spoken
        # `serve` on a machine with several cores is a supervisor and its workers: the workers load the models.
        pids = [server.pid, *Path(f"/proc/{server.pid}/task/{server.pid}/children").read_text().split()]
        maps = "".join(Path(f"/proc/{p}/maps").read_text() for p in pids)
        espeak = {line.split()[-1] for line in maps.splitlines() if "libespeak-ng" in line}
        assert espeak and all(str(fresh_venv) in p and "espeakng_loader" in p for p in espeak), espeak
    finally:
        server.terminate()
        server.wait(timeout=30)
