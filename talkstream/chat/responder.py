"""Speech in, text and speech out: the Thinker seam, the streaming Speaker, and the chat responder the services use.

The Thinker seam is `chat.protocol.Thinker` (`BuiltinThinker` here, `EarsThinker` and `V1Thinker` in
`models.ears_thinker`, `OpenAIThinker` implement it): hear a turn (whole, or while it is spoken), its transcript, and
the reply as it is written (text pieces and a hidden state [dim] or None).

A Thinker holds no user's state: `ChatResponder` (the chat model, shared by a server) opens one `Conversation` per
user, which owns that user's history and the turn heard so far; two users never share either.

The Speaker turns those pieces into codec-token blocks as soon as each word is complete: the first block leaves
after the first word, not after the whole reply. Heavy steps run in a worker thread so the event loop keeps serving.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import time
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from talkstream.chat.protocol import Heard, ReplyFormat, Thinker
from talkstream.errors import UserError
from talkstream.models import av
from talkstream.models import text as tx
from talkstream.models.talker import SamplingConfig, Talker, TalkerState
from talkstream.models.talker_units import BOS, EOS, PAUSES, word_units
from talkstream.models.thinker import Thinker as ThinkerModel
from talkstream.models.thinker import ThinkerState
from talkstream.models.turn import Turn, split_turn


def codes_to_latent(codebook: torch.Tensor, codes: torch.Tensor, stack: int, before: int | None = 0) -> torch.Tensor:
    """codes long [1, K, F] -> the codec's quantized latent [1, D, F'], zero-padded so that with `before` frames
    already heard the turn ends on a whole Thinker position (`before=None`: no padding, more is coming)."""
    z = F.embedding(codes[0, 0], codebook[0])  # [F, D]: the sum of the K codebooks' vectors
    for k in range(1, codes.shape[1]):
        z = z + F.embedding(codes[0, k], codebook[k])
    pad = 0 if before is None else -(before + z.shape[0]) % stack
    return F.pad(z, (0, 0, 0, pad)).T[None]


def _state(heard: Heard) -> ThinkerState:
    """The built-in Thinker's state in what it heard (a transcript-only Heard, from another Thinker, has none)."""
    if heard.state is None:
        raise ValueError("this turn was heard by a Thinker that keeps no built-in Thinker state")
    return heard.state


class BuiltinThinker:
    """The v1 learned Thinker behind the seam: it reads the codec's latents, a position per `cfg.stack` frames."""

    hears_ahead = True

    def __init__(self, model: ThinkerModel, codebook: torch.Tensor, video_codec=None):
        self.model, self.codebook = model.eval(), codebook
        self.video_codec = video_codec  # turns video tokens into the Thinker's frame features; loaded when needed

    @property
    def sees_video(self) -> bool:
        return bool(self.model.cfg.video_features)

    def warmup(self) -> None:
        self.transcript(self.hear(torch.zeros(1, 1, 8, dtype=torch.long)))

    # Hearing a turn while it is spoken: start, more as it arrives, finish with the last frames (the same state as
    # `hear` over the whole turn: listening in pieces equals listening at once).
    def start_hearing(self) -> Heard:
        return Heard(self.model.init_state())

    def frames_short_of_a_position(self, heard: Heard, new: int) -> bool:
        """Would `new` more frames still leave the Thinker without a whole position to read? (Then hearing them
        can wait: nothing would reach the cache.)"""
        pending = _state(heard).pending
        return (0 if pending is None else pending.shape[-1]) + new < self.model.cfg.stack

    def hear_more(self, heard: Heard, codes: torch.Tensor, pcm: np.ndarray | None = None) -> Heard:
        latent = codes_to_latent(self.codebook, codes, self.model.cfg.stack, None)
        return Heard(self.model.listen(latent, _state(heard)))

    def finish_hearing(self, heard: Heard, codes: torch.Tensor, pcm: np.ndarray | None = None) -> Heard:
        pending = _state(heard).pending
        before = 0 if pending is None else pending.shape[-1]
        latent = codes_to_latent(self.codebook, codes, self.model.cfg.stack, before)
        return Heard(self.model.listen(latent, _state(heard)))

    def hear(self, codes: torch.Tensor, video: torch.Tensor | None = None, pcm: np.ndarray | None = None) -> Heard:
        """This Thinker reads the codec's latents: `pcm` (the turn's own audio) is not used."""
        if video is None or not len(video):
            return self.finish_hearing(self.start_hearing(), codes)
        latent = codes_to_latent(self.codebook, codes, self.model.cfg.stack)
        if not self.model.cfg.video_features:
            raise ValueError("this Thinker has no video track: its answers cannot use the video")
        if self.video_codec is None:
            from talkstream.checkpoint import load_video_codec

            self.video_codec = load_video_codec()
        features = av.tokens_to_features(self.video_codec, video)
        features = torch.cat([features, features[-1:].expand(-len(features) % self.model.cfg.video_stack, -1)])
        return Heard(self.model.listen(latent, self.model.init_state(), features[None]))

    def transcript(self, heard: Heard) -> str:
        if heard.transcript is None:
            heard.transcript = tx.decode([t for t, _ in self.model.reply(_state(heard), tx.ASR)])
        return heard.transcript

    def committed_text(self, heard: Heard) -> str:
        return ""  # the transcript is read from the whole turn's state, at its end

    async def reply(self, heard: Heard, history: deque[dict] | None = None
                    ) -> AsyncIterator[tuple[str, torch.Tensor | None]]:
        """The built-in model answers each turn alone: `history` is not read."""
        it = self.model.reply(_state(heard), tx.CHAT)
        while (item := await asyncio.to_thread(next, it, None)) is not None:
            token, hidden = item
            yield tx.VOCAB[token], hidden


