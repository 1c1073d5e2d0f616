"""Ten minutes of audio through `roundtrip` and `chat`: a clear result, bounded memory, nothing left behind."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from talkstream.checkpoint import save_checkpoint
from talkstream.codecs.audio.codec import AudioCodec
from tests.conftest import TINY

pytestmark = pytest.mark.slow  # docs/tests.md: the fast tier is -m 'not slow'


@pytest.fixture(scope="module")
def ten_minutes(tmp_path_factory) -> Path:
    """A tone gated on and off once a second with noise: about 600 'utterances', which crashed pesq's C code."""
    sr = 16_000
    t = np.arange(600 * sr) / sr
    gate = np.sin(2 * np.pi * t) > 0
    x = gate * (0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * np.random.default_rng(0).standard_normal(t.size))
    path = tmp_path_factory.mktemp("long") / "ten_minutes.wav"
    sf.write(path, x.astype(np.float32), sr, subtype="PCM_16")
    return path


# The child's own high-water mark (VmHWM belongs to the address space exec made): getrusage's ru_maxrss is carried
# over from the parent on Linux, so after a long test session it reports the pytest process's peak instead.
_CHILD = """
import sys
from talkstream.cli import main
rc = main(sys.argv[1:])
hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(f"peak_mb {int(hwm.split()[1]) / 1024:.0f}", file=sys.stderr)
sys.exit(rc)
"""


def _run(args: list[str], cwd: Path) -> tuple[subprocess.CompletedProcess, float]:
    """Run the CLI in a child process; returns it and its peak resident memory in MB."""
    p = subprocess.run([sys.executable, "-c", _CHILD, *args], capture_output=True, text=True, cwd=cwd, timeout=300)
    peaks = [float(line.split()[1]) for line in p.stderr.splitlines() if line.startswith("peak_mb ")]
    assert peaks, p.stderr
    return p, peaks[0]


def test_roundtrip_scores_ten_minutes_in_pieces_with_bounded_memory(ten_minutes, tmp_path):
    pytest.importorskip("pesq")
    pytest.importorskip("pystoi")
    torch.manual_seed(0)
    weights = save_checkpoint(AudioCodec(TINY).eval(), TINY.to_dict(), tmp_path / "w", "audio_codec")
    p, peak_mb = _run(["roundtrip", str(ten_minutes), "--codebooks", "2", "--weights", str(weights)], tmp_path)
    assert p.returncode == 0, p.stderr
    row = [line for line in p.stdout.splitlines() if line.split()[:1] == ["2"]]
    assert len(row) == 1 and np.isfinite(float(row[0].split()[2])) and "not kept" in row[0]
    print(f"roundtrip of 600 s: peak {peak_mb:.0f} MB")
    assert peak_mb < 900  # the whole file through the codec at once: 1.2 GB with this codec, 2.4 GB shipped
    assert sorted(x.name for x in tmp_path.iterdir()) == ["w"]  # no talkstream-out/ in the working folder


def test_chat_answers_the_first_30_s_of_ten_minutes_with_bounded_memory(ten_minutes, tmp_path):
    p, peak_mb = _run(["chat", str(ten_minutes), "--out", str(tmp_path / "reply.wav")], tmp_path)
    assert p.returncode == 0, p.stderr
    assert "is 600.0 s; a turn is at most 30 s, so chat answers its first 30 s" in p.stderr
    assert p.stdout.startswith("heard:") and "reply:" in p.stdout and "first packet after" in p.stdout
    assert sf.info(tmp_path / "reply.wav").duration > 0.1
    print(f"chat on 600 s: peak {peak_mb:.0f} MB")
    assert peak_mb < 1200  # the whole file as one turn peaked at 11.2 GB


def _rss_mb() -> float:
    line = next(x for x in open("/proc/self/status") if x.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


@pytest.mark.parametrize("mode", ["codec", "chat"])
def test_a_ten_minute_streaming_session_stays_bounded(mode):
    """Ten minutes of speech into one WebSocket session, sent as fast as the socket takes it: codec echo comes back
    and chat answers (what a live stream cannot keep up with is dropped and counted, turns are cut at 30 s); the
    server's memory does not grow with the stream."""
    import asyncio

    from talkstream.audio_io import load_audio
    from talkstream.checkpoint import load_audio_codec
    from talkstream.client import stream_audio
    from talkstream.data import SAMPLE_WAV
    from talkstream.services.app import ServerConfig, TalkstreamServer
    from talkstream.streaming.vad import SileroVAD

    speech = load_audio(SAMPLE_WAV, 24_000)
    audio = np.tile(speech, int(np.ceil(600 * 24_000 / speech.size)))[: 600 * 24_000]

    async def run():
        server = TalkstreamServer(ServerConfig(port=0, thinker="echo"), codec=load_audio_codec(), vad=SileroVAD())
        await server.start()
        try:
            before = _rss_mb()
            r = await stream_audio(server.url, audio, 24_000, mode=mode, realtime=False, tail_s=2)
            return r, before, _rss_mb()
        finally:
            await server.stop()

    r, before, after = asyncio.run(asyncio.wait_for(run(), 600))
    print(f"{mode}: 600 s streamed; process RSS {before:.0f} -> {after:.0f} MB")
    assert r.pcm.size > 0
    if mode == "chat":
        assert any(e["type"] == "reply" and e["state"] == "start" for e in r.events)
    assert after - before < 400  # ten minutes of 24 kHz float audio alone would be 58 MB per copy; no copy is kept
