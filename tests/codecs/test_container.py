"""The .tsk container: exact round trips, and a clear ContainerError for every kind of damage."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from talkstream.codecs.container import MAGIC, ContainerError, read_tokens, write_tokens

HEADER = {
    "kind": "audio",
    "codec_id": "test",
    "sample_rate": 24_000,
    "frame_rate": 75.0,
    "frame_size": 320,
    "codebook_size": 1024,
}


@settings(max_examples=40, deadline=None)
@given(
    k=st.integers(1, 8),
    f=st.integers(0, 50),
    size=st.sampled_from([2, 3, 256, 1000, 1024, 4096]),
    seed=st.integers(0, 2**31),
)
def test_roundtrip_is_exact(tmp_path_factory, k, f, size, seed):
    codes = np.random.default_rng(seed).integers(0, size, (k, f))
    path = tmp_path_factory.mktemp("c") / "x.tsk"
    write_tokens(path, codes, {**HEADER, "codebook_size": size})
    meta, back = read_tokens(path, "audio")
    np.testing.assert_array_equal(back, codes)
    assert (meta["num_codebooks"], meta["num_frames"]) == (k, f)


def test_size_is_the_bitrate(tmp_path):
    """10 bits per code: 75 frames x 8 codebooks = 750 bytes a second, plus the header."""
    codes = np.zeros((8, 75), np.int64)
    path = tmp_path / "x.tsk"
    write_tokens(path, codes, HEADER)
    (n,) = struct.unpack("<I", path.read_bytes()[5:9])
    assert path.stat().st_size == 9 + n + 750


@pytest.fixture
def good(tmp_path):
    path = tmp_path / "good.tsk"
    write_tokens(path, np.arange(40).reshape(4, 10) % 1024, HEADER)
    return path


def _damaged(path, data: bytes):
    bad = path.with_name("bad.tsk")
    bad.write_bytes(data)
    return bad


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda d: b"RIFF" + d[4:], "bad magic"),
        (lambda d: d[:4] + bytes([9]) + d[5:], "version 9"),
        (lambda d: d[:-3], "truncated"),
        (lambda d: d + b"\x00", "padded"),
        (lambda d: d[:20], "truncated header"),
        (lambda d: d[:-1] + bytes([d[-1] ^ 0xFF]), "checksum"),
        (lambda d: b"", "bad magic"),
    ],
    ids=["magic", "version", "truncated-payload", "extra-bytes", "truncated-header", "flipped-bits", "empty"],
)
def test_damage_is_refused_with_a_clear_message(good, damage, message):
    with pytest.raises(ContainerError, match=message):
        read_tokens(_damaged(good, damage(good.read_bytes())), "audio")


def test_corrupted_json_header(good):
    data = bytearray(good.read_bytes())
    data[10] = ord("}")
    with pytest.raises(ContainerError, match="corrupted header|lacks"):
        read_tokens(_damaged(good, bytes(data)), "audio")


def test_wrong_kind_and_missing_file(good, tmp_path):
    with pytest.raises(ContainerError, match="expected 'video'"):
        read_tokens(good, "video")
    with pytest.raises(ContainerError, match="no such file"):
        read_tokens(tmp_path / "nope.tsk", "audio")


def test_code_out_of_range(tmp_path):
    """A header that claims a smaller codebook than the codes use (a forged or mismatched file)."""
    path = tmp_path / "x.tsk"
    write_tokens(path, np.full((1, 4), 1000), HEADER)
    data = path.read_bytes()
    (n,) = struct.unpack("<I", data[5:9])
    meta = json.loads(data[9 : 9 + n])
    meta["codebook_size"] = 600  # still 10 bits per code, so the payload parses
    blob = json.dumps(meta).encode()
    path.write_bytes(MAGIC + struct.pack("<BI", 1, len(blob)) + blob + data[9 + n :])
    with pytest.raises(ContainerError, match="out of range"):
        read_tokens(path, "audio")
