"""The protocol's state machine without a socket: messages and times in, commands out (as websockets' own
tests/test_protocol.py drives its protocol), and fuzzed: whatever arrives, only commands come back."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from talkstream.protocol import (
    FATAL,
    HEADER,
    Close,
    Error,
    Finish,
    Media,
    Pong,
    Reconfigure,
    ServerProtocol,
    ServerRules,
    Start,
    State,
    VideoFormat,
    pcm_frame,
    rgb_frame,
    token_frame,
)

RULES = ServerRules(num_codebooks=8, codebook_size=1024, codec_id="audio-v2", token=None,
                    max_message_bytes=1000, max_session_s=100.0, idle_timeout_s=10.0)


def hello(**kw) -> str:
    return json.dumps({"type": "hello", "version": 1, **kw})


def opened(rules: ServerRules = RULES, now: float = 0.0, **kw) -> ServerProtocol:
    p = ServerProtocol(rules, now)
    (start,) = p.receive(hello(**kw), now)
    assert isinstance(start, Start) and p.state is State.OPEN
    return p


def codes(commands) -> list[str]:
    return [c.code for c in commands if isinstance(c, Error)]


def test_hello_first_then_media_ping_and_end():
    p = ServerProtocol(RULES, 0.0)
    assert p.state is State.AWAITING_HELLO
    assert codes(p.receive(pcm_frame(np.zeros(480), 0, 0), 0.1)) == ["not_ready"]
    assert codes(p.receive('{"type": "ping"}', 0.2)) == ["not_ready"]
    assert p.state is State.AWAITING_HELLO  # neither is fatal: hello may still come
    (start,) = p.receive(hello(mode="chat", sample_rate=16_000), 0.3)
    assert start.hello.mode == "chat" and start.hello.sample_rate == 16_000 and p.hello is start.hello
    (media,) = p.receive(pcm_frame(np.zeros(320), 7, 99), 0.4)
    assert isinstance(media, Media) and (media.frame.seq, media.frame.timestamp) == (7, 99)
    assert p.receive('{"type": "ping", "t": [1, "x"]}', 0.5) == [Pong([1, "x"])]
    assert p.receive('{"type": "end"}', 0.6) == [Finish(), Close("end")]
    assert p.closed and p.close_reason == "end"
    assert p.receive('{"type": "ping"}', 0.7) == [] and p.expire(1e9) == []  # nothing after the end


def test_a_second_hello_is_refused_and_the_session_goes_on():
    p = opened()
    assert codes(p.receive(hello(), 1.0)) == ["bad_config"] and p.state is State.OPEN


@pytest.mark.parametrize(
    "rules, fields, code",
    [
        (ServerRules(token="s3cret"), {}, "unauthorized"),
        (ServerRules(token="s3cret"), {"token": "wrong"}, "unauthorized"),
        (RULES, {"codec_id": "audio-v0"}, "codec_mismatch"),
        (RULES, {"version": 2}, "bad_version"),
    ],
    ids=["no-token", "wrong-token", "other-codec", "version"],
)
def test_fatal_hellos_close(rules, fields, code):
    p = ServerProtocol(rules, 0.0)
    out = p.receive(json.dumps({"type": "hello", "version": 1, **fields}), 0.0)
    assert out == [out[0], Close(code)] and out[0].code == code and out[0].fatal and out[0].message
    assert p.closed and p.hello is None
    assert p.receive(hello(), 0.1) == []  # a closed session takes nothing, not even a good hello


def test_the_right_token_and_codec_are_accepted():
    p = ServerProtocol(ServerRules(token="s3cret", codec_id="audio-v2"), 0.0)
    assert isinstance(p.receive(hello(token="s3cret", codec_id="audio-v2"), 0.0)[0], Start)


def test_echo_cancelled_is_kept_through_a_config():
    p = opened(echo_cancelled=True)
    assert p.hello.echo_cancelled is True
    (cmd,) = p.receive('{"type": "config", "codebooks": 4}', 1.0)
    assert cmd.hello.echo_cancelled is True and cmd.hello.codebooks == 4


def test_mid_session_config_changes_only_what_it_names():
    p = opened(codebooks=2, output=["tokens"])
    (cmd,) = p.receive('{"type": "config", "codebooks": 4, "sample_rate": 48000}', 1.0)
    assert isinstance(cmd, Reconfigure)
    assert (cmd.hello.codebooks, cmd.hello.sample_rate, cmd.hello.output) == (4, 48_000, ("tokens",))
    assert p.hello == cmd.hello
    # A refused config changes nothing: chat cannot take tokens, codebooks out of range.
    for bad in ('{"type": "config", "input": "tokens", "mode": "chat"}', '{"type": "config", "codebooks": 9}'):
        assert codes(p.receive(bad, 2.0)) == ["bad_config"] and p.hello == cmd.hello
    # What the session takes follows the settings in force.
    assert codes(p.receive(token_frame(np.zeros((4, 2)), 0, 0), 3.0)) == ["bad_header"]
    p.receive('{"type": "config", "input": "tokens"}', 4.0)
    assert isinstance(p.receive(token_frame(np.zeros((4, 2)), 0, 0), 5.0)[0], Media)
    assert codes(p.receive(pcm_frame(np.zeros(10), 0, 0), 6.0)) == ["bad_header"]


def test_too_large_is_refused_and_the_session_goes_on():
    p = opened()
    assert codes(p.receive(b"x" * 1001, 1.0)) == ["too_large"] and p.state is State.OPEN
    assert codes(p.receive("x" * 1001, 1.0)) == ["too_large"]


def test_session_too_long_and_idle_timeout_from_the_clock():
    p = opened(now=5.0)
    assert p.deadline() == 15.0  # idle first: 10 s after the last message
    assert p.expire(14.9) == []
    p.receive('{"type": "ping"}', 14.0)  # a message moves the idle deadline
    assert p.deadline() == 24.0
    out = p.expire(24.0)
    assert codes(out) == ["idle_timeout"] and out[-1] == Close("idle_timeout") and p.closed

    p = opened(now=0.0)
    for t in range(0, 100, 5):  # a busy session: never idle, but it may not last for ever
        assert isinstance(p.receive(pcm_frame(np.zeros(10), t, t), float(t))[0], Media)
    assert p.deadline() == 100.0
    out = p.receive(pcm_frame(np.zeros(10), 0, 0), 100.5)  # the first message past the limit ends it
    assert codes(out) == ["session_too_long"] and out[-1] == Close("session_too_long")


def test_media_by_another_way_keeps_the_session_alive():
    p = opened()
    p.activity(9.0)  # a WebRTC microphone packet
    assert p.expire(12.0) == [] and p.deadline() == 19.0


def test_fail_reports_once_and_closes():
    p = opened()
    assert p.fail("internal", "stream stopped: boom") == [Error("internal", "stream stopped: boom"), Close("internal")]
    assert p.fail("internal", "again") == [] and p.receive('{"type": "ping"}', 1.0) == []


def test_a_failure_while_draining_after_end_is_reported_once():
    p = opened()
    assert p.receive('{"type": "end"}', 1.0) == [Finish(), Close("end")]
    assert p.fail("internal", "stream stopped: boom") == [Error("internal", "stream stopped: boom")]
    assert p.fail("internal", "again") == []


def test_video_frames_follow_the_server_and_the_settings():
    rgb = rgb_frame(np.zeros((16, 16, 3), np.uint8), 0, 0)
    assert codes(opened().receive(rgb, 1.0)) == ["bad_header"]  # this server has no video codec
    with_video = ServerRules(video=VideoFormat((16, 16), 4, 10))
    p = opened(with_video)
    assert isinstance(p.receive(rgb, 1.0)[0], Media)
    p.receive('{"type": "config", "video_input": "tokens"}', 2.0)
    assert "video_input 'tokens'" in p.receive(rgb, 3.0)[0].message


# -- fuzzing: arbitrary input never raises, only commands come out ---------------------------------------------
FIELDS = ["type", "version", "mode", "sample_rate", "codebooks", "output", "input", "token", "codec_id",
          "video_input", "video_output", "echo_cancelled", "t"]
VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 50_000) | st.sampled_from(
        ["hello", "config", "end", "ping", "chat", "codec", "pcm", "tokens", "rgb", "s3cret", "audio-v2"]
    ) | st.text(max_size=6),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.sampled_from(FIELDS), c, max_size=4),
    max_leaves=8,
)
MESSAGES = st.one_of(
    st.fixed_dictionaries({"type": st.sampled_from(["hello", "config", "end", "ping", "x"])},
                          optional={k: VALUES for k in FIELDS[1:]}).map(json.dumps),
    st.builds(lambda v: hello(**v), st.dictionaries(st.sampled_from(FIELDS[2:]), VALUES, max_size=3)),
    st.text(max_size=40),
    st.binary(max_size=40),
    st.builds(lambda kind, k, flags, n: HEADER.pack(kind, 1, k, flags, 0, 0) + bytes(n),
              st.integers(0, 5), st.integers(0, 9), st.integers(0, 255), st.integers(0, 1100)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(MESSAGES, st.floats(0, 30)), max_size=12),
       st.sampled_from([RULES, ServerRules(token="s3cret", video=VideoFormat((4, 4), 4, 10), max_message_bytes=200,
                                           max_session_s=50.0, idle_timeout_s=20.0)]))
def test_arbitrary_input_only_ever_gives_commands(steps, rules):
    p, now, started, closes = ServerProtocol(rules, 0.0), 0.0, 0, 0
    for data, dt in steps:
        now += dt
        was_closed = p.closed
        out = p.expire(now) + p.receive(data, now)
        assert all(isinstance(c, (Start, Reconfigure, Media, Pong, Error, Finish, Close)) for c in out)
        if was_closed:
            assert out == []
        for c in out:
            if isinstance(c, Error):
                assert c.code and c.message and isinstance(c.message, str)
        fatal = [c for c in out if isinstance(c, Error) and c.code in FATAL]
        if fatal or Finish() in out:
            assert isinstance(out[-1], Close) and p.closed  # a fatal error or the end closes, last
        if any(isinstance(c, (Media, Reconfigure, Pong)) for c in out):
            assert p.hello is not None
        started += sum(isinstance(c, Start) for c in out)
        closes += sum(isinstance(c, Close) for c in out)
        assert started <= 1 and closes <= 1  # hello opens a session once; it closes once
    # The state is what the commands said: closed after a Close, open after a Start, else still awaiting hello.
    assert p.state is (State.CLOSED if closes else State.OPEN if started else State.AWAITING_HELLO)
