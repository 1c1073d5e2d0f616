"""The echo canceller (WebRTC AEC3 with the session's reply as reference): streams as offline, removes a reply played
back into the microphone at 20-200 ms and -6 to -20 dB so that Silero VAD hears nothing, keeps a user talking over
it, finds longer delays itself, and takes bad input without breaking."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from talkstream.data.voices import Voice, synthesize
from talkstream.streaming.echo_cancel import EchoCanceller, EchoCancelStage, EchoConfig, erle_db, gcc_phat
from talkstream.streaming.stages import AudioChunk
from talkstream.streaming.vad import SileroVAD

SR = 24_000
CONVERGED_S = 1.5  # ERLE is measured after this much of the reply


@pytest.fixture(scope="module")
def voices() -> tuple[np.ndarray, np.ndarray]:
    """The agent's reply (8.7 s) and a user's interruption in another voice, at 24 kHz."""
    far = synthesize(Voice("espeak", "en-us"), "Hello there. I can help you book a table for four people tonight at "
                     "seven, and I will also check whether the terrace is open, since the weather looks fine.")
    near = synthesize(Voice("espeak", "en-gb"), "Wait, no, I meant Tuesday next week please.")
    return far.astype(np.float32), near.astype(np.float32)


@pytest.fixture(scope="module")
def vad() -> SileroVAD:
    return SileroVAD()


def played_back(far: np.ndarray, delay_ms: float, level_db: float, seed: int = 0) -> np.ndarray:
    """What a client's microphone hears of `far`: a small room (direct sound and a 40 ms decaying tail), `level_db`
    below the reference, `delay_ms` later, over noise at -60 dBFS."""
    rng = np.random.default_rng(seed)
    room = np.zeros(int(0.04 * SR))
    room[0] = 1.0
    room[1:] += 0.3 * rng.standard_normal(room.size - 1) * np.exp(-np.arange(1, room.size) / (0.008 * SR))
    echo = np.convolve(far, room)[: far.size]
    echo *= np.sqrt(np.mean(far**2) / np.mean(echo**2)) * 10 ** (level_db / 20)
    echo = np.concatenate([np.zeros(int(delay_ms * SR / 1000)), echo])[: far.size]
    return (echo + 1e-3 * rng.standard_normal(far.size)).astype(np.float32)


def cancel(mic: np.ndarray, far: np.ndarray, chunk: int | None = None, config: EchoConfig | None = None) -> np.ndarray:
    """The reference queued as a server queues it (as it leaves, a chunk ahead of the microphone), then the
    microphone in chunks (None: whole), then the end of the stream."""
    ec = EchoCanceller(config or EchoConfig(max_queued_s=60))
    state, out = ec.init_state(), []
    chunk = chunk or mic.size
    for i in range(0, mic.size, chunk):
        state = ec.play(far[i : i + chunk], state)
        clean, state = ec.step(mic[i : i + chunk], state)
        out.append(clean)
    out.append(ec.flush(state)[0])
    return np.concatenate(out)


def starts(vad: SileroVAD, x: np.ndarray) -> list[float]:
    events, _ = vad.step(x, vad.init_state(SR))
    return [round(e.time_s, 2) for e in events if e.kind == "start"]


@pytest.mark.parametrize("chunk", [97, 240, 1234, 4801],
                         ids=["97-samples", "one-frame", "1234-samples", "4801-samples"])
def test_streaming_equals_offline(voices, chunk):
    far, _ = voices
    far = far[: 4 * SR]
    mic = played_back(far, 100, -6)
    ec = EchoCanceller(EchoConfig(max_queued_s=60))
    state = ec.play(far, ec.init_state())
    whole, state = ec.step(mic, state)
    whole = np.concatenate([whole, ec.flush(state)[0]])
    state, parts = ec.play(far, ec.init_state()), []
    for i in range(0, mic.size, chunk):
        out, state = ec.step(mic[i : i + chunk], state)
        parts.append(out)
    parts.append(ec.flush(state)[0])
    streamed = np.concatenate(parts)
    assert whole.size == streamed.size == mic.size
    np.testing.assert_array_equal(streamed, whole)
    # the reference queued as it leaves, in chunks, gives the same too (it is never short of the microphone)
    np.testing.assert_array_equal(cancel(mic, far, chunk), whole)


# Measured (2026-12-07, this signal): ERLE 33-35 dB at -6 dB and 21-22 dB at -20 dB (there the -60 dBFS noise is
# most of what is left), converged within the first second at every delay; no VAD start on what is left.
@pytest.mark.parametrize("delay_ms", [20, 100, 200], ids=lambda d: f"{d}ms")
@pytest.mark.parametrize("level_db,min_erle", [(-6, 25.0), (-20, 15.0)], ids=["-6dB", "-20dB"])
def test_cancels_played_back_reply(voices, vad, delay_ms, level_db, min_erle):
    far, _ = voices
    mic = played_back(far, delay_ms, level_db)
    clean = cancel(mic, far, chunk=480)
    after = int(CONVERGED_S * SR)
    assert erle_db(mic[after:], clean[after:]) >= min_erle
    assert starts(vad, mic), "the raw echo should sound like speech to the VAD (else this test shows nothing)"
    assert starts(vad, clean) == []


@pytest.mark.parametrize("delay_ms,level_db", [(100, -6), (200, -20)], ids=["100ms-6dB", "200ms-20dB"])
def test_user_talking_over_the_echo_is_heard(voices, vad, delay_ms, level_db):
    far, near = voices
    at = int(4.0 * SR)
    mic = played_back(far, delay_ms, level_db)
    mic[at : at + near.size] += near[: mic.size - at]
    clean = cancel(mic, far, chunk=480)
    found = starts(vad, clean)
    assert len(found) == 1 and 4.0 <= found[0] <= 4.3, found
    # the user's voice comes through at about its own level
    end = min(mic.size, at + near.size)
    assert abs(erle_db(near[: end - at], clean[at:end])) < 3.0


def _first_second(voices, vad, echo: bool) -> list[float]:
    far, near = voices
    at = int(0.4 * SR)
    mic = played_back(far, 100, -10) if echo else 1e-3 * np.random.default_rng(0).standard_normal(far.size)
    mic = mic.astype(np.float32)
    mic[at : at + near.size] += near[: mic.size - at]
    return starts(vad, cancel(mic, far, chunk=480))


def test_user_talking_in_the_replys_first_second_over_its_echo_is_heard(voices, vad):
    found = _first_second(voices, vad, echo=True)
    assert found and found[0] <= 0.7, found


@pytest.mark.xfail(strict=True, reason="known gap (docs/turns.md): in a stream's first reply, before anything shows "
                   "whether the microphone hears echo (1.7 s of it), AEC3 (fresh) takes speech that begins in the "
                   "reply's first second for echo when there is none (headphones): those words are lost. From then "
                   "on the microphone passes untouched (tested below)")
def test_user_talking_in_the_replys_first_second_without_echo_is_heard(voices, vad):
    found = _first_second(voices, vad, echo=False)
    assert found and found[0] <= 0.7, found


def test_the_microphone_passes_untouched_between_replies(voices):
    """No reply playing (a new stream, or a second after one ended): not a sample changed. AEC3 with nothing to
    cancel still altered the voice enough that Whisper misheard words through it."""
    far, near = voices
    gap = np.zeros(int(1.2 * SR), np.float32)
    mic = np.concatenate([near, played_back(far, 100, -10), gap, near]).astype(np.float32)
    ref = np.concatenate([np.zeros(near.size, np.float32), far, gap, np.zeros(near.size, np.float32)])
    clean = cancel(mic, ref, chunk=480)
    assert np.array_equal(clean[: near.size], mic[: near.size])  # before the first reply
    tail = near.size // 480 * 480
    assert np.array_equal(clean[-tail:], mic[-tail:])  # after the reply and a second of nothing
    assert erle_db(mic[near.size : near.size + far.size], clean[near.size : near.size + far.size]) > 10


def _two_replies(far, near, echo_first: bool, echo_second: bool) -> tuple[np.ndarray, np.ndarray, int]:
    """Two replies (`far` each) 1.5 s apart, the user speaking 0.4 s into the second; the microphone hears each
    reply's echo (100 ms, -10 dB) or only noise. Returns the microphone, what came out, and where the second begins."""
    rng = np.random.default_rng(1)
    gap = int(1.5 * SR)

    def mic_of(echo: bool) -> np.ndarray:
        return played_back(far, 100, -10) if echo else (1e-3 * rng.standard_normal(far.size)).astype(np.float32)

    second = mic_of(echo_second)
    at = int(0.4 * SR)
    second[at : at + near.size] += near[: second.size - at]
    quiet = (1e-3 * rng.standard_normal(gap)).astype(np.float32)
    mic = np.concatenate([mic_of(echo_first), quiet, second])
    ref = np.concatenate([far, np.zeros(gap, np.float32), far])
    return mic, cancel(mic, ref, chunk=480), far.size + gap


