"""The pipeline stages a session is built from. One instance per session: each holds that session's state.

    audio in -> ResampleIn -> VoiceActivity -> CodecStage -> (codec mode) OutputStage -> MediaOut
                                                        \\-> (chat mode) TurnCollector -> a Responder's reply:
                                  reply tokens -> SlidingDecodeStage -> OutputStage -> MediaOut (paced)
    tokens in -> TokenDecodeStage -> OutputStage -> MediaOut

No stage knows a wire format: audio comes in as float PCM at the client's rate with its timestamp, and goes out as
`MediaOut` (tokens and/or float PCM at the client's rate), which each transport turns into what its wire carries.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import av
import numpy as np
import torch

from talkstream.codecs.audio.codec import AudioCodec, CodecState
from talkstream.models.turn import Turn
from talkstream.streaming.codec_engine import CodecEngine
from talkstream.streaming.turn_taking import TurnTaking
from talkstream.streaming.vad import VAD_RATE, SileroVAD, VADEvent


@dataclass
class AudioChunk:
    pcm: np.ndarray  # float32 [T] at the codec's rate
    timestamp: int  # the client's timestamp of the input frame (echoed back for latency)
    arrived: float  # time.monotonic() when it reached the server
    vad_events: list[VADEvent] = field(default_factory=list)


@dataclass
class TokensIn:
    codes: np.ndarray  # int [K, F]
    timestamp: int
    arrived: float


@dataclass
class MediaOut:
    """One step of a session's output at the client's settings."""

    tokens: np.ndarray | None  # int [K, F], when the client asked for tokens
    pcm: np.ndarray | None  # float32 [T] at the client's rate, when it asked for audio
    timestamp: int  # the client's timestamp of the input that completed this output
    arrived: float | None  # when that input reached the server (for the server's share of latency)
    rate: int = 24_000  # the PCM's sample rate
    paced: bool = False  # metered out by the session's pacer (a reply, token input): never to be dropped on the way

    @property
    def audio_s(self) -> float:
        return 0.0 if self.pcm is None else self.pcm.size / self.rate


@dataclass
class CodecOut:
    codes: torch.Tensor  # long [1, K, F]
    pcm: np.ndarray | None  # float32 [F*hop] at the codec's rate, or None when only tokens are wanted
    timestamp: int
    arrived: float
    vad_events: list[VADEvent] = field(default_factory=list)
    pcm_in: np.ndarray | None = None  # float32 [F*hop]: the input these codes came from (chat hears it)


class StreamResampler:
    """Live mono resampling with libswresample (av): output follows input chunk by chunk with a delay of about
    16 samples. soxr's streaming resampler is the better filter, but it emits in ~35 ms blocks, which added
    35-40 ms to every frame of a session at another rate than the codec's (48 kHz WebRTC and browsers)."""

    def __init__(self, rate_in: int, rate_out: int):
        self.rate_in = rate_in
        self._resampler = av.AudioResampler(format="flt", layout="mono", rate=rate_out)
        self._pts = 0

    def resample_chunk(self, x: np.ndarray) -> np.ndarray:
        """float32 [T] at rate_in -> float32 [T'] at rate_out (what is ready so far)."""
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(x, np.float32).reshape(1, -1), "flt", "mono")
        frame.sample_rate, frame.pts = self.rate_in, self._pts
        self._pts += x.size
        out = [f.to_ndarray().reshape(-1) for f in self._resampler.resample(frame)]
        return np.concatenate(out) if out else np.zeros(0, np.float32)


def resampler(rate_in: int, rate_out: int) -> StreamResampler | None:
    return None if rate_in == rate_out else StreamResampler(rate_in, rate_out)


