"""Fixtures the server tests share: the shipped codec with a VAD (a server's models), and the sample sentence."""

from __future__ import annotations

import pytest

from talkstream.audio_io import load_audio
from talkstream.checkpoint import load_audio_codec
from talkstream.data import SAMPLE_WAV
from talkstream.streaming.vad import SileroVAD


@pytest.fixture(scope="module")
def models():
    return load_audio_codec(), SileroVAD()


@pytest.fixture(scope="module")
def speech():
    return load_audio(SAMPLE_WAV, 24_000)