_WORD = re.compile(r"[a-z']+")


class Speaker:
    """The Talker, streaming: text pieces in, codec-token blocks [1, K, n] out."""

    def __init__(self, talker: Talker, block_frames: int = 6, sampling: SamplingConfig | None = None,
                 use_hidden: bool = False):
        self.talker = talker.eval()
        self.block_frames = block_frames
        self.sampling = sampling or SamplingConfig()
        # The dual track (the Thinker's hidden states beside the text) is off by default: with the shipped weights
        # the recogniser understands the Talker less with it (README, `bench model`).
        self.use_hidden = use_hidden

    @property
    def num_codebooks(self) -> int:
        return self.talker.cfg.num_codebooks

    def _frames(self, names: list[str], hidden: torch.Tensor | None, state: TalkerState, final: bool,
                limit: int) -> list[torch.Tensor]:
        ids = self.talker.phoneme_ids(names)
        return list(itertools.islice(self.talker.frames(ids, hidden, self.sampling, state, final=final), limit))

    async def speak(self, pieces: AsyncIterator[tuple[str, torch.Tensor | None]]) -> AsyncIterator[torch.Tensor]:
        names, state, buffer = [BOS], TalkerState(), ""
        pending: list[torch.Tensor] = []  # frames [K] not yet sent as a block
        voice = self.talker.cfg.voice
        none = torch.zeros(self.talker.cfg.hidden_dim)
        hidden: list[torch.Tensor] = [none]  # the dual track: per unit, its word's hidden state (zeros: none)
        buffer_hidden: list[torch.Tensor] = []  # per character of `buffer`

        def add_word(word: str, punct: str, last: torch.Tensor) -> None:
            new = word_units(word, punct, voice)  # a unit the Talker never saw reads as <unk>
            names.extend(new)
            hidden.extend([none if u in PAUSES or u == " " else last for u in new])

        async def emit(final: bool) -> AsyncIterator[torch.Tensor]:
            # One block's frames per worker call: the first block leaves as soon as it exists.
            track = torch.stack(hidden) if self.use_hidden else None  # off: no per-call work for the track
            while frames := await asyncio.to_thread(self._frames, names, track, state, final,
                                                    self.block_frames - len(pending)):
                pending.extend(frames)
                if len(pending) == self.block_frames:
                    yield torch.stack(pending, -1)[None]
                    pending.clear()
            if final and pending:
                yield torch.stack(pending, -1)[None]
                pending.clear()

        async for piece, h in pieces:
            buffer += piece
            if h is not None and h.shape[-1] != none.shape[-1]:
                raise ValueError(f"the Thinker's hidden states have {h.shape[-1]} values; this Talker reads "
                                 f"{none.shape[-1]} (train the Talker against this Thinker, or pass None)")
            buffer_hidden += [none if h is None or not self.use_hidden else h.float()] * len(piece)
            # A word is complete once something that is not a letter follows it.
            while (m := re.match(r"\s*([a-z']+)([ ,.?!]+)", buffer)) is not None:
                add_word(m.group(1), m.group(2).strip(), buffer_hidden[m.end(1) - 1])
                buffer, buffer_hidden = buffer[m.end():], buffer_hidden[m.end():]
                async for block in emit(False):
                    yield block
        for m in _WORD.finditer(buffer):
            add_word(m.group(0), "", buffer_hidden[m.end() - 1])
        names.append(EOS)
        hidden.append(none)
        async for block in emit(True):
            yield block

    async def say(self, text: str) -> AsyncIterator[torch.Tensor]:
        async def pieces():
            yield tx.normalize(text), None

        async for block in self.speak(pieces()):
            yield block


