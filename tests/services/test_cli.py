"""The CLI with the shipped weights: encode/decode files, and one-line errors (exit 2) for bad input."""

from __future__ import annotations

import importlib
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from talkstream.audio_io import load_audio
from talkstream.bench.metrics import stoi
from talkstream.cli import main
from tests.conftest import speechlike


def test_encode_decode_any_rate_and_channels(tmp_path, capsys):
    x = speechlike(1.2, sr=44_100)
    sf.write(tmp_path / "in.wav", np.stack([x, x], 1), 44_100)
    assert main(["encode", str(tmp_path / "in.wav"), str(tmp_path / "t.tsk"), "--codebooks", "4"]) == 0
    assert "4 codebooks" in capsys.readouterr().out
    assert main(["decode", str(tmp_path / "t.tsk"), str(tmp_path / "out.wav")]) == 0
    info = sf.info(tmp_path / "out.wav")
    assert info.samplerate == 24_000 and info.channels == 1
    assert abs(info.frames - 1.2 * 24_000) <= 1
    ref = load_audio(tmp_path / "in.wav", 24_000)
    assert stoi(ref, load_audio(tmp_path / "out.wav", 24_000), 24_000) > 0.5


def test_out_into_a_folder_that_does_not_exist_makes_it(tmp_path):
    sf.write(tmp_path / "in.wav", speechlike(0.3), 24_000)
    tokens, out = tmp_path / "new" / "t.tsk", tmp_path / "newer" / "deeper" / "out.wav"
    assert main(["encode", str(tmp_path / "in.wav"), str(tokens)]) == 0
    assert main(["decode", str(tokens), str(out)]) == 0
    assert sf.info(out).samplerate == 24_000


