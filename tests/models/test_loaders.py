"""Checkpoints: config + safetensors with a checksum, verified on every load."""

from __future__ import annotations

import json

import pytest
import torch

from talkstream.checkpoint import CheckpointError, load_audio_codec, read_checkpoint, save_checkpoint
from talkstream.codecs.audio.codec import AudioCodec
from tests.conftest import TINY


@pytest.fixture
def saved(tmp_path, tiny_codec):
    return save_checkpoint(tiny_codec, TINY.to_dict(), tmp_path / "ckpt", kind="audio_codec")


def test_save_load_roundtrip(saved, tiny_codec):
    codec = load_audio_codec(saved)
    assert isinstance(codec, AudioCodec) and not codec.training
    x = torch.randn(1, 1, 3200) * 0.1
    # Weights ship as float16, so codes may differ only where a latent sits on a Voronoi border.
    same = (codec.encode(x, 4) == tiny_codec.encode(x, 4)).float().mean()
    assert same > 0.9


def test_checksum_mismatch(saved):
    w = saved / "model.safetensors"
    data = bytearray(w.read_bytes())
    data[-1] ^= 0xFF
    w.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum"):
        load_audio_codec(saved)


def test_wrong_kind_version_and_missing(saved, tmp_path):
    with pytest.raises(CheckpointError, match="expected a 'talker'"):
        read_checkpoint(saved, "talker")
    meta = json.loads((saved / "config.json").read_text())
    (saved / "config.json").write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(CheckpointError, match="format 99"):
        read_checkpoint(saved, "audio_codec")
    with pytest.raises(CheckpointError, match="no config.json"):
        load_audio_codec(tmp_path / "nothing")
    (saved / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="unreadable"):
        load_audio_codec(saved)


def test_shipped_weights_load_and_match_their_checksum():
    codec = load_audio_codec()
    assert codec.sample_rate == 24_000 and codec.num_codebooks == 8 and codec.codebook_size == 1024
