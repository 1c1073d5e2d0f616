"""Silero VAD through onnxruntime: speech found where it is, end of turn after silence, chunking does not matter."""

from __future__ import annotations

import numpy as np
import pytest

from talkstream.audio_io import load_audio
from talkstream.data import SAMPLE_WAV
from talkstream.streaming.vad import SileroVAD


@pytest.fixture(scope="module")
def vad():
    return SileroVAD()


@pytest.fixture(scope="module")
def turn():
    """1 s silence, the sample sentence (3.6 s), 1 s silence, at 24 kHz."""
    speech = load_audio(SAMPLE_WAV, 24_000)
    z = np.zeros(24_000, np.float32)
    return np.concatenate([z, speech, z]), speech.size / 24_000


def run(vad, audio, chunk):
    state, events = vad.init_state(24_000), []
    for i in range(0, audio.size, chunk):
        ev, state = vad.step(audio[i : i + chunk], state)
        events += ev
    return events


def test_start_and_end_of_turn(vad, turn):
    audio, speech_s = turn
    events = run(vad, audio, 480)
    assert [e.kind for e in events] == ["start", "end"]
    start, end = events
    assert 0.9 < start.time_s < 1.3  # speech begins at 1.0 s
    assert speech_s + 0.5 < end.time_s < speech_s + 1.3  # speech ends at 1.0 + speech_s


@pytest.mark.parametrize("chunk", [160, 999, 24_000])
def test_chunking_does_not_change_events(vad, turn, chunk):
    ref = [(e.kind, round(e.time_s, 3)) for e in run(vad, turn[0], 480)]
    assert [(e.kind, round(e.time_s, 3)) for e in run(vad, turn[0], chunk)] == ref


def test_silence_and_noise_are_not_speech(vad):
    rng = np.random.default_rng(0)
    assert run(vad, np.zeros(48_000, np.float32), 480) == []
    assert run(vad, (0.01 * rng.standard_normal(48_000)).astype(np.float32), 480) == []


def test_sessions_do_not_share_state(vad, turn):
    a, b = vad.init_state(24_000), vad.init_state(16_000)
    ev_a, a = vad.step(turn[0][:48_000], a)
    assert b.windows == 0 and a.windows > 0


def test_the_pipeline_stage_runs_the_vad_off_the_event_loop(vad, turn):
    """VoiceActivity hands each chunk to the worker pool: the event loop's thread never runs the model, and the
    events come out as the model's own."""
    import asyncio
    import threading

    from talkstream.streaming.stages import AudioChunk, VoiceActivity

    audio, _ = turn
    threads, seen = set(), []

    class Spy:
        def init_state(self, rate):
            return vad.init_state(rate)

        def step(self, pcm, state):
            threads.add(threading.get_ident())
            return vad.step(pcm, state)

    async def main():
        stage = VoiceActivity(Spy(), 24_000, on_event=lambda e: seen.append((e.kind, threading.get_ident())))
        for i in range(0, audio.size, 480):
            await stage.process(AudioChunk(audio[i : i + 480], i, 0.0))
        return threading.get_ident()

    loop_thread = asyncio.run(main())
    assert threads and loop_thread not in threads
    assert [k for k, _ in seen] == [e.kind for e in run(vad, audio, 480)] == ["start", "end"]
    assert all(t == loop_thread for _, t in seen)  # events are handled on the loop


def test_sessions_stepped_together_equal_each_alone(vad, turn):
    """Batched VAD (one model call per window round for every stream, as the server runs it through the codec
    engine) gives each stream the events and probabilities it gets alone, with streams of other lengths and phases
    in the same calls."""
    import asyncio

    from talkstream.streaming.codec_engine import CodecEngine

    audio, _ = turn
    streams = [audio, audio[7_000:], np.zeros(30_000, np.float32), audio[::-1].copy()]
    chunks = [480, 960, 480, 1_200]

    def alone(x, chunk):
        state, out = vad.init_state(24_000), []
        for i in range(0, x.size, chunk):
            ev, state = vad.step(x[i : i + chunk], state)
            out.append((ev, state.probability))
        return out

    class _Codec:  # the engine's codec is not used by batched work
        frame_size = 320

    async def together():
        engine = CodecEngine(_Codec())
        engine.start()

        async def one(x, chunk):
            state, out = vad.init_state(24_000), []
            for i in range(0, x.size, chunk):
                ev, state = await engine.batched(vad.step_many, x[i : i + chunk], state)
                out.append((ev, state.probability))
            return out

        res = await asyncio.gather(*(one(x, c) for x, c in zip(streams, chunks, strict=True)))
        await engine.stop()
        return res, engine.items / engine.steps

    results, mean_batch = asyncio.run(together())
    assert mean_batch > 1.5  # the streams really shared calls
    for x, chunk, got in zip(streams, chunks, results, strict=True):
        want = alone(x, chunk)
        assert [[(e.kind, round(e.time_s, 4)) for e in ev] for ev, _ in got] == \
            [[(e.kind, round(e.time_s, 4)) for e in ev] for ev, _ in want]
        np.testing.assert_allclose([p for _, p in got], [p for _, p in want], atol=1e-5)
    assert any(ev for ev, _ in results[0])  # the speech stream did produce events


def test_the_codec_mode_tap_hands_the_vad_blocks_and_loses_nothing(vad, turn):
    """VoiceActivityTap passes every packet on at once and gives the VAD branch blocks of at least min_samples
    (the rest at the end of the stream): the same audio in order, so the same events as packet by packet."""
    import asyncio

    from talkstream.streaming.stages import AudioChunk, VoiceActivityTap

    audio, _ = turn
    blocks: list[AudioChunk] = []
    tap = VoiceActivityTap(blocks.append, min_samples=1536)

    async def main():
        passed = []
        for i in range(0, audio.size, 480):
            chunk = AudioChunk(audio[i : i + 480], i, float(i))
            assert await tap.process(chunk) == [chunk]  # not held back
            passed.append(chunk)
        assert await tap.flush() == []
        return passed

    passed = asyncio.run(main())
    assert all(b.pcm.size >= 1536 for b in blocks[:-1]) and len(blocks) < len(passed) / 3
    np.testing.assert_array_equal(np.concatenate([b.pcm for b in blocks]), audio)
    starts = np.cumsum([0] + [b.pcm.size for b in blocks[:-1]])
    assert [b.timestamp for b in blocks] == list(starts)  # each block keeps its first packet's timestamp
    state, events = vad.init_state(24_000), []
    for b in blocks:
        ev, state = vad.step(b.pcm, state)
        events += ev
    packet_by_packet = run(vad, audio, 480)
    assert [(e.kind, round(e.time_s, 3)) for e in events] == [(e.kind, round(e.time_s, 3)) for e in packet_by_packet]


def test_a_higher_silence_threshold_hears_the_end_of_speech_sooner_and_survives_a_reset(vad, turn):
    audio = turn[0]

    def pause_at(end_threshold):
        state, found = vad.init_state(24_000, pause_ms=64, end_threshold=end_threshold), []
        for i in range(0, audio.size, 480):
            ev, state = vad.step(audio[i : i + 480], state)
            found += [e.time_s for e in ev if e.kind == "pause"]
        assert vad.reset(state).end_threshold == end_threshold
        return found

    default, eager = pause_at(None), pause_at(0.8)
    assert len(default) == len(eager) == 2  # the same pauses: one inside the sentence, one at its end
    # The silence after the sentence begins sooner (Silero's probability decays below 0.8 before 0.35).
    assert eager[0] == default[0] and eager[-1] < default[-1]