def test_after_a_reply_with_no_echo_the_next_passes_untouched(voices, vad):
    """Headphones: the first reply shows the microphone hears none of it, so the second reply's first second is not
    taken for echo (AEC3 afresh would take 30-48 dB off the user's voice there)."""
    far, near = voices
    mic, clean, b = _two_replies(far, near, echo_first=False, echo_second=False)
    assert np.array_equal(clean[b:], mic[b : clean.size])
    found = [t - b / SR for t in starts(vad, clean) if t > b / SR]
    assert found and found[0] <= 0.7, found


def test_a_reply_that_shows_no_echo_passes_untouched_from_then_on(voices, vad):
    """The first reply: once 0.5 s past the longest echo delay looked for (1.2 s) show no echo, the microphone passes
    untouched, and speech 1.9 s into the reply is heard."""
    far, near = voices
    at = int(1.9 * SR)
    mic = (1e-3 * np.random.default_rng(2).standard_normal(far.size)).astype(np.float32)
    mic[at : at + near.size] += near[: mic.size - at]
    clean = cancel(mic, far, chunk=480)
    assert np.array_equal(clean[at:], mic[at : clean.size])
    found = starts(vad, clean)
    assert found and 1.85 <= found[0] <= 2.2, found


def test_after_a_reply_with_echo_the_next_is_still_cancelled(voices, vad):
    far, near = voices
    mic, clean, b = _two_replies(far, near, echo_first=True, echo_second=True)
    end = b + int(0.4 * SR) + near.size  # the user done: only echo from here
    assert erle_db(mic[end + SR : b + far.size], clean[end + SR : b + far.size]) > 10
    assert not any(t > (end + 0.3 * SR) / SR for t in starts(vad, clean))  # the echo never taken for the user


