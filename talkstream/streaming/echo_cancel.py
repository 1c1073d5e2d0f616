"""Echo cancelling for clients that play the reply into their own microphone (WebSocket, phone lines).

Such a client's microphone hears the agent's reply; unremoved, the VAD takes it for the user and the agent interrupts
itself. The server knows exactly what it sent, so it cancels that with WebRTC's AEC3 (the echo canceller Chrome runs,
with its own delay estimator and residual echo suppressor; the `pywebrtc-audio` wheel, Apache-2.0, WebRTC's code
BSD-3-Clause, no system library needed).

The reference ("far end") is what the session sent, queued as it leaves (`play`) and consumed at the microphone's own
clock: every N microphone samples take the next N queued ones, zeros when nothing is playing. The offset between a
sample leaving and its echo coming back (the network both ways, the client's playback buffer, the room) is then about
constant for as long as the reply plays, and AEC3 finds it by itself: measured over 20-450 ms. Longer
offsets are first taken out by a coarse delay line (`EchoConfig.coarse`): the delay a GCC-PHAT cross-correlation
between the microphone and the reference finds over the last seconds, less a margin that AEC3 covers.

    canceller = EchoCanceller(EchoConfig(sample_rate=24_000))
    state = canceller.init_state()           # one per session: AEC3's adaptive filters are the state
    state = canceller.play(reply_pcm, state)  # whenever reply audio leaves for the client
    clean, state = canceller.step(mic, state)  # microphone audio in, echo removed

Offline is the same `step` over the whole signal: AEC3 works on whole 10 ms frames, so `step` holds a chunk's last
part frame for the next call and gives out only whole frames (`flush` gives out the rest at the end of a stream).
The state's AEC3 object is changed in place (it cannot be copied): a state belongs to one stream.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from pywebrtc_audio import AudioProcessor

from talkstream.streaming.stages import resampler

if TYPE_CHECKING:
    from talkstream.streaming.stages import AudioChunk

FRAME_S = 0.01  # AEC3's frame
RATES = (8_000, 16_000, 24_000, 32_000, 48_000)  # a whole number of samples per frame


@dataclass
class EchoConfig:
    sample_rate: int = 24_000
    max_queued_s: float = 2.0  # reference queued ahead of the microphone at most (a client that stopped sending)
    coarse: bool = True  # a coarse delay line before AEC3 for offsets longer than its own range
    coarse_window_s: float = 2.0  # the stretch the coarse delay is measured over (the reference active in it)
    coarse_max_s: float = 1.2  # the longest offset it looks for
    coarse_margin_s: float = 0.15  # what it leaves to AEC3 (its delay estimator covers 0-450 ms)
    restart_after_s: float = 1.0  # a reference starting after this much digital silence (a new reply) restarts AEC3
    # A microphone that hears no echo of a reply (headphones, a phone line whose network cancels it) passes
    # untouched from the moment that shows, and through the next replies: AEC3, fresh for each reply and hearing no
    # echo to learn from, takes any speech in its first 2.5 s for echo. Judged on the part of a reply past
    # `echo_reach_s` (the longest echo delay looked for): echo-free once at least `echo_free_min_s` of it is judged
    # and `echo_free_share` of its frames are `echo_free_db` under the loudest reference frame of the
    # `echo_reach_s` before them. An echo that appears later (found by the coarse estimate) turns AEC3 back on.
    echo_reach_s: float = 1.2
    echo_free_db: float = 40.0
    echo_free_share: float = 0.8
    echo_free_min_s: float = 0.5  # a verdict needs at least this much of a reply past `echo_reach_s`


@dataclass
class EchoState:
    apm: AudioProcessor  # WebRTC's audio processing with AEC3 on: its filters and delay estimate
    queued: np.ndarray  # reference sent but not yet matched with microphone samples
    near_held: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # short of a frame
    far_held: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    shift: int = 0  # the coarse delay line's length in samples
    line: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # its content: the last `shift` samples
    history_near: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # for the coarse estimate
    history_far: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    estimates: list[int] = field(default_factory=list)  # the last coarse estimates (samples)
    peaks: list[float] = field(default_factory=list)  # and how sure each was
    quiet_frames: int = 1 << 30  # frames since the reference last had a sample other than 0 (a new stream: idle)
    echo_free: bool = False  # the last judged reply had no echo in the microphone: replies pass untouched
    reply_frames: int = 0  # frames of the current reply so far (idle: 0)
    judged: int = 0  # of those past `echo_reach_s`: how many were judged, and how many of them were echo-free
    quiet: int = 0
    far_energy: np.ndarray = field(default_factory=lambda: np.zeros(0))  # the reference's frame energies, last reach


def pcm_in(x, what: str) -> np.ndarray:
    """Mono PCM as float32 [T] in [-1, 1]: float arrays as they are, int16 scaled; NaN and infinities become 0 (one
    bad sample must not poison the adaptive filters for the rest of the call). Anything else: ValueError."""
    a = np.asarray(x)
    if a.ndim != 1:
        raise ValueError(f"{what}: mono PCM [T] expected, got shape {a.shape}")
    if a.dtype == np.int16:
        return a.astype(np.float32) / 32768.0
    if a.dtype.kind != "f":
        raise ValueError(f"{what}: float or int16 PCM expected, got {a.dtype}")
    a = a.astype(np.float32)
    if not np.isfinite(a).all():
        a = np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)
    return np.clip(a, -1.0, 1.0)


def erle_db(mic: np.ndarray, clean: np.ndarray) -> float:
    """Echo return loss enhancement: how much weaker the cancelled signal is than the microphone's, in dB, over the
    given samples (pass the stretch where only echo is present)."""
    mic, clean = np.asarray(mic, np.float64), np.asarray(clean, np.float64)
    if mic.shape != clean.shape:
        raise ValueError(f"erle_db: mic and clean differ in shape: {mic.shape} vs {clean.shape}")
    return float(10 * np.log10((np.sum(mic**2) + 1e-12) / (np.sum(clean**2) + 1e-12)))


def gcc_phat(near: np.ndarray, far: np.ndarray, max_lag: int) -> tuple[int, float]:
    """The lag (0..max_lag samples) by which `near` follows `far`, and the peak's height over the median (how sure).
    float [T] each, same length."""
    n = 1 << int(np.ceil(np.log2(near.size + far.size)))
    cross = np.fft.rfft(near, n) * np.conj(np.fft.rfft(far, n))
    r = np.fft.irfft(cross / (np.abs(cross) + 1e-9), n)[: max_lag + 1]
    lag = int(np.argmax(r))
    return lag, float(r[lag] / (np.median(np.abs(r)) + 1e-12))


class EchoCanceller:
    """Per-stream echo cancelling with a reference; the object holds only the configuration (sessions share it)."""

    def __init__(self, config: EchoConfig | None = None):
        self.config = config or EchoConfig()
        if self.config.sample_rate not in RATES:
            raise ValueError(f"echo cancelling runs at {RATES} Hz, not {self.config.sample_rate}")
        self.frame = int(self.config.sample_rate * FRAME_S)

    def init_state(self) -> EchoState:
        apm = AudioProcessor(sample_rate=self.config.sample_rate, echo_cancellation=True)
        return EchoState(apm=apm, queued=np.zeros(0, np.float32))

    def reset(self, state: EchoState) -> EchoState:
        return self.init_state()

    # -- the reference --------------------------------------------------------------------------------------------
    def play(self, far: np.ndarray, state: EchoState) -> EchoState:
        """Audio that left for the client (float [T] at the canceller's rate): queued for the microphone samples that
        come next."""
        q = np.concatenate([state.queued, pcm_in(far, "reference")])
        state.queued = q[-int(self.config.max_queued_s * self.config.sample_rate):]
        return state

    def take_reference(self, n: int, state: EchoState) -> np.ndarray:
        """The next n queued reference samples, zeros past the end of the queue: the reference for n microphone
        samples. Kept apart from `cancel` so that a server can take it where it queues (`play`), on one thread."""
        far = state.queued[:n]
        state.queued = state.queued[n:]
        return far if far.size == n else np.concatenate([far, np.zeros(n - far.size, np.float32)])

    # -- the microphone -------------------------------------------------------------------------------------------
    def step(self, mic: np.ndarray, state: EchoState) -> tuple[np.ndarray, EchoState]:
        """Microphone PCM (float [T]) -> the same with the echo removed, whole frames only (the rest is held)."""
        mic = pcm_in(mic, "microphone")
        return self.cancel(mic, self.take_reference(mic.size, state), state)

    def cancel(self, mic: np.ndarray, far: np.ndarray, state: EchoState) -> tuple[np.ndarray, EchoState]:
        """`step` with the reference already taken (`take_reference`): the heavy part, for a worker thread."""
        near = np.concatenate([state.near_held, pcm_in(mic, "microphone")])
        ref = np.concatenate([state.far_held, pcm_in(far, "reference")])
        if near.size != ref.size:
            raise ValueError(f"microphone and reference differ in length: {near.size} vs {ref.size}")
        whole = near.size // self.frame * self.frame
        state.near_held, state.far_held = near[whole:], ref[whole:]
        if not whole:
            return np.zeros(0, np.float32), state
        return self._frames(near[:whole], ref[:whole], state), state

    def flush(self, state: EchoState) -> tuple[np.ndarray, EchoState]:
        """The end of the stream: the held part frame, cancelled (padded with silence to a frame)."""
        n = state.near_held.size
        if not n:
            return np.zeros(0, np.float32), state
        pad = np.zeros(self.frame - n, np.float32)
        out = self._frames(np.concatenate([state.near_held, pad]), np.concatenate([state.far_held, pad]), state)
        state.near_held = state.far_held = np.zeros(0, np.float32)
        return out[:n], state

    def _frames(self, near: np.ndarray, far: np.ndarray, state: EchoState) -> np.ndarray:
        """Whole frames through the coarse delay line and AEC3."""
        if self.config.coarse:
            self._estimate(near, far, state)
            line = np.concatenate([state.line, far])
            far, state.line = line[: far.size], line[far.size:]
        # A reference that starts again after a silence (a new reply) starts AEC3 afresh: a client may play each
        # reply with another delay (its playback restarts), and a converged AEC3 took about a second to follow a
        # 20 ms move, letting the echo through meanwhile; from scratch it finds the path within the first 100 ms.
        # Between replies (the reference silent for `restart_after_s`) the microphone passes untouched: AEC3 with
        # nothing to cancel still changes the user's voice (measured: Whisper heard "smooth planks" as "smooth
        # clangs" through it). So does a reply when the last one showed no echo in the microphone (`echo_free`).
        cfg, f = self.config, self.frame
        restart, reach = int(cfg.restart_after_s / FRAME_S), int(cfg.echo_reach_s / FRAME_S)
        near_e = np.mean(near.reshape(-1, f).astype(np.float64) ** 2, axis=1)
        far_e = np.mean(far.reshape(-1, f).astype(np.float64) ** 2, axis=1)
        history = np.concatenate([state.far_energy, far_e])
        free_ratio = 10 ** (-cfg.echo_free_db / 10)
        modes = []  # per frame: "pass" (between replies, or no echo), "restart" (a reply begins: AEC3 afresh), "aec"
        for k, active in enumerate((far_e > 0).tolist()):
            if state.quiet_frames >= restart:  # idle
                if active:  # a new reply: judge the last one
                    self._judge(state)
                    modes.append("pass" if state.echo_free else "restart")
                else:
                    modes.append("pass")
            else:
                modes.append("pass" if state.echo_free else "aec")
            state.quiet_frames = 0 if active else state.quiet_frames + 1
            if state.quiet_frames < restart:  # in a reply (and the second after it, where its echo may still be)
                state.reply_frames += 1
                if state.reply_frames > reach:
                    loudest = history[max(0, state.far_energy.size + k - reach) : state.far_energy.size + k + 1].max()
                    if loudest > 1e-6:  # the reference was playing (above -60 dBFS): echo would be heard by now
                        state.judged += 1
                        state.quiet += int(near_e[k] < loudest * free_ratio)
                        if not state.echo_free and self._echo_free(state):  # no echo so far: untouched from here
                            state.echo_free = True
        state.far_energy = history[-reach:]
        pieces, a = [], 0
        for k in range(1, len(modes) + 1):
            if k < len(modes) and modes[k] == ("aec" if modes[a] == "restart" else modes[a]):
                continue
            if modes[a] == "pass":
                pieces.append(near[a * f : k * f])
            else:
                if modes[a] == "restart":
                    state.apm.reset()
                pieces.append(state.apm.process(near[a * f : k * f], far[a * f : k * f]))
            a = k
        return np.concatenate(pieces).astype(np.float32, copy=False)

    def _echo_free(self, state: EchoState) -> bool:
        return state.quiet >= self.config.echo_free_share * state.judged >= (
            self.config.echo_free_share * self.config.echo_free_min_s / FRAME_S)

    def _judge(self, state: EchoState) -> None:
        """The reply that ended: echo-free or not (too short a reply leaves the verdict as it was)."""
        if state.judged >= self.config.echo_free_min_s / FRAME_S:
            state.echo_free = self._echo_free(state)
        state.reply_frames = state.judged = state.quiet = 0

    def _estimate(self, near: np.ndarray, far: np.ndarray, state: EchoState) -> None:
        """Keep the last `coarse_window_s` of both signals; at each whole window, measure the offset and, when two
        windows in a row agree on one AEC3 cannot cover, move the delay line to it."""
        cfg, sr = self.config, self.config.sample_rate
        window = int(cfg.coarse_window_s * sr)
        state.history_near = np.concatenate([state.history_near, near])
        state.history_far = np.concatenate([state.history_far, far])
        while state.history_near.size >= window:
            hn, hf = state.history_near[:window], state.history_far[:window]
            # half-overlapping windows: the next starts half a window on
            state.history_near, state.history_far = state.history_near[window // 2:], state.history_far[window // 2:]
            if np.mean(hf**2) < 1e-6 or np.mean(hn**2) < 1e-8:  # no reference playing, or a silent microphone
                continue
            # at about 6 kHz (4-sample means at 24 kHz): a quarter of the cost, and 10 ms is all the precision needed
            d = max(1, sr // 6000)
            lag, peak = gcc_phat(hn[: hn.size // d * d].reshape(-1, d).mean(1),
                                 hf[: hf.size // d * d].reshape(-1, d).mean(1), int(cfg.coarse_max_s * sr) // d)
            lag *= d
            if peak < 8.0:  # no clear echo path (no echo, or the user talking over it)
                continue
            state.estimates, state.peaks = (state.estimates + [lag])[-2:], (state.peaks + [peak])[-2:]
            if len(state.estimates) < 2 or abs(state.estimates[0] - state.estimates[1]) > sr // 100:
                continue
            # An echo where none was heard (the client's speaker went on): cancel again. Surer than the delay line
            # needs to be: a voice talking over the reply gave agreeing peaks of 8-20; an echo gave 50-180.
            if state.echo_free and min(state.peaks) >= 30.0:
                state.echo_free = False
                state.apm.reset()
            margin = int(cfg.coarse_margin_s * sr)
            target = max(0, lag - margin) if lag > int(0.45 * sr) else 0
            if abs(target - state.shift) > int(0.1 * sr):
                self._move_line(target, state)
                state.apm.reset()  # AEC3 relearns a moved path faster from scratch (measured: <1 s against 3 s)

    @staticmethod
    def _move_line(shift: int, state: EchoState) -> None:
        """The delay line's new length: longer gets silence in front, shorter drops its oldest samples."""
        if shift > state.shift:
            state.line = np.concatenate([np.zeros(shift - state.shift, np.float32), state.line])
        else:
            state.line = state.line[state.shift - shift:]
        state.shift = shift


class EchoCancelStage:
    """Chat mode, for a client that does not cancel its own echo: the microphone with the reply taken out, between
    `ResampleIn` and `VoiceActivity`, so that the agent never hears itself as a barge-in.

    The session hands it every piece of reply audio as it leaves for the client (`play`, at the client's rate, with
    the time). A piece is queued for the microphone audio that *arrives* after it left, not for whatever this stage
    processes next: a server running behind has older microphone audio waiting, and taking the reference with that
    would shift the echo's delay by the backlog, differently for every reply (AEC3 then relearns the delay while the
    echo gets through). The reference is taken here on the event loop; AEC3 runs on the loop's executor (it
    releases the GIL)."""

    name = "echo_cancel"

    def __init__(self, client_rate: int, rate: int):
        self.canceller = EchoCanceller(EchoConfig(sample_rate=rate))
        self.client_rate, self.rate = client_rate, rate
        self.reset()

    def reset(self) -> None:
        self.state = self.canceller.init_state()
        self.to_rate = resampler(self.client_rate, self.rate)
        self.sent: deque[tuple[float, np.ndarray]] = deque()  # (when it left, PCM at `rate`), not yet queued
        self.sent_samples = 0

    def play(self, pcm: np.ndarray, sent: float) -> None:
        """Reply audio that left for the client at `sent` (time.monotonic()): float32 [T] at the client's rate."""
        x = pcm if self.to_rate is None else self.to_rate.resample_chunk(np.asarray(pcm, np.float32))
        self.sent.append((sent, x))
        self.sent_samples += x.size
        while self.sent_samples > self.canceller.config.max_queued_s * self.rate:  # no microphone audio comes
            self.sent_samples -= self.sent.popleft()[1].size

    async def process(self, chunk: AudioChunk) -> list[AudioChunk]:
        while self.sent and self.sent[0][0] <= chunk.arrived:
            x = self.sent.popleft()[1]
            self.sent_samples -= x.size
            self.state = self.canceller.play(x, self.state)
        far = self.canceller.take_reference(chunk.pcm.size, self.state)
        clean, self.state = await asyncio.to_thread(self.canceller.cancel, chunk.pcm, far, self.state)
        return [dataclasses.replace(chunk, pcm=clean)] if clean.size else []
