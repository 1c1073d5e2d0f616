"""Turn-taking by meaning as well as silence: when a pause ends the user's turn, and what speech over a reply is.

The VAD (streaming/vad.py) says where speech starts and pauses; the turn heads (models/turn_head.py) judge:
- at a pause of `pause_ms`, P(the turn is complete) from its last 3 s: complete -> "end" now; not -> "hold" (the
  turn stays open until speech resumes, or until `max_pause_ms` of silence ends it whatever);
- `barge_decide_ms` after speech starts, P(a backchannel) from its first moments: "backchannel" (the agent talks on)
  or "interruption" (the agent stops); speech judged a backchannel that goes on past `backchannel_max_ms` raises
  "long" (then it is an interruption after all).

`TurnTaking.step(pcm, vad_events, state) -> (events, state)` consumes the same audio the VAD did and its events; it
keeps the last seconds at 16 kHz in its state. The judge runs only when a decision is due (`due`), so the caller
hops to a thread only then. Offline is the same code over the whole stream.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import soxr

from talkstream.models.turn_head import TurnJudge
from talkstream.streaming.vad import VAD_RATE, VADEvent

HISTORY_S = 4.0
BARGE_BEFORE_S = 0.2  # the barge-in head hears this much before the speech began


@dataclass
class TurnTakingConfig:
    # Silence before the end-of-turn head is asked (the VAD's "pause"), as the VAD hears silence (`silence_p`).
    # 64 ms and 0.6 (bench turns, held out: complete turns end 160 ms after the speech at the median, mid-sentence
    # pauses cut off 4/139); 128 ms and the VAD's 0.35 gave 240 ms and 2/139.
    pause_ms: float = 64.0
    max_pause_ms: float = 1600.0  # silence that ends a turn the head held open
    barge_decide_ms: float = 150.0  # speech (from the VAD's onset estimate) before the barge-in head decides
    backchannel_max_ms: float = 900.0  # speech judged a backchannel that lasts longer is an interruption
    # A first look sooner: `early_ms` into the speech, P(backchannel) below `early_p` is an interruption at once
    # (the rest wait for `barge_decide_ms`). early_p 0: no first look.
    early_ms: float = 100.0
    early_p: float = 0.15
    # The VAD probability below which a window inside a turn is silence (None: the VAD's own, 0.35). Higher hears
    # the end of speech sooner (Silero's probability decays over ~100 ms after the last word); the head guards the
    # pauses it finds.
    silence_p: float | None = 0.6

    def __post_init__(self):
        if not 32 <= self.pause_ms < self.max_pause_ms:
            raise ValueError(f"pause_ms must be at least 32 and below max_pause_ms, got {self.pause_ms}")
        if not 0 < self.barge_decide_ms < self.backchannel_max_ms:
            raise ValueError("barge_decide_ms must be positive and below backchannel_max_ms")
        if not (0 < self.early_ms <= self.barge_decide_ms and 0 <= self.early_p <= 1):
            raise ValueError("early_ms must be positive and at most barge_decide_ms, early_p in [0, 1]")
        if self.silence_p is not None and not 0 < self.silence_p < 1:
            raise ValueError(f"silence_p must be in (0, 1), got {self.silence_p}")


@dataclass
class TurnTakingState:
    resampler: soxr.ResampleStream | None
    history: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # the last HISTORY_S at 16 kHz
    clock: int = 0  # 16 kHz samples seen (the VAD's clock)
    speech_start: int | None = None  # where the current segment began (samples), None outside speech
    barge: str | None = None  # the segment's verdict: "backchannel" | "interruption" | "unjudged" | None (not yet)
    early_done: bool = False  # the segment's first look (early_ms) is taken
    long_sent: bool = False
    paused_at: int | None = None  # where the current held pause began (samples), None while speaking
    # Whether a segment that starts now is judged by the barge-in head: the caller sets it (a reply is playing).
    # A segment that starts with nothing playing is an ordinary turn: no head call, no verdict ("unjudged").
    judge_barge: bool = True


class TurnTaking:
    def __init__(self, judge: TurnJudge, config: TurnTakingConfig | None = None):
        self.judge, self.config = judge, config or TurnTakingConfig()

    def init_state(self, input_rate: int) -> TurnTakingState:
        rs = None if input_rate == VAD_RATE else soxr.ResampleStream(input_rate, VAD_RATE, 1, "float32", "HQ")
        return TurnTakingState(resampler=rs)

    def vad_settings(self) -> dict:
        """The VAD state's settings this policy needs (`SileroVAD.init_state(rate, **these)`)."""
        return {"end_of_turn_ms": self.config.max_pause_ms, "pause_ms": self.config.pause_ms,
                "end_threshold": self.config.silence_p}

    @staticmethod
    def _span(state: TurnTakingState, start: int, end: int) -> np.ndarray:
        """History from sample `start` to sample `end` (clamped to what is kept). Decisions read the audio up to
        the moment they are due, not to the end of the chunk that brought it: any chunking decides the same."""
        first = state.clock - state.history.size
        return state.history[max(0, start - first) : max(0, end - first)]

    def _raised_at(self, e: VADEvent) -> int:
        """The sample at which the VAD raised a pause event: its silence start plus whole 32 ms windows."""
        windows = -(-self.config.pause_ms // 32)
        return round(e.time_s * VAD_RATE) + int(windows) * 512

    @staticmethod
    def _start(state: TurnTakingState) -> int:
        """Where the current segment began (callers decide only inside a segment)."""
        if state.speech_start is None:
            raise RuntimeError("a barge-in decision outside a speech segment")
        return state.speech_start

    def _decide_at(self, state: TurnTakingState) -> int:
        return self._start(state) + round(self.config.barge_decide_ms * VAD_RATE / 1000)

    def _early_at(self, state: TurnTakingState) -> int:
        return self._start(state) + round(self.config.early_ms * VAD_RATE / 1000)

    def _early_due(self, state: TurnTakingState) -> bool:
        return (self.config.early_p > 0 and state.speech_start is not None and state.barge is None
                and not state.early_done and state.clock >= self._early_at(state))

    def _barge_due(self, state: TurnTakingState) -> bool:
        return state.speech_start is not None and state.barge is None and state.clock >= self._decide_at(state)

    def due(self, vad_events: list[VADEvent], state: TurnTakingState, new_samples: int) -> bool:
        """Whether `step` with these will call the judge (the caller runs it on a thread then)."""
        if any(e.kind == "pause" for e in vad_events):
            return True
        ahead = dataclasses.replace(state, clock=state.clock + new_samples)
        for e in vad_events:
            if e.kind == "start":
                ahead.speech_start, ahead.barge = round(e.time_s * VAD_RATE), self._unjudged(ahead)
                ahead.early_done = False
            elif e.kind == "end" and ahead.barge is None and ahead.speech_start is not None:
                return True
        return self._early_due(ahead) or self._barge_due(ahead)

    def step(self, pcm: np.ndarray, vad_events: list[VADEvent], state: TurnTakingState
             ) -> tuple[list[VADEvent], TurnTakingState]:
        """pcm: the audio the VAD just consumed (at the state's rate); vad_events: what it raised. Returns the
        events with each "pause" replaced by "end" or "hold", and the barge-in verdicts added."""
        st = dataclasses.replace(state)
        x = np.asarray(pcm, np.float32).reshape(-1)
        if st.resampler is not None:
            x = st.resampler.resample_chunk(x)
        st.history = np.concatenate([st.history, x])  # trimmed after the decisions (a chunk may be long)
        st.clock += x.size
        out: list[VADEvent] = []
        for e in vad_events:
            if e.kind == "start":
                st.speech_start, st.barge, st.long_sent = round(e.time_s * VAD_RATE), self._unjudged(st), False
                st.early_done = False
                st.paused_at = None
                out.append(e)
            elif e.kind == "resume":
                st.paused_at = None
            elif e.kind == "pause":
                at = self._raised_at(e)
                p = self.judge.p_complete(self._span(st, at - int(HISTORY_S * VAD_RATE), at))
                if p >= self.judge.end.cfg.threshold:
                    out += self._barge(st) + [VADEvent("end", e.time_s, p)]
                    st.speech_start = None
                else:
                    st.paused_at = round(e.time_s * VAD_RATE)
                    out.append(VADEvent("hold", e.time_s, p))
            elif e.kind == "end":
                out += self._barge(st) + [e]
                st.speech_start = None
            else:
                out.append(e)
        if self._early_due(st):
            out += self._early(st)
        if self._barge_due(st):
            out += self._barge(st)
        cfg = self.config
        # Speaking still (not in a held pause) this long after the onset, its pauses included: no backchannel. A
        # pause is only known `pause_ms` (and the VAD's ~3 windows of lag) after it began, so "still speaking" is
        # asked that much later: speech that stopped before `backchannel_max_ms` has raised its pause by then.
        wait_ms = cfg.backchannel_max_ms + cfg.pause_ms + 96
        if (st.barge == "backchannel" and not st.long_sent and st.speech_start is not None and st.paused_at is None
                and st.clock - st.speech_start >= wait_ms * VAD_RATE / 1000):
            st.long_sent = True
            out.append(VADEvent("long", st.clock / VAD_RATE, 0.0))
        st.history = st.history[-int(HISTORY_S * VAD_RATE) :]
        return out, st

    def _early(self, st: TurnTakingState) -> list[VADEvent]:
        """The first look at `early_ms`: a clear interruption is one now; anything else waits for the verdict."""
        st.early_done = True
        at = self._early_at(st)
        p = self._p_backchannel(st, at)
        if p >= self.config.early_p:
            return []
        st.barge = "interruption"
        return [VADEvent("interruption", at / VAD_RATE, p)]

    def _p_backchannel(self, st: TurnTakingState, until: int) -> float:
        """The barge-in head on the segment's audio from just before it began up to sample `until`."""
        return self.judge.p_backchannel(self._span(st, self._start(st) - int(BARGE_BEFORE_S * VAD_RATE), until))

    @staticmethod
    def _unjudged(state: TurnTakingState) -> str | None:
        return None if state.judge_barge else "unjudged"

    def _barge(self, st: TurnTakingState) -> list[VADEvent]:
        """The current segment's verdict, once (at `barge_decide_ms`, or at its end if that comes first)."""
        if st.speech_start is None or st.barge is not None:
            return []
        decided = min(st.clock, self._decide_at(st))
        p = self._p_backchannel(st, decided)
        st.barge = "backchannel" if p >= self.judge.barge.cfg.threshold else "interruption"
        return [VADEvent(st.barge, decided / VAD_RATE, p)]