class ChatResponder:
    """The chat model: a Thinker and a Speaker, shared by every session of a server and holding no user's state.

    `open_session()` gives each user a `Conversation` (their history, the turn heard so far); `respond` answers one
    turn alone (the CLI, benchmarks).
    """

    def __init__(self, thinker: Thinker, speaker: Speaker, transcribe: bool = True, voice_codec=None,
                 max_history: int = 8):
        self.thinker, self.speaker, self.transcribe = thinker, speaker, transcribe
        self.voice_codec = voice_codec  # decodes the Talker's tokens (its voice's fine-tuned decoder), or None
        self.max_history = max_history  # messages of a conversation kept as context (user and assistant turns)
        self.heard_ahead = 0  # turns answered from what was heard during them, all conversations (stats, tests)

    @property
    def num_codebooks(self) -> int:
        return self.speaker.num_codebooks

    @property
    def reply_format(self) -> ReplyFormat:
        """Every conversation's: the Talker's codebooks and voice decoder; the video goes to a Thinker with a video
        track; typed text joins the transcript."""
        return ReplyFormat(self.num_codebooks, self.voice_codec, sees_video=self.thinker.sees_video, reads_text=True,
                           hears_ahead=self.thinker.hears_ahead)

    def warmup(self) -> None:
        """One pass through each model, so the first user does not pay for lazy initialisation."""
        self.thinker.warmup()
        talker = self.speaker.talker
        ids = talker.phoneme_ids([BOS, *word_units("ok", ".", talker.cfg.voice), EOS])
        for _ in talker.frames(ids, None, self.speaker.sampling):
            pass

    def open_session(self) -> Conversation:
        return Conversation(self)

    async def respond(self, turn: Turn | torch.Tensor, video: torch.Tensor | None = None
                      ) -> AsyncGenerator[torch.Tensor | dict, None]:
        """One turn answered alone, in a conversation of its own."""
        conversation = self.open_session()
        try:
            async for item in conversation.respond(turn, video):
                yield item
        finally:
            conversation.close()