class VoiceActivity:
    """Silero VAD on the way through; events ride along with the audio so later stages see them in order.

    The model never runs on the event loop: a session's VAD must not delay every other session's I/O. With an
    `engine` (the server), every session's step of a tick is one batched call on the engine's thread for batched
    work, beside the codec's (`CodecEngine.batched`); without, the loop's executor. Its events are handled back on
    the loop.
    """

    name = "vad"

    def __init__(self, vad: SileroVAD, rate: int, on_event: Callable[[VADEvent], None] | None = None,
                 engine: CodecEngine | None = None, pass_through: bool = True, turn_taking: TurnTaking | None = None,
                 replying: Callable[[], bool] | None = None):
        """pass_through=False: the end of a branch (`VoiceActivityTap`): events only, the audio goes no further.
        turn_taking: end turns and judge barge-ins by the turn heads (streaming/turn_taking.py); None: silence alone
        ends a turn and every speech start is a speech start. replying: whether a reply is playing now; speech that
        starts while none is gets no barge-in verdict (the head is not run: an ordinary turn). None: every segment
        is judged."""
        self.vad, self.rate, self.on_event, self.engine = vad, rate, on_event, engine
        self.pass_through, self.turn_taking, self.replying = pass_through, turn_taking, replying
        self.reset()

    def reset(self) -> None:
        tt = self.turn_taking
        self.state = self.vad.init_state(self.rate, **(tt.vad_settings() if tt else {}))
        self.tt_state = tt.init_state(self.rate) if tt else None

    async def process(self, chunk: AudioChunk) -> list[AudioChunk]:
        if self.engine is not None:
            events, self.state = await self.engine.batched(self.vad.step_many, chunk.pcm, self.state)
        else:
            events, self.state = await asyncio.to_thread(self.vad.step, chunk.pcm, self.state)
        tt = self.turn_taking
        if tt is not None:
            assert self.tt_state is not None  # made with the turn taking
            # The heads run only when a decision is due, and then on a thread (an encoder call, ~10-30 ms).
            new = chunk.pcm.size * VAD_RATE // self.rate
            paused = any(e.kind == "pause" for e in events)
            if self.replying is not None:
                self.tt_state.judge_barge = self.replying()
            if tt.due(events, self.tt_state, new):
                events, self.tt_state = await asyncio.to_thread(tt.step, chunk.pcm, events, self.tt_state)
            else:
                events, self.tt_state = tt.step(chunk.pcm, events, self.tt_state)
            if paused and any(e.kind == "end" for e in events) and self.state.speaking:
                self.state = self.vad.end_turn(self.state)  # judged complete at a pause: the VAD's turn ends too
        for e in events:
            if self.on_event is not None:
                self.on_event(e)
        chunk.vad_events = events
        return [chunk] if self.pass_through else []


class VoiceActivityTap:
    """Codec mode: the VAD beside the codec instead of in front of it. Nothing in a codec echo waits for the VAD (its
    events only go to the client), so each chunk is handed to a VAD branch (`feed`: a live pipeline's, which drops
    its oldest when behind) and passes on at once; the echo's latency no longer includes a VAD step.

    The branch gets the audio in blocks of at least `min_samples` (the rest at the end of the stream): a VAD call
    per 20 ms packet cost a branch wake-up and an engine hand-off each, and a third of them held no whole 32 ms
    window (measured: the VAD thread was a fifth of a loaded worker's CPU). Events come up to a block later; here
    they only inform the client."""

    name = "vad_tap"

    def __init__(self, feed: Callable[[AudioChunk], None], min_samples: int = 0):
        self.feed, self.min_samples = feed, min_samples
        self.reset()

    def reset(self) -> None:
        self.held: list[AudioChunk] = []
        self.held_samples = 0

    def _release(self) -> None:
        if self.held:
            first = self.held[0]
            pcm = first.pcm if len(self.held) == 1 else np.concatenate([c.pcm for c in self.held])
            self.feed(AudioChunk(pcm, first.timestamp, first.arrived))  # its own object: the branch writes events
            self.reset()

    async def process(self, chunk: AudioChunk) -> list[AudioChunk]:
        self.held.append(chunk)
        self.held_samples += chunk.pcm.size
        if self.held_samples >= self.min_samples:
            self._release()
        return [chunk]

    async def flush(self) -> list[AudioChunk]:
        self._release()
        return []


class CodecStage:
    """Codec steps through the shared batched engine; decodes too when the client wants PCM back.

    Audio is stepped in chunks of `frames_per_step` frames. One frame (13.3 ms) is the lowest latency, but one
    codec call costs nearly the same for one frame as for four (it is dominated by reading the weights), so larger
    steps serve more sessions per core; every session's requests have the same shape, so the engine stacks them.
    The echoed timestamp is that of the packet holding the chunk's first sample, so measured latency includes the
    wait for the chunk to fill.
    """

    name = "codec"

    def __init__(self, engine: CodecEngine, num_codebooks: int, decode: bool, frames_per_step: int = 2):
        self.engine, self.decode = engine, decode
        self.num_codebooks = num_codebooks
        self.step_samples = frames_per_step * engine.codec.frame_size
        self.reset()

    def reset(self) -> None:
        self.state = self.engine.codec.init_state(1, self.num_codebooks)
        self.pending = np.zeros(0, np.float32)
        self.pending_since: tuple[int, float] | None = None  # (timestamp, arrival) of the oldest pending sample
        self.carried_events: list[VADEvent] = []

    async def _step(self, x: np.ndarray, since: tuple[int, float], events: list[VADEvent]) -> CodecOut:
        pcm = torch.from_numpy(np.ascontiguousarray(x))[None, None]
        if self.decode:
            codes, out, self.state = await self.engine.roundtrip(pcm, self.state)
            out_pcm = out[0, 0].numpy()
        else:
            codes, self.state = await self.engine.encode(pcm, self.state)
            out_pcm = None
        return CodecOut(codes, out_pcm, since[0], since[1], events, pcm_in=x)

    async def process(self, chunk: AudioChunk) -> list[CodecOut]:
        if self.pending_since is None:
            self.pending_since = (chunk.timestamp, chunk.arrived)
        x = np.concatenate([self.pending, chunk.pcm])
        self.carried_events += chunk.vad_events
        outs, n = [], self.step_samples
        i = 0
        while x.size - i >= n:
            outs.append(await self._step(x[i : i + n], self.pending_since, self.carried_events))
            self.carried_events = []
            self.pending_since = (chunk.timestamp, chunk.arrived)
            i += n
        self.pending = x[i:]
        if not self.pending.size:
            self.pending_since = None
        return outs

    async def flush(self) -> list[CodecOut]:
        """End of stream: the whole frames still pending (a partial frame cannot be coded)."""
        hop = self.engine.codec.frame_size
        n = self.pending.size // hop * hop
        if not n:
            return []
        assert self.pending_since is not None  # set whenever samples are pending
        out = await self._step(self.pending[:n], self.pending_since, self.carried_events)
        self.pending = self.pending[n:]
        return [out]


