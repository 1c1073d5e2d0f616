"""`talkstream client`: TALKSTREAM_TOKEN, what was lost or cut (a non-zero exit when the stream ended early), the
chat turn's text and latency, and "n/a" where there is no figure."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest
import soundfile as sf

from talkstream.cli import main
from talkstream.client import StreamResult, report
from talkstream.services.app import ServerConfig, TalkstreamServer
from talkstream.services.session import Limits


class _Server:
    """A real server on loopback in a thread (torch backend, echo answerer: quick to start)."""

    def __init__(self, **config):
        self.loop = asyncio.new_event_loop()
        self.server = TalkstreamServer(ServerConfig(port=0, thinker="echo", backend="torch", **config))
        self.loop.run_until_complete(self.server.start())
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(30)

    def close(self) -> None:
        self.stop()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def speech(tmp_path):
    from tests.conftest import speechlike

    path = tmp_path / "in.wav"
    sf.write(path, speechlike(3.0), 24_000)
    return path


def test_token_from_the_environment_and_a_full_report(speech, tmp_path, capsys, monkeypatch):
    srv = _Server(limits=Limits(token="s3cret"))
    try:
        out = tmp_path / "back.wav"
        args = ["client", str(speech), "--out", str(out), "--url", srv.server.url, "--tail", "0.5"]
        monkeypatch.delenv("TALKSTREAM_TOKEN", raising=False)
        assert main(args) == 2
        assert "unauthorized" in capsys.readouterr().err
        monkeypatch.setenv("TALKSTREAM_TOKEN", "s3cret")
        assert main(args) == 0
        printed = capsys.readouterr().out
        assert "sent 3.00 of 3.00 s; 3.0" in printed and "lost: nothing" in printed
        assert "frame round trip: p50 " in printed and "n/a" not in printed
        assert abs(sf.info(out).duration - 3.0) < 0.1
    finally:
        srv.close()


def test_a_server_stopping_mid_stream_is_reported_and_exits_non_zero(speech, tmp_path, capsys):
    srv = _Server()
    try:
        threading.Timer(1.0, srv.stop).start()  # about a third of the way through the real-time stream
        out = tmp_path / "back.wav"
        assert main(["client", str(speech), "--out", str(out), "--url", srv.server.url]) == 2
        captured = capsys.readouterr()
        err = captured.err.strip()
        assert err.count("\n") == 0 and "the stream ended early" in err, err
        sent = float(err.split("after ")[1].split(" of ")[0])
        assert 0.3 < sent < 2.9  # what was sent before the cut, not the whole file
        assert out.exists() and sf.info(out).duration < 2.9  # what came back is kept
    finally:
        srv.close()


def _chat_result(**kw) -> StreamResult:
    events = [{"type": "vad", "state": "end"}, {"type": "reply", "state": "start"},
              {"type": "latency", "first_packet_ms": 83.4},
              {"type": "reply_text", "text": "four", "final": False},
              {"type": "reply_text", "text": "four.", "final": True},
              {"type": "transcript", "text": "what is two plus two", "final": True}]
    return StreamResult(ready={"mode": "chat"}, pcm=np.zeros(24_000, np.float32), tokens=np.zeros((8, 0), np.int64),
                        events=events, summary={"drops": 0}, sent_s=2.0, **kw)


def test_chat_report_gives_transcript_reply_and_the_replys_latency_not_a_frame_p50():
    lines = report(_chat_result(), 24_000, 2.0)
    assert "turn 1 heard: what is two plus two" in lines and "turn 1 reply: four." in lines
    assert "turn 1 reply latency (end of turn to first audio): 83 ms" in lines
    assert not any("p50" in line or "0.0 ms" in line for line in lines)


def test_no_sample_is_n_a_and_drops_are_reported():
    r = StreamResult(ready={"mode": "codec"}, pcm=np.zeros(0, np.float32), tokens=np.zeros((8, 0), np.int64),
                     summary={"drops": 730}, sent_s=602.0)
    lines = report(r, 24_000, 602.0)
    assert "frame round trip: n/a" in lines and "first audio back: n/a" in lines
    chat = report(StreamResult(ready={"mode": "chat"}, pcm=r.pcm, tokens=r.tokens, summary={}), 24_000, 1.0)
    assert any(line.startswith("no reply came") for line in chat) and not any("turn 1" in line for line in chat)
    assert "lost: 730 items dropped by the server (it fell behind)" in lines
