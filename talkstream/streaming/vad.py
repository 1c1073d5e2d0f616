"""Voice-activity detection with Silero VAD (ONNX, run by onnxruntime) and end-of-turn from trailing silence.

The model is shared by every session (onnxruntime sessions are thread-safe and hold no stream state); each stream
holds a `VADState`: the model's recurrent state, 64 samples of context, a 24 kHz -> 16 kHz resampler and the
turn-taking counters. `SileroVAD.step(pcm, state) -> (events, state)` consumes any number of samples.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soxr

from talkstream.checkpoint import WEIGHTS_DIR, CheckpointError

VAD_PATH = WEIGHTS_DIR / "vad" / "silero_vad_16k_op15.onnx"
VAD_SHA256 = "7ed98ddbad84ccac4cd0aeb3099049280713df825c610a8ed34543318f1b2c49"
VAD_RATE = 16_000
WINDOW = 512  # 32 ms at 16 kHz: the model's fixed input size
CONTEXT = 64


@dataclass
class VADConfig:
    start_threshold: float = 0.5  # probability that opens a speech segment
    end_threshold: float = 0.35  # below this counts as silence (hysteresis)
    min_speech_ms: float = 96.0  # speech shorter than this is not a turn (clicks, coughs)
    end_of_turn_ms: float = 480.0  # this much silence after speech ends the user's turn (silence-only turn taking)


@dataclass
class VADEvent:
    # "start" (speech began), "end" (end of turn), "pause" (silence reached the state's `pause_ms` inside a turn),
    # "resume" (speech again after a "pause");
    # streaming/turn_taking.py adds "hold" (a pause judged mid-sentence), "backchannel", "interruption", "long".
    kind: str
    time_s: float  # stream time at 16 kHz resolution, from the first sample the state saw
    probability: float


@dataclass
class VADState:
    input_rate: int
    resampler: soxr.ResampleStream | None
    rnn: np.ndarray = field(default_factory=lambda: np.zeros((2, 1, 128), np.float32))
    context: np.ndarray = field(default_factory=lambda: np.zeros((1, CONTEXT), np.float32))
    buffer: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    windows: int = 0  # windows processed so far (the stream clock)
    speaking: bool = False  # inside a turn
    speech_windows: int = 0  # consecutive speech windows while not yet in a turn
    silence_windows: int = 0  # consecutive silent windows while in a turn
    probability: float = 0.0  # the latest window's
    end_of_turn_ms: float | None = None  # this stream's silence that ends a turn (None: the config's)
    pause_ms: float | None = None  # silence that raises a "pause" event inside a turn (None: none)
    end_threshold: float | None = None  # below this a window in a turn is silence (None: the config's)
    paused: bool = False  # the current silence has raised its "pause"


class SileroVAD:
    """Silero VAD on 32 ms windows at 16 kHz; emits "start" and "end" (end of turn) events."""

    def __init__(self, config: VADConfig | None = None, path: Path = VAD_PATH):
        import onnxruntime as ort

        if not path.is_file():
            raise CheckpointError(f"{path}: VAD model missing")
        if hashlib.sha256(path.read_bytes()).hexdigest() != VAD_SHA256:
            raise CheckpointError(f"{path}: checksum mismatch (corrupted VAD model)")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.config = config or VADConfig()
        self._sr = np.array(VAD_RATE, np.int64)

    def warmup(self) -> None:
        self.step(np.zeros(WINDOW * 2, np.float32), self.init_state(VAD_RATE))

    def init_state(self, input_rate: int, end_of_turn_ms: float | None = None, pause_ms: float | None = None,
                   end_threshold: float | None = None) -> VADState:
        """A stream's state. `pause_ms`: raise a "pause" event when a turn's silence reaches it (the end-of-turn
        head decides there); `end_of_turn_ms`: the silence that ends a turn whatever; `end_threshold`: the speech
        probability below which a window in a turn counts as silence (defaults: the config's)."""
        resampler = None if input_rate == VAD_RATE else soxr.ResampleStream(input_rate, VAD_RATE, 1, "float32", "HQ")
        return VADState(input_rate=input_rate, resampler=resampler, end_of_turn_ms=end_of_turn_ms, pause_ms=pause_ms,
                        end_threshold=end_threshold)

    def reset(self, state: VADState) -> VADState:
        return self.init_state(state.input_rate, state.end_of_turn_ms, state.pause_ms, state.end_threshold)

    @staticmethod
    def end_turn(state: VADState) -> VADState:
        """The turn ends now (the end-of-turn head judged it complete at a pause): the next speech starts a new one."""
        return dataclasses.replace(state, speaking=False, speech_windows=0, silence_windows=0, paused=False)

    def step(self, pcm: np.ndarray, state: VADState) -> tuple[list[VADEvent], VADState]:
        """pcm: float32 [T] at `state.input_rate` -> events for every whole 32 ms window now available."""
        return self.step_many([(pcm, state)])[0]

    def step_many(self, items: list[tuple[np.ndarray, VADState]]) -> list[tuple[list[VADEvent], VADState]]:
        """Several streams' steps at once: each round of 32 ms windows is one batched model call for every stream
        that has a window in it (the model's batch axis; per stream the same numbers as alone, tested). The
        server's sessions step together this way (`CodecEngine.batched`): one call per tick, not one per session."""
        # Shallow copies: arrays are replaced, never mutated, so the old objects stay valid (resamplers are shared).
        states = [dataclasses.replace(st) for _, st in items]
        buffers = []
        for (pcm, _), st in zip(items, states, strict=True):
            x = np.asarray(pcm, np.float32).reshape(-1)
            if st.resampler is not None:
                x = st.resampler.resample_chunk(x)
            buffers.append(np.concatenate([st.buffer, x]))
        windows = [b.size // WINDOW for b in buffers]
        events: list[list[VADEvent]] = [[] for _ in items]
        for r in range(max(windows, default=0)):
            live = [j for j, n in enumerate(windows) if n > r]
            x = np.stack([np.concatenate([states[j].context[0], buffers[j][r * WINDOW : (r + 1) * WINDOW]])
                          for j in live])
            rnn = np.concatenate([states[j].rnn for j in live], axis=1)
            out, rnn = self.session.run(None, {"input": x, "state": rnn, "sr": self._sr})
            for n, j in enumerate(live):
                states[j].rnn, states[j].context = rnn[:, n : n + 1], x[n : n + 1, -CONTEXT:]
                events[j] += self._advance(states[j], float(out[n, 0]))
        for j, st in enumerate(states):
            st.buffer = buffers[j][windows[j] * WINDOW :]
        return list(zip(events, states, strict=True))

    def _advance(self, state: VADState, p: float) -> list[VADEvent]:
        """The turn-taking counters after one window of speech probability p."""
        cfg, win_ms = self.config, 1000 * WINDOW / VAD_RATE
        state.windows += 1
        state.probability = p
        t = state.windows * WINDOW / VAD_RATE
        if not state.speaking:
            state.speech_windows = state.speech_windows + 1 if p >= cfg.start_threshold else 0
            if state.speech_windows * win_ms >= cfg.min_speech_ms:
                state.speaking, state.silence_windows = True, 0
                return [VADEvent("start", t - state.speech_windows * win_ms / 1000, p)]
        else:
            end_p = cfg.end_threshold if state.end_threshold is None else state.end_threshold
            state.silence_windows = state.silence_windows + 1 if p < end_p else 0
            silence_ms = state.silence_windows * win_ms
            if silence_ms == 0 and state.paused:  # speech again after a pause was raised
                state.paused = False
                return [VADEvent("resume", t, p)]
            end_ms = cfg.end_of_turn_ms if state.end_of_turn_ms is None else state.end_of_turn_ms
            if silence_ms >= end_ms:
                state.speaking, state.speech_windows, state.paused = False, 0, False
                return [VADEvent("end", t - silence_ms / 1000, p)]
            if state.pause_ms is not None and not state.paused and silence_ms >= state.pause_ms:
                state.paused = True
                return [VADEvent("pause", t - silence_ms / 1000, p)]
        return []