class TurnCollector:
    """Chat mode: gathers the user's turn (codes and the audio they came from) from VAD start, with a little
    pre-roll, to end of turn."""

    name = "turn"

    def __init__(self, codec: AudioCodec, preroll_s: float = 0.3, max_turn_s: float = 30.0,
                 on_speech: Callable[[list[torch.Tensor], list[np.ndarray]], Awaitable[None]] | None = None):
        self.preroll = round(preroll_s * codec.frame_rate)
        self.max_frames = round(max_turn_s * codec.frame_rate)
        self.hop = codec.frame_size
        # Called with the turn so far (lists of code chunks and of their audio that only grow until the turn ends;
        # each turn gets new lists) while the user speaks: the Thinker listens during the turn, not after it.
        self.on_speech = on_speech
        self.reset()

    def reset(self) -> None:
        self.frames: list[torch.Tensor] = []
        self.pcm: list[np.ndarray] = []
        self.speaking = False

    def _turn(self) -> Turn:
        return Turn(torch.cat(self.frames, dim=-1), np.concatenate(self.pcm) if self.pcm else None)

    async def flush(self) -> list[Turn]:
        """End of input during a turn ends the turn."""
        turn = [self._turn()] if self.speaking and self.frames else []
        self.reset()
        return turn

    async def process(self, out: CodecOut) -> list[Turn]:
        turns = []
        self.frames.append(out.codes)
        pcm = out.pcm_in if out.pcm_in is not None else np.zeros(out.codes.shape[-1] * self.hop, np.float32)
        self.pcm.append(pcm)
        for e in out.vad_events:
            if e.kind == "start":
                self.speaking = True
                keep, kept = 0, 0  # keep only the pre-roll before speech began
                for c in reversed(self.frames):
                    keep += 1
                    kept += c.shape[-1]
                    if kept >= self.preroll + out.codes.shape[-1]:
                        break
                self.frames, self.pcm = self.frames[-keep:], self.pcm[-keep:]
            elif e.kind == "end" and self.speaking:
                self.speaking = False
                turns.append(self._turn())
                self.frames, self.pcm = [], []
        if not self.speaking:  # outside a turn only the pre-roll matters
            while sum(c.shape[-1] for c in self.frames[1:]) > self.preroll:
                self.frames.pop(0)
                self.pcm.pop(0)
        elif sum(c.shape[-1] for c in self.frames) > self.max_frames:  # an endless turn is cut, not hoarded
            self.speaking = False
            turns.append(self._turn())
            self.frames, self.pcm = [], []
        if self.speaking and self.on_speech is not None:
            await self.on_speech(self.frames, self.pcm)
        return turns


class BatchedDecode:
    """One codec's streaming decode for many sessions at once (`CodecEngine.batched`): each waiting session's
    (codes [1, K, F], state) stacked into one torch step where their shapes agree. One object per codec
    (`batched_decode`), so that every session's requests meet in one group."""

    def __init__(self, codec: AudioCodec):
        self.codec = codec

    def __call__(self, items: list[tuple[torch.Tensor, CodecState]]) -> list[tuple[torch.Tensor, CodecState]]:
        out: list = [None] * len(items)
        groups: dict[tuple, list[int]] = {}
        for i, (codes, state) in enumerate(items):
            groups.setdefault((tuple(codes.shape[1:]), state.num_codebooks), []).append(i)
        with torch.inference_mode():
            for idx in groups.values():
                codes = torch.cat([items[i][0] for i in idx])
                state = CodecState.stack([items[i][1] for i in idx]) if len(idx) > 1 else items[idx[0]][1]
                pcm, state = self.codec.decode_step(codes, state)
                states = state.unbind() if len(idx) > 1 else [state]
                for j, i in enumerate(idx):
                    out[i] = (pcm[j : j + 1], states[j])
        return out