def test_an_echo_where_the_last_reply_had_none_is_cancelled_again(voices):
    """The client's speaker goes on: the coarse delay estimate finds the echo path within seconds, and AEC3 takes
    over again for the rest of the reply."""
    far, _ = voices
    mic, clean, b = _two_replies(far, np.zeros(1, np.float32), echo_first=False, echo_second=True)
    last = slice(b + far.size - 3 * SR, b + far.size)
    assert erle_db(mic[last], clean[last]) > 10


def test_finds_a_longer_delay_itself(voices):
    """Past AEC3's own range (about 450 ms) the coarse delay line takes the offset out (GCC-PHAT)."""
    far, _ = voices
    mic = played_back(far, 700, -6)
    ec = EchoCanceller(EchoConfig(max_queued_s=60))
    state, out = ec.init_state(), []
    for i in range(0, mic.size, 480):
        state = ec.play(far[i : i + 480], state)
        clean, state = ec.step(mic[i : i + 480], state)
        out.append(clean)
    clean = np.concatenate(out)
    assert 0.45 * SR <= state.shift <= 0.7 * SR
    last = slice(clean.size - 3 * SR, clean.size)
    assert erle_db(mic[last], clean[last]) >= 20.0
    without = cancel(mic, far, chunk=480, config=EchoConfig(max_queued_s=60, coarse=False))
    assert erle_db(mic[last], without[last]) < 10.0  # what the delay line is for