@pytest.mark.parametrize(
    "argv",
    [
        ["decode", "{tsk}", "{out}"],
        ["say", "hello", "--out", "{out}"],
        ["chat", "{wav}", "--out", "{out}"],
        ["client", "{wav}", "--out", "{out}", "--url", "ws://127.0.0.1:9"],
    ],
    ids=["decode", "say", "chat", "client"],
)
def test_an_out_that_cannot_be_written_is_refused_before_the_work(tmp_path, capsys, argv):
    """A file where --out's folder should be: one line at once (no model loaded, no server reached)."""
    wav, blocker = tmp_path / "in.wav", tmp_path / "blocker"
    sf.write(wav, speechlike(0.3), 24_000)
    blocker.write_text("a file, not a folder")
    tsk = tmp_path / "t.tsk"
    assert main(["encode", str(wav), str(tsk)]) == 0
    capsys.readouterr()
    assert main([a.format(tsk=tsk, wav=wav, out=blocker / "out.wav") for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("talkstream: error: cannot make the folder for") and "\n" not in err


@pytest.mark.parametrize(
    "content, argv, message",
    [
        (b"hello", ["encode", "{f}", "{o}"], "not a readable audio file"),
        (b"", ["encode", "{f}", "{o}"], "empty"),
        (b"TSK\x00\x01\xff\xff\x00\x00", ["decode", "{f}", "{o}"], "truncated header"),
        (b"x", ["decode", "{f}", "{o}"], "bad magic"),
        (None, ["encode", "{f}", "{o}", "--codebooks", "9"], "codebooks"),
        (None, ["encode", "{f}", "{o}", "--weights", "{f}.nowhere"], "not a talkstream checkpoint"),
        (None, ["serve", "--port", "0", "--no-http", "--thinker", "echo", "--video-weights", "{f}.nowhere"],
         "not a talkstream checkpoint"),
        (None, ["train", "ears", "--data", "{f}.nowhere", "--run", "{o}"], "talkstream data ears"),
        (None, ["data", "ears", "--out", "{o}", "--shard", "2", "--shards", "2"], "--shard must be in 0..1"),
        (None, ["train", "thinker", "--data", "{f}.nowhere", "--run", "{o}"], "talkstream data model"),
        (None, ["serve", "--port", "0", "--no-http", "--thinker", "openai", "--thinker-url", "ftp://x"], "http(s)"),
    ],
    ids=["text-as-audio", "empty-audio", "truncated-tsk", "not-tsk", "too-many-codebooks", "missing-weights",
         "missing-video-weights", "ears-without-data", "ears-shard-out-of-range", "thinker-without-data",
         "thinker-url-not-http"],
)
def test_user_errors_are_one_line(tmp_path, capsys, content, argv, message):
    """content None: a valid WAV, so the error comes from the options."""
    f = tmp_path / "input.wav"
    if content is None:
        sf.write(f, speechlike(0.2), 24_000)
    else:
        f.write_bytes(content)
    assert main([a.format(f=f, o=tmp_path / "out") for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("talkstream: error:") and message in err and "\n" not in err
    assert not (tmp_path / "out").exists()


def test_a_user_error_with_verbose_shows_its_traceback_too(tmp_path, capsys):
    (tmp_path / "x.tsk").write_bytes(b"x")
    assert main(["-v", "decode", str(tmp_path / "x.tsk"), str(tmp_path / "o.wav")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("talkstream: error:")


def test_a_bug_is_not_a_user_error_its_traceback_is_printed(tmp_path, monkeypatch):
    """Any exception that is not a UserError (here a ValueError, as a bug deep inside would raise) propagates: the
    interpreter prints its traceback and exits 1."""
    cli_main = importlib.import_module("talkstream.cli.main")  # the module (talkstream.cli.main is the function)

    def broken(args):
        raise ValueError("an internal bug")

    monkeypatch.setattr(cli_main, "cmd_decode", broken)
    with pytest.raises(ValueError, match="an internal bug"):
        main(["decode", str(tmp_path / "x.tsk"), str(tmp_path / "o.wav")])
    bug = ("import importlib; m = importlib.import_module('talkstream.cli.main'); m.cmd_decode = lambda a: 1 / 0; "
           "m.main(['decode', 'a', 'b'])")
    out = subprocess.run([sys.executable, "-c", bug], capture_output=True, text=True)
    assert out.returncode == 1 and "Traceback" in out.stderr and "ZeroDivisionError" in out.stderr


def test_wrong_codec_id_is_refused(tmp_path, capsys):
    from talkstream.codecs.container import write_tokens

    write_tokens(
        tmp_path / "x.tsk",
        np.zeros((2, 5), np.int64),
        {"kind": "audio", "codec_id": "someone-elses-codec", "codebook_size": 1024, "sample_rate": 24_000},
    )
    assert main(["decode", str(tmp_path / "x.tsk"), str(tmp_path / "o.wav")]) == 2
    assert "someone-elses-codec" in capsys.readouterr().err
    assert not (tmp_path / "o.wav").exists()


def test_help_explains_every_subcommand():
    out = subprocess.run([sys.executable, "-m", "talkstream.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for cmd in ("encode", "decode", "roundtrip", "train", "bench", "data"):
        assert cmd in out.stdout


def test_client_command_against_a_running_server(tmp_path, capsys):
    import asyncio
    import threading

    from talkstream.data import SAMPLE_WAV
    from talkstream.services.app import ServerConfig, TalkstreamServer

    loop = asyncio.new_event_loop()
    server = TalkstreamServer(ServerConfig(port=0, thinker="echo"))
    loop.run_until_complete(server.start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        out = tmp_path / "new" / "back.wav"  # a folder that does not exist yet
        assert main(["client", str(SAMPLE_WAV), "--out", str(out), "--url", server.url, "--tail", "0.5"]) == 0
        assert "s of audio back; took " in capsys.readouterr().out
        assert abs(sf.info(out).duration - sf.info(SAMPLE_WAV).duration) < 0.1
        # --fast: slowed by the server, never dropped (issue 36): every sample back, and how long it took.
        assert main(["client", str(SAMPLE_WAV), "--out", str(out), "--url", server.url, "--fast"]) == 0
        printed = capsys.readouterr().out
        seconds = f"{sf.info(SAMPLE_WAV).duration:.2f}"
        assert f"sent {seconds} of {seconds} s; {seconds} s of audio back; took " in printed, printed
        assert "lost: nothing" in printed and "older server" not in printed
        assert main(["client", str(SAMPLE_WAV), "--out", str(out), "--url", server.url, "--codebooks", "12"]) == 2
        assert "bad_config" in capsys.readouterr().err
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def test_client_to_nowhere_is_a_one_line_error(tmp_path, capsys):
    import socket

    from talkstream.data import SAMPLE_WAV

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again when the block ends: nothing listens there
    assert main(["client", str(SAMPLE_WAV), "--out", str(tmp_path / "o.wav"), "--url", f"ws://127.0.0.1:{port}"]) == 2
    assert "cannot reach" in capsys.readouterr().err
    assert main(["client", str(SAMPLE_WAV), "--out", str(tmp_path / "o.wav"), "--url", "http://nonsense"]) == 2
    assert "cannot reach" in capsys.readouterr().err


@pytest.mark.parametrize("given, thinker, want", [(None, "builtin", 3), (None, "openai", 3), (None, "echo", None),
                                                   (None, "transcribe", None), (0, "builtin", None), (8, "echo", 8)])
def test_max_conversations_defaults_to_what_a_worker_holds_when_the_talker_speaks(given, thinker, want):
    from types import SimpleNamespace

    from talkstream.cli.main import _max_conversations

    assert _max_conversations(SimpleNamespace(max_conversations=given, thinker=thinker)) == want


def test_a_negative_conversation_limit_is_a_one_line_error(capsys):
    assert main(["serve", "--max-conversations", "-1", "--thinker", "echo"]) == 2
    assert "--max-conversations must be 0" in capsys.readouterr().err