_BATCHED_DECODES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def batched_decode(codec: AudioCodec) -> BatchedDecode:
    if codec not in _BATCHED_DECODES:
        _BATCHED_DECODES[codec] = BatchedDecode(codec)
    return _BATCHED_DECODES[codec]


class SlidingDecodeStage:
    """Chat replies: token blocks -> PCM, the first audio after one block, through a streaming decoder whose state
    is carried from block to block: the same samples as decoding the whole reply at once (the decoder is causal), where
    a sliding window decoded each 6-frame block again from the 39 frames before it (7.5 times the work: 14% of a
    conversation's server CPU in a profile of two). The engine's own codec goes through the engine (its backend,
    every session's step batched with the others'); a reply decoder of its own (the Talker's voice decoder) through
    `BatchedDecode` on the engine's batched thread, every session's block in one torch step."""

    name = "decode"

    def __init__(self, engine: CodecEngine, num_codebooks: int, block_frames: int = 6, codec: AudioCodec | None = None):
        self.engine = engine
        # `codec`: a decoder of the reply's own (the Talker's voice decoder); the engine's codec otherwise.
        self.own = None if codec is None or codec is engine.codec else codec
        self.num_codebooks = num_codebooks
        self.reset()

    def reset(self) -> None:
        self.state = (self.own or self.engine.codec).init_state(1, self.num_codebooks)

    async def process(self, block: torch.Tensor | None) -> list[CodecOut]:
        """block: long [1, K, F], or None at the end of a reply."""
        if block is None:  # a causal decoder holds nothing back: every block's samples are out already
            self.reset()
            return []
        codes = block[:, : self.num_codebooks].to(torch.long)
        if self.own is None:
            pcm, self.state = await self.engine.decode(codes, self.state)
        else:
            self.own.check_codes(codes)
            pcm, self.state = await self.engine.batched(batched_decode(self.own), codes, self.state)
        if not pcm.shape[-1]:
            return []
        now = time.monotonic()
        return [CodecOut(torch.zeros(1, self.num_codebooks, 0, dtype=torch.long), pcm[0, 0].numpy(), 0, now)]


class ResampleIn:
    """Audio at the client's rate -> chunks at the codec's rate (soxr, streaming)."""

    name = "resample_in"

    def __init__(self, client_rate: int, codec_rate: int):
        self.client_rate, self.codec_rate = client_rate, codec_rate
        self.reset()

    def reset(self) -> None:
        self.stream = resampler(self.client_rate, self.codec_rate)

    async def process(self, chunk: AudioChunk) -> list[AudioChunk]:
        x = chunk.pcm if self.stream is None else self.stream.resample_chunk(chunk.pcm)
        return [AudioChunk(x, chunk.timestamp, chunk.arrived)] if x.size else []


class TokenDecodeStage:
    """Codec mode with tokens in: token frames -> PCM through the engine (per-session decoder state)."""

    name = "decode"

    def __init__(self, engine: CodecEngine, num_codebooks: int):
        self.engine, self.num_codebooks = engine, num_codebooks
        self.reset()

    def reset(self) -> None:
        self.state = self.engine.codec.init_state(1, self.num_codebooks)

    async def process(self, item: TokensIn) -> list[CodecOut]:
        codes = torch.from_numpy(np.asarray(item.codes, np.int64))[None]
        pcm, self.state = await self.engine.decode(codes, self.state)
        return [CodecOut(codes, pcm[0, 0].numpy(), item.timestamp, item.arrived)]


class OutputStage:
    """Codec output -> `MediaOut` at the client's settings: tokens as they are, PCM resampled to the client's rate."""

    name = "output"

    def __init__(self, codec_rate: int, client_rate: int, send_tokens: bool, send_pcm: bool):
        self.codec_rate, self.client_rate = codec_rate, client_rate
        self.send_tokens, self.send_pcm = send_tokens, send_pcm
        self.reset()

    def reset(self) -> None:
        self.stream = resampler(self.codec_rate, self.client_rate)

    async def process(self, out: CodecOut) -> list[MediaOut]:
        tokens = out.codes[0].numpy() if self.send_tokens and out.codes.shape[-1] else None
        pcm = None
        if self.send_pcm and out.pcm is not None and out.pcm.size:
            pcm = out.pcm if self.stream is None else self.stream.resample_chunk(out.pcm)
            pcm = pcm if pcm.size else None
        if tokens is None and pcm is None:
            return []
        return [MediaOut(tokens, pcm, out.timestamp, out.arrived, self.client_rate)]
