"""The sans-I/O protocol: typed messages from bytes, error codes for everything else, never a crash."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from talkstream.protocol import (
    HEADER,
    KIND_RGB24,
    KIND_VIDEO_TOKENS,
    Config,
    End,
    Hello,
    Ping,
    ProtocolError,
    event,
    parse_binary,
    parse_text,
    pcm_frame,
    rgb_frame,
    token_frame,
    video_token_frame,
)


def test_hello_and_friends():
    h = parse_text(
        json.dumps(
            {
                "type": "hello",
                "version": 1,
                "mode": "chat",
                "sample_rate": 16000,
                "codebooks": 2,
                "output": ["pcm", "tokens"],
                "token": "s",
            }
        )
    )
    assert h == Hello(version=1, mode="chat", sample_rate=16000, codebooks=2, output=("pcm", "tokens"), token="s")
    assert parse_text('{"type": "config", "codebooks": 4}') == Config({"codebooks": 4})
    assert isinstance(parse_text('{"type": "end"}'), End)
    assert parse_text('{"type": "ping", "t": 5}') == Ping(5)


@pytest.mark.parametrize(
    "text, code",
    [
        ("not json", "bad_json"),
        ("[1, 2]", "bad_json"),
        ('{"no": "type"}', "bad_json"),
        ('{"type": "dance"}', "unknown_type"),
        ('{"type": "hello", "version": 7}', "bad_version"),
        ('{"type": "hello"}', "bad_version"),
        ('{"type": "hello", "version": 1, "sample_rate": 44}', "bad_config"),
        ('{"type": "hello", "version": 1, "sample_rate": true}', "bad_config"),
        ('{"type": "hello", "version": 1, "codebooks": 9}', "bad_config"),
        ('{"type": "hello", "version": 1, "mode": "karaoke"}', "bad_config"),
        ('{"type": "hello", "version": 1, "output": ["video"]}', "bad_config"),
        ('{"type": "hello", "version": 1, "token": 123}', "bad_config"),
        ('{"type": "hello", "version": 1, "echo_cancelled": "yes"}', "bad_config"),
        ('{"type": "hello", "version": 1, "echo_cancelled": 1}', "bad_config"),
        ('{"type": "hello", "version": 1, "realtime": 0}', "bad_config"),
        ('{"type": "hello", "version": 1, "realtime": null}', "bad_config"),
        ('{"type": "hello", "version": 1, "video_input": "jpeg"}', "bad_config"),
        ('{"type": "hello", "version": 1, "video_output": []}', "bad_config"),
        ('{"type": "config", "video_output": ["rgb", "pcm"]}', "bad_config"),
        ("[" * 100_000, "bad_json"),
    ],
)
def test_bad_text(text, code):
    with pytest.raises(ProtocolError) as e:
        parse_text(text)
    assert e.value.code == code and e.value.message


@pytest.mark.parametrize("given, parsed", [("", None), (', "echo_cancelled": true', True),
                                           (', "echo_cancelled": false', False), (', "echo_cancelled": null', None)],
                         ids=["absent", "true", "false", "null"])
def test_hello_echo_cancelled(given, parsed):
    """The client says whether it cancels its own echo; None leaves it to the transport (WebSocket: the server
    cancels it)."""
    assert parse_text('{"type": "hello", "version": 1' + given + "}").echo_cancelled is parsed


@pytest.mark.parametrize("given, parsed", [("", True), (', "realtime": true', True), (', "realtime": false', False)],
                         ids=["absent", "true", "false"])
def test_hello_realtime(given, parsed):
    """PCM input is live unless the hello says it is not (audio from a file: read at the server's pace)."""
    assert parse_text('{"type": "hello", "version": 1' + given + "}").realtime is parsed


def test_an_event_may_have_a_field_named_kind():
    assert json.loads(event("barge_in", kind="interruption")) == {"type": "barge_in", "kind": "interruption"}


def test_binary_roundtrips():
    x = np.linspace(-1, 1, 480, dtype=np.float32)
    f = parse_binary(pcm_frame(x, seq=7, timestamp=1234))
    assert (f.kind, f.seq, f.timestamp) == (1, 7, 1234)
    np.testing.assert_allclose(f.pcm(), x, atol=1 / 32768 + 1e-7)
    codes = np.random.default_rng(0).integers(0, 1024, (3, 5))
    f = parse_binary(token_frame(codes, 1, 2))
    np.testing.assert_array_equal(f.tokens(), codes)


@pytest.mark.parametrize(
    "data, code",
    [
        (b"\x01\x01", "bad_header"),
        (HEADER.pack(1, 2, 0, 0, 0, 0), "bad_header"),
        (HEADER.pack(1, 1, 0, 0, 0, 0) + b"\x00", "bad_header"),
        (HEADER.pack(9, 1, 0, 0, 0, 0), "unknown_kind"),
        (HEADER.pack(2, 1, 0, 0, 0, 0), "bad_header"),
        (HEADER.pack(2, 1, 3, 0, 0, 0) + b"\x00" * 4, "bad_header"),
    ],
    ids=["short", "version", "odd-pcm", "kind", "zero-codebooks", "ragged-tokens"],
)
def test_bad_binary(data, code):
    with pytest.raises(ProtocolError) as e:
        parse_binary(data)
    assert e.value.code == code


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=64))
def test_random_bytes_never_crash_the_binary_parser(data):
    try:
        f = parse_binary(data)
    except ProtocolError as e:
        assert e.code in {"bad_header", "unknown_kind"}
    else:
        (f.pcm() if f.kind == 1 else f.tokens())


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.text(max_size=80),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=8),
            lambda c: (
                st.lists(c, max_size=3)
                | st.dictionaries(
                    st.sampled_from(
                        ["type", "version", "mode", "sample_rate", "codebooks", "output", "input", "token"]
                        + ["video_input", "video_output"]
                    ),
                    c,
                    max_size=5,
                )
            ),
            max_leaves=10,
        ).map(json.dumps),
    )
)
def test_random_text_never_crashes_the_parser(text):
    try:
        parse_text(text)
    except ProtocolError as e:
        assert e.code in {"bad_json", "unknown_type", "bad_version", "bad_config"}


