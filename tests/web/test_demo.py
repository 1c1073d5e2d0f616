"""`talkstream demo` (Gradio) driven by gradio_client against the running app, as a browser's requests would be."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("gradio", reason="the demo needs gradio: pip install 'talkstream[demo]'")
gradio_client = pytest.importorskip("gradio_client", reason="the demo test needs gradio_client")

from talkstream.bench.metrics import stoi  # noqa: E402
from talkstream.demo import build_demo  # noqa: E402
from tests.conftest import speechlike  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def launch():
    apps = []

    def start(**kwargs) -> gradio_client.Client:
        demo = build_demo(**kwargs)
        port = _free_port()
        demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
        apps.append(demo)
        return gradio_client.Client(f"http://127.0.0.1:{port}/", verbose=False)

    yield start
    for demo in apps:
        demo.close()


def test_codec_tab_round_trip(launch, tmp_path):
    from talkstream.checkpoint import load_audio_codec

    x = speechlike(1.5, sr=16_000)  # another rate than the codec's: the app resamples
    sf.write(tmp_path / "in.wav", np.stack([x, x], 1), 16_000)  # and downmixes stereo
    client = launch(codec=load_audio_codec(), chat_fn=None, chat_unavailable="not needed here")
    audio, summary, spec_in, spec_out = client.predict(
        gradio_client.handle_file(str(tmp_path / "in.wav")), 4, api_name="/roundtrip"
    )
    y, sr = sf.read(audio)
    assert sr == 24_000 and abs(y.size - 1.5 * 24_000) <= 1
    from talkstream.audio_io import load_audio

    assert stoi(load_audio(tmp_path / "in.wav", 24_000), y.astype(np.float32), 24_000) > 0.5
    assert "4 codebooks: 3.00 kbps" in summary and "PESQ-WB" in summary and "STOI 0." in summary
    from PIL import Image

    a, b = (np.asarray(Image.open(p["path"] if isinstance(p, dict) else p)) for p in (spec_in, spec_out))
    assert a.shape == b.shape and a.shape[0] == 256 and a.shape[1] > 200
    assert a.std() > 10 and not np.array_equal(a, b)  # real pictures, and the codec changed something


def test_codec_tab_refuses_no_audio(launch):
    client = launch(codec=None, chat_fn=None, chat_unavailable="not needed here")
    with pytest.raises(Exception, match="record or upload"):
        client.predict(None, 8, api_name="/roundtrip")


def test_chat_tab_without_models_says_so(launch, tmp_path):
    sf.write(tmp_path / "q.wav", speechlike(0.5), 24_000)
    client = launch(chat_fn=None, chat_unavailable="ImportError: cannot import name 'answer_wav'")
    transcript, reply, audio, status = client.predict(
        gradio_client.handle_file(str(tmp_path / "q.wav")), api_name="/chat"
    )
    assert transcript == "" and reply == "" and audio is None
    assert "not available" in status and "answer_wav" in status


def test_chat_tab_calls_the_models_answer(launch, tmp_path):
    heard = {}

    def answer_wav(pcm, sr):
        heard["seconds"] = pcm.size / sr
        return "hello there", "hi, how can I help?", 0.1 * np.sin(np.arange(8000) / 5.0), 16_000

    sf.write(tmp_path / "q.wav", speechlike(0.5), 24_000)
    client = launch(chat_fn=answer_wav)
    transcript, reply, audio, status = client.predict(
        gradio_client.handle_file(str(tmp_path / "q.wav")), api_name="/chat"
    )
    assert abs(heard["seconds"] - 0.5) < 0.01
    assert (transcript, reply, status) == ("hello there", "hi, how can I help?", "ok")
    y, sr = sf.read(audio)
    assert sr == 16_000 and y.size == 8000 and Path(audio).is_file()


@pytest.mark.parametrize("fmt", ["mp3", "flac"])
def test_codec_tab_reads_compressed_uploads_without_system_ffmpeg(launch, tmp_path, fmt):
    """MP3 and FLAC uploads are read by PyAV (the app asks Gradio for the file, not for decoded samples), and a
    damaged upload is a one-line message in the page, not a traceback."""
    import av

    from talkstream.checkpoint import load_audio_codec

    x = speechlike(1.5, sr=24_000)
    path = tmp_path / f"in.{fmt}"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mp3" if fmt == "mp3" else "flac", rate=24_000, layout="mono")
        frame = av.AudioFrame.from_ndarray((x * 32767).astype(np.int16)[None], format="s16", layout="mono")
        frame.sample_rate = 24_000
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    client = launch(codec=load_audio_codec(), chat_fn=None, chat_unavailable="not needed here")
    audio, summary, _, _ = client.predict(gradio_client.handle_file(str(path)), 2, api_name="/roundtrip")
    y, sr = sf.read(audio)
    assert sr == 24_000 and abs(y.size - x.size) < 0.1 * x.size
    assert "2 codebooks" in summary
    bad = tmp_path / f"bad.{fmt}"
    bad.write_bytes(b"not audio at all" * 10)
    with pytest.raises(Exception, match="not a readable audio file|contains no audio samples"):
        client.predict(gradio_client.handle_file(str(bad)), 2, api_name="/roundtrip")
