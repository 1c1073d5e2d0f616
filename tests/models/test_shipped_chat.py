"""The shipped Thinker-Talker end to end: CLI chat and say, the WebSocket chat mode, and clear errors."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import soundfile as sf

from talkstream.client import stream_audio
from talkstream.models.phonemes import speak
from talkstream.services.cli import main
from talkstream.services.ws import ServerConfig, TalkstreamServer


@pytest.fixture(scope="module")
def question(tmp_path_factory):
    """A question from the dialogue domain, in a voice the Thinker never heard (held out for evaluation)."""
    path = tmp_path_factory.mktemp("q") / "question.wav"
    sf.write(path, speak("what day comes after monday", "en-us+m8").audio, 24_000)
    return path


def test_say_speaks_text_of_a_plausible_length(tmp_path, capsys):
    out = tmp_path / "say.wav"
    assert main(["say", "The blue bicycle is near the station.", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "first packet after" in printed and "real-time factor" in printed
    audio, sr = sf.read(out)
    espeak_seconds = len(speak("the blue bicycle is near the station.").audio) / 24_000
    assert sr == 24_000 and 0.6 * espeak_seconds < len(audio) / sr < 1.6 * espeak_seconds
    assert np.sqrt(np.mean(audio**2)) > 0.01  # it speaks, not silence


def test_say_is_deterministic_for_a_seed(tmp_path):
    for name in ("a", "b"):
        assert main(["say", "seven", "--out", str(tmp_path / f"{name}.wav"), "--seed", "3"]) == 0
    assert np.array_equal(sf.read(tmp_path / "a.wav")[0], sf.read(tmp_path / "b.wav")[0])


def test_chat_answers_a_spoken_question(question, tmp_path, capsys):
    out = tmp_path / "reply.wav"
    assert main(["chat", str(question), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    heard = printed.split("heard:")[1].split("\n")[0].strip()
    reply = printed.split("reply:")[1].split("\n")[0].strip()
    assert heard and reply, printed
    assert "first packet after" in printed
    assert sf.info(out).duration > 0.3


def test_chat_with_a_video_answers_about_the_clip(tmp_path, capsys):
    """A spoken question about a clip (held-out voice, clip seed never trained on): the Thinker answers with a
    direction, which only the video can give."""
    from talkstream.codecs.video.files import write_video
    from talkstream.models.video_questions import DIRECTIONS, ball_clip, clip_to_uint8

    wav, clip = tmp_path / "q.wav", tmp_path / "ball.mp4"
    audio = speak("which way is the ball moving?", "en-us+m8").audio
    sf.write(wav, audio, 24_000)
    write_video(clip, list(clip_to_uint8(ball_clip("red", "left", round(len(audio) / 24_000 * 25), 7_000_123))), 25)
    assert main(["chat", str(wav), "--video", str(clip), "--out", str(tmp_path / "r.wav")]) == 0
    reply = capsys.readouterr().out.split("reply:")[1].split("\n")[0].strip()
    assert reply.rstrip(".") in DIRECTIONS, reply
    assert main(["chat", str(wav), "--video", str(wav), "--out", str(tmp_path / "r.wav")]) == 2  # not a video
    err = capsys.readouterr().err
    assert "no video stream" in err and err.count("\n") == 1


@pytest.mark.parametrize("argv, message", [
    (["say", "!!!"], "nothing to say"),
    (["chat", "{bad}"], "not a readable audio file"),
    (["chat", "{q}", "--thinker", "openai"], "--thinker-url"),
    (["serve", "--thinker", "openai", "--port", "0"], "--thinker-url"),
])
def test_clear_errors(argv, message, question, tmp_path, capsys):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio at all")
    argv = [a.format(bad=bad, q=question) for a in argv] + ["--out", str(tmp_path / "o.wav")] * (argv[0] != "serve")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_websocket_chat_mode_answers_with_the_model():
    speech = speak("what is two plus three", "en-gb-x-rp+f5").audio
    silence = np.zeros(15_000, np.float32)

    async def run():
        server = TalkstreamServer(ServerConfig(port=0, thinker="builtin"))
        await server.start()
        try:
            return await stream_audio(server.url, np.concatenate([silence, speech, silence]), 24_000, mode="chat",
                                      realtime=False, tail_s=8)
        finally:
            await server.stop()

    r = asyncio.run(asyncio.wait_for(run(), 180))
    types = [e["type"] for e in r.events]
    for kind in ("latency", "reply_text", "transcript"):
        assert kind in types, types
    final = [e for e in r.events if e["type"] == "reply_text" and e["final"]]
    assert final and final[0]["text"]
    assert r.pcm.size > 0.3 * 24_000  # the spoken answer came back


def test_the_dual_track_is_off_unless_asked_for():
    from talkstream.models.chat import load_chat
    from talkstream.models.loaders import load_audio_codec
    from talkstream.services.cli import build_parser
    from talkstream.services.cli_model import serve_thinker_config

    codec = load_audio_codec()
    assert not load_chat(codec).speaker.use_hidden
    assert load_chat(codec, talker_hidden=True).speaker.use_hidden
    assert serve_thinker_config(build_parser().parse_args(["serve", "--talker-hidden"]))["talker_hidden"] is True
    assert build_parser().parse_args(["chat", "q.wav"]).talker_hidden is False