def test_token_values_are_checked_against_the_codebook():
    with pytest.raises(ProtocolError, match="out of range"):
        parse_binary(token_frame(np.full((2, 3), 1024), 0, 0), num_codebooks=8, codebook_size=1024)
    assert parse_binary(token_frame(np.full((2, 3), 1023), 0, 0), 8, 1024).tokens().max() == 1023


def test_video_fields_and_frames():
    h = parse_text('{"type": "hello", "version": 1, "video_input": "tokens", "video_output": "tokens"}')
    assert (h.video_input, h.video_output) == ("tokens", ("tokens",))
    assert parse_text('{"type": "hello", "version": 1}').video_output == ("rgb",)  # the default: the reconstruction
    rgb = np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    f = parse_binary(rgb_frame(rgb, seq=3, timestamp=99))
    assert (f.kind, f.codebooks, f.seq, f.timestamp) == (KIND_RGB24, 1, 3, 99)
    np.testing.assert_array_equal(f.rgb(), rgb)
    small = rgb[:64, :32]  # a server's own codec size is what frames are checked against
    np.testing.assert_array_equal(parse_binary(rgb_frame(small, 0, 0), video_frame_size=(64, 32)).rgb((64, 32)), small)
    tokens = np.random.default_rng(1).integers(0, 1000, (3, 256))
    f = parse_binary(video_token_frame(tokens, 0, 0))
    assert (f.kind, f.codebooks) == (KIND_VIDEO_TOKENS, 3)
    np.testing.assert_array_equal(f.video_tokens(), tokens)


@pytest.mark.parametrize(
    "data, message",
    [
        (rgb_frame(np.zeros((64, 64, 3), np.uint8), 0, 0), "one 128x128 frame"),
        (HEADER.pack(KIND_RGB24, 1, 2, 0, 0, 0) + bytes(128 * 128 * 3), "byte 2 says 2"),
        (HEADER.pack(KIND_VIDEO_TOKENS, 1, 1, 0, 0, 0) + bytes(2 * 255), "frames of 256 tokens"),
        (HEADER.pack(KIND_VIDEO_TOKENS, 1, 26, 0, 0, 0) + bytes(2 * 256 * 26), "1..25 frames"),
        (video_token_frame(np.full((1, 256), 1000), 0, 0), "out of range 0..999"),
    ],
    ids=["rgb-size", "rgb-count", "ragged-video-tokens", "too-many-video-frames", "video-token-range"],
)
def test_bad_video_frames(data, message):
    with pytest.raises(ProtocolError, match=message) as e:
        parse_binary(data)
    assert e.value.code == "bad_header"