class Conversation:
    """One user's chat over a shared `ChatResponder`: their history and the turn heard while it is spoken.

    A user's turn -> events (transcript, reply text, first-packet latency) and codec-token blocks [1, K, n].
    """

    def __init__(self, model: ChatResponder):
        self.model = model
        self.thinker, self.speaker = model.thinker, model.speaker
        self.history: deque[dict] = deque(maxlen=model.max_history)
        self._ahead: _Ahead | None = None  # the turn heard so far while it is spoken (`listen_ahead`)
        self.heard_ahead = 0  # this conversation's turns answered from what was heard during them
        self._typed = ""  # text the user typed for their next turn (`type_text`)

    @property
    def reply_format(self) -> ReplyFormat:
        return self.model.reply_format

    def close(self) -> None:
        self._ahead = None
        self.history.clear()

    def type_text(self, text: str) -> None:
        """Text the user typed (a phone's keys, DTMF): it joins their next turn, after the words heard, in the
        transcript the Thinker answers; a turn with no audio (0 frames) is the text alone. A Thinker that answers from
        its own hearing and not from the transcript (`legacy`) does not read it."""
        self._typed += text

    async def listen_ahead(self, chunks: list[torch.Tensor], pcm_chunks: list[np.ndarray] | None = None) -> None:
        """The turn so far, while the user speaks (the collector's chunk list: it only grows during a turn, and each
        turn has a new one): the Thinker reads the new chunks now, so at the end of the turn only the last few
        frames are left to read. A Thinker that hears each turn whole (not `hears_ahead`) is left alone."""
        if not self.thinker.hears_ahead:
            return
        ahead = self._ahead
        if ahead is None or ahead.chunks is not chunks:
            ahead = self._ahead = _Ahead(chunks, self.thinker.start_hearing())
        new = sum(c.shape[-1] for c in chunks[ahead.used :])
        if new and not self.thinker.frames_short_of_a_position(ahead.heard, new):  # a thread hop only when it pays
            codes = torch.cat(chunks[ahead.used :], -1)
            extra = () if pcm_chunks is None else (np.concatenate(pcm_chunks[ahead.used :]),)
            ahead.heard = await asyncio.to_thread(self.thinker.hear_more, ahead.heard, codes, *extra)
            ahead.used, ahead.codes = len(chunks), ahead.codes + [codes]

    def committed_text(self) -> str:
        """The words of the turn being spoken that the Thinker has committed so far (early hearing; "" when it
        commits none): the session sends them as a `transcript` event with `final: false`."""
        return self.thinker.committed_text(self._ahead.heard) if self._ahead is not None else ""

    def _take_ahead(self, turn: torch.Tensor, pcm: np.ndarray | None = None
                    ) -> tuple[Heard, torch.Tensor, np.ndarray | None] | None:
        """What was heard during this turn and the frames (and audio) still to hear, if the turn begins with what
        was heard."""
        ahead = self._ahead
        if ahead is None or not ahead.codes:
            return None
        done = torch.cat(ahead.codes, -1)
        n = done.shape[-1]
        if n > turn.shape[-1] or done.shape[1] != turn.shape[1] or not torch.equal(turn[..., :n], done):
            return None  # another turn (the next one has begun), or other frames: heard from the start
        self._ahead = None
        rest_pcm = pcm[n * (pcm.size // turn.shape[-1]) :] if pcm is not None and turn.shape[-1] else None
        return ahead.heard, turn[..., n:], rest_pcm

    async def respond(self, turn: Turn | torch.Tensor, video: torch.Tensor | None = None
                      ) -> AsyncGenerator[torch.Tensor | dict, None]:
        """`turn`: a Turn (codes [1, K, F] and their audio) or bare codes; `video` the video tokens [T, h*w] seen
        during the turn, if any."""
        t0 = time.perf_counter()
        turn, pcm = split_turn(turn)
        typed, self._typed = self._typed, ""
        ahead = self._take_ahead(turn, pcm) if video is None else None
        if typed and not turn.shape[-1]:  # nothing to hear: the turn is the typed text
            heard = self.thinker.start_hearing()
            heard.transcript = typed
        elif ahead is not None:
            self.heard_ahead += 1
            self.model.heard_ahead += 1
            heard_so_far, rest, rest_pcm = ahead
            extra = () if rest_pcm is None else (rest_pcm,)  # a Thinker that reads tokens alone takes two arguments
            heard = await asyncio.to_thread(self.thinker.finish_hearing, heard_so_far, rest, *extra)
        elif pcm is not None:
            heard = await asyncio.to_thread(self.thinker.hear, turn, video, pcm)
        else:
            heard = await asyncio.to_thread(self.thinker.hear, turn, video)
        if typed and turn.shape[-1]:
            heard.transcript = f"{await asyncio.to_thread(self.thinker.transcript, heard)} {typed}".strip()
        reply: list[str] = []

        async def pieces():
            async for piece, hidden in self.thinker.reply(heard, self.history):
                reply.append(piece)
                yield piece, hidden

        first = True
        async for block in self.speaker.speak(pieces()):
            yield block
            if first:
                first = False
                yield {"type": "latency", "first_packet_ms": round((time.perf_counter() - t0) * 1000, 1)}
                yield {"type": "reply_text", "text": "".join(reply), "final": False}
                # What the user said, once the first audio has left (it must not delay it) and while the reply
                # still plays, so a barge-in cannot leave the user without it.
                if self.model.transcribe:
                    text = await asyncio.to_thread(self.thinker.transcript, heard)
                    yield {"type": "transcript", "text": text, "final": True}
        if first and self.model.transcribe:  # no audio at all (transcript-only mode, an empty reply)
            yield {"type": "transcript", "text": await asyncio.to_thread(self.thinker.transcript, heard), "final": True}
        if heard.error:  # a tool that failed, a turn that was cut: spoken about above, and said as an event here
            yield {"type": "error", "fatal": False, **heard.error}
        yield {"type": "reply_text", "text": "".join(reply), "final": True}


@dataclass
class _Ahead:
    chunks: list  # the collector's list for this turn (identity marks the turn)
    heard: Heard
    used: int = 0  # chunks heard
    codes: list = field(default_factory=list)  # the chunks heard, concatenated per call


async def _drain(it: AsyncIterator) -> list:
    return [x async for x in it]


def collect(it: AsyncIterator) -> list:
    """Run an async iterator to the end from synchronous code (the CLI)."""
    return asyncio.run(_drain(it))


def blocks_to_codes(items: Iterable) -> torch.Tensor:
    blocks = [b for b in items if isinstance(b, torch.Tensor)]
    return torch.cat(blocks, -1) if blocks else torch.zeros(1, 1, 0, dtype=torch.long)


THINKERS = ("builtin", "transcribe", "openai", "legacy")


def load_chat(codec, thinker: str = "builtin", thinker_url: str | None = None, thinker_model: str = "default",
              api_key: str | None = None, thinker_path=None, talker_path=None,
              sampling: SamplingConfig | None = None, backend: str = "torch", talker_hidden: bool = False
              ) -> ChatResponder:
    """The chat responder over the shipped (or given) weights. `thinker`:
    - "builtin": Whisper tiny.en's ears (talkstream.models.ears) and tool calls (talkstream.models.tools); video turns
      go to the v1 learned Thinker, which has the video track;
    - "transcribe": the same ears, a transcript event per turn and no reply;
    - "openai": the same ears, and an OpenAI-compatible endpoint writes the reply;
    - "legacy": the v1 learned Thinker alone (it hears the codec's tokens).
    With `backend="onnx"` the Talker's frame step, the ears' encoder block and the v1 Thinker's steps run in
    onnxruntime."""
    from talkstream.checkpoint import load_codec_v1, load_talker, load_thinker, load_voice_codec

    if thinker not in THINKERS:
        raise UserError(f"unknown thinker {thinker!r}: one of {', '.join(THINKERS)}")
    if thinker == "openai" and not thinker_url:
        raise UserError("--thinker openai needs --thinker-url (an OpenAI-compatible /v1 endpoint)")
    # The v1 Thinker reads codec v1's tokens; the Talker's voice decoder is codec v3's, fine-tuned on its voice.
    codec_v1, voice = load_codec_v1(), load_voice_codec()
    legacy = BuiltinThinker(load_thinker(thinker_path), codec_v1.quantizer.embed.detach().clone())
    speaker = Speaker(load_talker(talker_path), sampling=sampling, use_hidden=talker_hidden)
    if backend == "onnx":
        from talkstream.models.onnx_steps import onnx_step

        speaker.talker.onnx_step = onnx_step(speaker.talker)
        legacy.model.onnx_step = onnx_step(legacy.model)
        legacy.model.onnx_listen = onnx_step(legacy.model, block=True)
    elif backend != "torch":
        raise UserError(f"unknown backend {backend!r}: torch or onnx")
    from talkstream.models.ears_thinker import EarsThinker, V1Thinker

    same_tokens = codec.cfg.codec_id == codec_v1.cfg.codec_id
    if thinker == "legacy":
        return ChatResponder(legacy if same_tokens else V1Thinker(legacy, codec_v1), speaker, voice_codec=voice)
    from talkstream.models.ears import load_ears

    # The built-in answerer's questions are a closed domain: it hears through the decoder adapted to it (trained on
    # the block states) and answers from them within its latency budget. Transcripts for an LLM or for speech-to-text
    # are open speech, heard by Whisper's decoder as it ships, over the whole turn as Whisper offline hears it, with
    # words committed while the turn is spoken (docs/models.md).
    builtin = thinker == "builtin"
    ears = EarsThinker(load_ears(onnx=backend == "onnx", adapter="shipped" if builtin else None,
                                 final="blocks" if builtin else "window", commit=not builtin,
                                 hear_silence=not builtin), codec,
                       legacy=V1Thinker(legacy, codec_v1), transcribe_only=thinker == "transcribe",
                       domain_context=builtin)
    if thinker == "openai":
        from talkstream.chat.openai_thinker import OpenAIThinker

        assert thinker_url is not None  # checked above, before anything loads
        return ChatResponder(OpenAIThinker(thinker_url, ears, thinker_model, api_key), speaker, voice_codec=voice)
    return ChatResponder(ears, speaker, voice_codec=voice)


@dataclass
class TurnResult:
    transcript: str
    reply: str
    pcm: np.ndarray  # float32 mono at the codec's rate
    first_packet_ms: float  # end of the user's speech -> first decoded audio block
    talker_frames: int
    seconds: float  # wall time of the whole answer


class Responds(Protocol):
    """What `answer_codes` runs: a chat model or session, or the CLI's Talker alone (`say`)."""

    @property
    def reply_format(self) -> ReplyFormat: ...

    def respond(self, turn: Turn, video: torch.Tensor | None = None) -> AsyncIterator[torch.Tensor | dict]: ...


async def answer_codes(responder: Responds, codec, codes: Turn, block_frames: int = 6,
                       video: torch.Tensor | None = None) -> TurnResult:
    """One turn, as the server runs it: respond, and decode the reply's blocks with the SlidingWindowDecoder."""
    from talkstream.streaming.sliding_window import SlidingWindowDecoder

    fmt = responder.reply_format
    decoder = SlidingWindowDecoder(fmt.voice_codec or codec, block_frames=block_frames)
    state = decoder.init_state(fmt.num_codebooks or codes.shape[1])
    t0 = time.perf_counter()
    first_ms, pcm, frames, transcript, reply = None, [], 0, "", ""
    async for item in (responder.respond(codes, video) if video is not None else responder.respond(codes)):
        if isinstance(item, dict):
            transcript = item["text"] if item["type"] == "transcript" else transcript
            reply = item["text"] if item["type"] == "reply_text" else reply
            continue
        frames += item.shape[-1]
        out, state = decoder.step(item, state)
        if out.shape[-1]:
            first_ms = first_ms if first_ms is not None else (time.perf_counter() - t0) * 1000
            pcm.append(out[0, 0])
    out, state = decoder.flush(state)
    pcm.append(out[0, 0])
    if first_ms is None:
        first_ms = (time.perf_counter() - t0) * 1000
    audio = torch.cat(pcm).numpy() if pcm else np.zeros(0, np.float32)
    return TurnResult(transcript, reply, audio, first_ms, frames, time.perf_counter() - t0)


def answer_pcm(responder: ChatResponder, codec, pcm: np.ndarray, video: torch.Tensor | None = None) -> TurnResult:
    """A spoken turn (float32 mono at the codec's rate), and video tokens seen meanwhile -> the answer, decoded."""
    pcm = np.ascontiguousarray(pcm, dtype=np.float32).reshape(-1)
    codes = codec.encode(torch.from_numpy(pcm)[None, None])
    return asyncio.run(answer_codes(responder, codec, Turn(codes, pcm), video=video))


_DEFAULT: tuple | None = None


def answer_wav(pcm: np.ndarray, sample_rate: int) -> tuple[str, str, np.ndarray, int]:
    """For the demo: any-rate mono float PCM -> (transcript, reply text, reply PCM, its rate), shipped weights."""
    global _DEFAULT
    import soxr

    from talkstream.checkpoint import load_audio_codec

    if _DEFAULT is None:
        codec = load_audio_codec()
        _DEFAULT = (codec, load_chat(codec))
    codec, responder = _DEFAULT
    x = np.asarray(pcm, dtype=np.float32).reshape(-1)
    if sample_rate != codec.sample_rate:
        x = soxr.resample(x, sample_rate, codec.sample_rate).astype(np.float32)
    r = answer_pcm(responder, codec, x)
    return r.transcript, r.reply, r.pcm, codec.sample_rate
