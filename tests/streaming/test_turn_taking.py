"""Turn-taking by the turn heads: the VAD's pauses, the policy's decisions (with judges whose answers the test sets,
so the policy is tested apart from the model), any chunking deciding the same, and the shipped heads on held-out
speech."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import numpy as np
import pytest

from talkstream.streaming.stages import AudioChunk, VoiceActivity
from talkstream.streaming.turn_taking import TurnTaking, TurnTakingConfig
from talkstream.streaming.vad import SileroVAD

RATE = 24_000


@dataclass
class _Cfg:
    threshold: float = 0.5


@dataclass
class _Head:
    cfg: _Cfg


class FixedJudge:
    """Says what the test tells it, and records what it was asked about."""

    def __init__(self, complete: float, backchannel: float):
        self.complete, self.backchannel = complete, backchannel
        self.end, self.barge = _Head(_Cfg()), _Head(_Cfg())
        self.asked: list[tuple[str, int]] = []

    def p_complete(self, audio: np.ndarray) -> float:
        self.asked.append(("end", audio.size))
        return self.complete

    def p_backchannel(self, audio: np.ndarray) -> float:
        self.asked.append(("barge", audio.size))
        return self.backchannel


@pytest.fixture(scope="module")
def vad():
    return SileroVAD()


@pytest.fixture(scope="module")
def speech():
    from talkstream.data.voices import Voice, synthesize

    def spoken(text: str) -> np.ndarray:  # espeak's own leading and trailing silence off
        x = synthesize(Voice("espeak", "en-us+m8"), text)
        loud = np.flatnonzero(np.abs(x) > 0.01 * np.abs(x).max())
        return x[loud[0] : loud[-1] + 1]

    return spoken("I would like to book a table"), spoken("for four people tonight")


def _stream(*parts: np.ndarray | float) -> np.ndarray:
    """Audio parts and silences (seconds), with a little noise."""
    x = np.concatenate([np.zeros(int(p * RATE), np.float32) if isinstance(p, float) else p for p in parts])
    return x + np.random.default_rng(0).standard_normal(x.size).astype(np.float32) * 1e-4


def events_of(stage: VoiceActivity, pcm: np.ndarray, chunk: int = 480) -> list[tuple[str, float]]:
    async def go():
        stage.reset()
        out = []
        for i in range(0, pcm.size, chunk):
            c = AudioChunk(pcm[i : i + chunk], 0, time.monotonic())
            await stage.process(c)
            out += [(e.kind, round(e.time_s, 3)) for e in c.vad_events]
        return out

    return asyncio.run(go())


def test_the_vad_raises_a_pause_only_when_asked(vad, speech):
    a, b = speech
    pcm = _stream(0.5, a, 0.3, b, 1.0)
    state, kinds = vad.init_state(RATE, pause_ms=128.0), []
    for i in range(0, pcm.size, 480):
        ev, state = vad.step(pcm[i : i + 480], state)
        kinds += [e.kind for e in ev]
    assert kinds == ["start", "pause", "resume", "pause", "end"]  # a pause per silence; the 480 ms one ends the turn
    assert [e.kind for e in vad.step(pcm, vad.init_state(RATE))[0]] == ["start", "end"]  # no pause_ms: as before


def test_a_turn_judged_incomplete_is_held_over_a_long_pause(vad, speech):
    a, b = speech
    pcm = _stream(0.5, a, 1.0, b, 2.0)  # a 1 s pause mid-sentence
    silence_only = events_of(VoiceActivity(vad, RATE), pcm)
    assert [k for k, _ in silence_only] == ["start", "end", "start", "end"]  # cut at the pause
    judge = FixedJudge(complete=0.1, backchannel=0.1)
    held = events_of(VoiceActivity(vad, RATE, turn_taking=TurnTaking(judge)), pcm)
    kinds = [k for k, _ in held]
    assert kinds.count("start") == 1 and kinds.count("end") == 1 and "hold" in kinds
    end = next(t for k, t in held if k == "end")
    assert end > 0.5 + (a.size + b.size) / RATE + 0.9  # only the 1.6 s cap ended it, after the whole sentence


def test_a_turn_judged_complete_ends_at_the_first_pause(vad, speech):
    a, _ = speech
    pcm = _stream(0.5, a, 1.5)
    judge = FixedJudge(complete=0.9, backchannel=0.1)
    # 128 ms as the VAD hears silence by itself: this espeak phrase has no pause that long inside it (the default,
    # 64 ms at P(speech) < 0.6, finds pauses between its words too, which a judge that always says "complete" ends).
    cfg = TurnTakingConfig(pause_ms=128, silence_p=None)
    stage = VoiceActivity(vad, RATE, turn_taking=TurnTaking(judge, cfg))
    got = events_of(stage, pcm)
    assert [k for k, _ in got] == ["start", "interruption", "end"]
    # The end is raised at the 128 ms pause: with silence alone it would be 480 ms.
    silence_end = next(t for k, t in events_of(VoiceActivity(vad, RATE), pcm) if k == "end")
    assert abs(next(t for k, t in got if k == "end") - silence_end) < 0.1  # both say where speech ended
    assert not stage.state.speaking  # the VAD's own turn ended too: the next speech is a new start
    # The head heard the stream up to the moment the pause was raised (its end + 4 windows of 32 ms), no further.
    end = next(t for k, t in got if k == "end")
    heard = dict(judge.asked)["end"]
    assert abs(heard - (round(end * 16_000) + 4 * 512)) <= 16


def test_barge_in_verdicts_and_a_long_backchannel(vad, speech):
    a, _ = speech
    pcm = _stream(0.5, a, 1.0)
    bc = events_of(VoiceActivity(vad, RATE, turn_taking=TurnTaking(FixedJudge(0.1, 0.9))), pcm)
    kinds = [k for k, _ in bc]
    assert kinds[:2] == ["start", "backchannel"] and "long" in kinds  # 1.7 s of speech is no backchannel
    start = next(t for k, t in bc if k == "start")
    verdict = next(t for k, t in bc if k == "backchannel")
    assert abs(verdict - start - TurnTakingConfig().barge_decide_ms / 1000) < 0.02  # decided that long after it began
    short = TurnTaking(FixedJudge(0.1, 0.9), TurnTakingConfig(backchannel_max_ms=5000))
    assert "long" not in [k for k, _ in events_of(VoiceActivity(vad, RATE, turn_taking=short), pcm)]
    # "Mm-hm" then silence, its turn held open (judged incomplete): the silence is not speech, so not "long".
    mm = _stream(0.5, a[: RATE // 2], 1.5)
    got = [k for k, _ in events_of(VoiceActivity(vad, RATE, turn_taking=TurnTaking(FixedJudge(0.1, 0.9))), mm)]
    assert got[:2] == ["start", "backchannel"] and "hold" in got and "long" not in got


def test_speech_that_starts_with_no_reply_playing_gets_no_barge_in_verdict(vad, speech):
    """An ordinary turn (nothing playing when it began): the barge-in head is never run and no verdict comes; the
    end-of-turn head still judges its pauses. A segment that starts while a reply plays is judged."""
    a, b = speech
    pcm = _stream(0.5, a, 0.7, b, 1.5)
    judge = FixedJudge(0.9, 0.9)
    quiet = events_of(VoiceActivity(vad, RATE, turn_taking=TurnTaking(judge), replying=lambda: False), pcm)
    kinds = [k for k, _ in quiet]
    assert "start" in kinds and "end" in kinds
    assert not {"backchannel", "interruption", "long"} & set(kinds)
    assert judge.asked and all(what == "end" for what, _ in judge.asked)
    judge = FixedJudge(0.9, 0.1)
    playing = events_of(VoiceActivity(vad, RATE, turn_taking=TurnTaking(judge), replying=lambda: True), pcm)
    assert "interruption" in [k for k, _ in playing] and ("barge", ) == tuple({w for w, _ in judge.asked} - {"end"})


def test_a_clear_interruption_is_one_at_the_first_look(vad, speech):
    """early_p: at early_ms into speech over a reply, P(backchannel) below it is an interruption then, not at
    barge_decide_ms; above it the verdict waits (and may still be a backchannel); off (0), no first look."""
    a, _ = speech
    pcm = _stream(0.5, a, 1.0)
    cfg = TurnTakingConfig(early_ms=100, early_p=0.3)
    clear = events_of(VoiceActivity(vad, RATE, turn_taking=TurnTaking(FixedJudge(0.1, 0.1), cfg)), pcm)
    start = next(t for k, t in clear if k == "start")
    verdicts = [(k, t) for k, t in clear if k in ("interruption", "backchannel")]
    assert len(verdicts) == 1 and verdicts[0][0] == "interruption" and abs(verdicts[0][1] - start - 0.1) < 0.02
    judge = FixedJudge(0.1, 0.4)  # not clear at the first look: the verdict at barge_decide_ms
    unsure = events_of(VoiceActivity(vad, RATE, turn_taking=TurnTaking(judge, cfg)), pcm)
    verdict = next((k, t) for k, t in unsure if k in ("interruption", "backchannel"))
    assert verdict[0] == "interruption" and abs(verdict[1] - start - cfg.barge_decide_ms / 1000) < 0.02
    assert [w for w, _ in judge.asked].count("barge") == 2
    judge = FixedJudge(0.1, 0.4)
    events_of(VoiceActivity(vad, RATE, turn_taking=TurnTaking(judge, TurnTakingConfig(early_p=0))), pcm)
    assert [w for w, _ in judge.asked].count("barge") == 1  # off: one look, at barge_decide_ms
    assert TurnTakingConfig().early_p > 0  # on by default (bench turns: more interruptions stopped in time)


@pytest.mark.parametrize("chunk", [160, 480, 1999, 24_000])
def test_any_chunking_decides_the_same(vad, speech, chunk):
    a, b = speech
    pcm = _stream(0.5, a, 0.7, b, 0.3, a, 2.0)
    judge_ref, judge = FixedJudge(0.3, 0.7), FixedJudge(0.3, 0.7)
    cfg = TurnTakingConfig(early_p=0.5)  # the first look too (not clear here: 0.7)
    ref = events_of(VoiceActivity(vad, RATE, turn_taking=TurnTaking(judge_ref, cfg)), pcm, 480)
    got = events_of(VoiceActivity(vad, RATE, turn_taking=TurnTaking(judge, cfg)), pcm, chunk)
    assert [k for k, _ in got] == [k for k, _ in ref]
    assert judge.asked == judge_ref.asked  # the heads heard exactly the same audio


def test_config_is_checked():
    with pytest.raises(ValueError, match="pause_ms"):
        TurnTakingConfig(pause_ms=2000, max_pause_ms=1600)
    with pytest.raises(ValueError, match="barge_decide_ms"):
        TurnTakingConfig(barge_decide_ms=0)
    with pytest.raises(ValueError, match="early_ms"):
        TurnTakingConfig(early_ms=300)