def test_gcc_phat_finds_the_lag():
    rng = np.random.default_rng(3)
    far = rng.standard_normal(SR).astype(np.float32)
    near = np.concatenate([np.zeros(1234), far])[: far.size] * 0.1
    lag, peak = gcc_phat(near, far, SR // 2)
    assert lag == 1234 and peak > 8.0


def test_erle_db():
    x = np.ones(100, np.float32)
    assert erle_db(x, 0.1 * x) == pytest.approx(20.0)
    with pytest.raises(ValueError, match="differ in shape"):
        erle_db(x, x[:50])


def test_bad_input_is_refused_or_made_harmless(voices):
    far, _ = voices
    ec = EchoCanceller(EchoConfig(max_queued_s=60))
    state = ec.init_state()
    with pytest.raises(ValueError, match="mono PCM"):
        ec.step(np.zeros((2, 480), np.float32), state)
    with pytest.raises(ValueError, match="float or int16"):
        ec.step(np.zeros(480, np.int32), state)
    with pytest.raises(ValueError, match="float or int16"):
        ec.play(np.array(["a"] * 480), state)
    with pytest.raises(ValueError, match="differ in length"):
        ec.cancel(np.zeros(480, np.float32), np.zeros(240, np.float32), state)
    with pytest.raises(ValueError, match="echo cancelling runs at"):
        EchoCanceller(EchoConfig(sample_rate=22_050))
    # int16 is PCM16; NaN, infinities and overloads become silence or full scale, and the canceller goes on working
    out, state = ec.step(np.full(480, 1000, np.int16), state)
    assert out.dtype == np.float32 and out.size == 480
    broken = np.full(480, np.nan, np.float32)
    broken[::3] = np.inf
    state = ec.play(broken, state)
    out, state = ec.step(broken * 5, state)
    assert np.isfinite(out).all()
    mic = played_back(far[: 4 * SR], 100, -6)
    state = ec.play(far[: 4 * SR], state)
    clean, state = ec.step(mic, state)
    assert np.isfinite(clean).all()
    assert erle_db(mic[2 * SR : clean.size], clean[2 * SR :]) >= 20.0


def test_queue_is_bounded_and_consumed_at_the_microphones_clock():
    ec = EchoCanceller(EchoConfig(max_queued_s=0.5))
    state = ec.play(np.ones(SR, np.float32), ec.init_state())
    assert state.queued.size == SR // 2  # the oldest went: their echo is long past
    far = ec.take_reference(SR // 4, state)
    assert far.size == SR // 4 and state.queued.size == SR // 4
    far = ec.take_reference(SR // 2, state)  # past the end: silence
    assert far.size == SR // 2 and not far[SR // 4 :].any() and state.queued.size == 0


def test_stage_gives_a_reply_to_the_microphone_audio_that_arrives_after_it():
    """The session's stage: reply audio that left at 10.0 s is the reference of microphone audio that arrived after
    10.0 s, not of older audio still waiting; what no microphone audio comes for is bounded."""
    stage = EchoCancelStage(48_000, SR)  # a client at 48 kHz: the reply is resampled to the canceller's rate
    stage.play(np.full(9_600, 0.1, np.float32), sent=10.0)  # 200 ms

    async def feed(arrived: float) -> AudioChunk:
        (out,) = await stage.process(AudioChunk(np.zeros(480, np.float32), 7, arrived))
        return out

    out = asyncio.run(feed(9.99))
    assert out.pcm.size == 480 and out.timestamp == 7
    assert stage.state.queued.size == 0 and stage.sent  # older microphone audio: no reference taken for it
    asyncio.run(feed(10.01))
    assert not stage.sent and 4_000 < stage.state.queued.size < 4_800 - 400  # 200 ms at 24 kHz, less 20 ms taken
    for i in range(150):  # 3 s of reply with no microphone audio
        stage.play(np.zeros(960, np.float32), sent=11.0 + i * 0.02)
    assert stage.sent_samples <= 2 * SR
