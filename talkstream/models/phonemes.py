"""espeak-ng as the Talker's front end: text -> IPA (the Talker's units), or espeak mnemonics with their timing.

espeak-ng's C API reports a PHONEME event with the sample position of every phoneme it speaks, which gives the
frame-exact durations the Talker learns from; no command-line tool or Python package exposes them, hence this
small ctypes binding. The library and its data come from the `espeakng-loader` wheel (a base dependency, so
`pip install` alone is enough); the system's libespeak-ng.so.1 (Debian: espeak-ng) is the fallback when the wheel is
missing. espeak-ng keeps global state, so every call holds one lock.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import threading
from dataclasses import dataclass

import numpy as np
import soxr

from talkstream.errors import UserError
from talkstream.models.errors import EspeakUnavailable

_EVENT_END_OF_LIST, _EVENT_WORD, _EVENT_PHONEME = 0, 1, 7
_SYNCHRONOUS, _PHONEME_EVENTS_AND_DONT_EXIT = 2, 0x8001
_UTF8, _CHARS_UTF8 = 1, 1
_RATE, _PITCH = 1, 3  # espeak_PARAMETER ids (words per minute; 0-100)
_IPA = 0x02  # espeak_TextToPhonemes phonememode: IPA as UTF-8
_STRESS = "',"  # espeak-ng >= 1.52 prefixes stressed phonemes' names with these; 1.51 (the Talker's training) did not

log = logging.getLogger(__name__)


class _Event(ctypes.Structure):
    _fields_ = [("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint), ("text_position", ctypes.c_int),
                ("length", ctypes.c_int), ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
                ("user_data", ctypes.c_void_p), ("id", ctypes.c_char * 8)]


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))


@dataclass
class Utterance:
    phonemes: list[str]  # espeak mnemonics, "_" and "_:" are pauses
    words: list[int]  # index of the word each phoneme belongs to (-1 for pauses)
    starts: np.ndarray  # sample position of each phoneme at `sample_rate` (only from `speak`)
    audio: np.ndarray  # float32 mono (only from `speak`)
    sample_rate: int


def _candidates() -> list[tuple[str, str | None]]:
    """(library, data folder) pairs to try in order: the espeakng-loader wheel's, then the system's."""
    found = []
    try:
        import espeakng_loader
    except ImportError:
        pass
    else:
        found.append((espeakng_loader.get_library_path(), espeakng_loader.get_data_path()))
    found.append((ctypes.util.find_library("espeak-ng") or "libespeak-ng.so.1", None))  # data: its compiled-in path
    return found


class _Espeak:
    def __init__(self) -> None:
        errors = []
        for path, data in _candidates():
            try:
                self.lib = ctypes.CDLL(path)
            except OSError as e:
                errors.append(str(e))
                continue
            folder = data.encode() if data else None
            self.rate = self.lib.espeak_Initialize(_SYNCHRONOUS, 0, folder, _PHONEME_EVENTS_AND_DONT_EXIT)
            if self.rate > 0:
                self.path = path
                break
            errors.append(f"{path} failed to initialise with data {data}")
        else:
            raise EspeakUnavailable(f"espeak-ng not usable ({'; '.join(errors)}); "
                                    "pip install espeakng-loader (or apt-get install espeak-ng)")
        log.info("espeak-ng: %s", self.path)
        self.lock = threading.Lock()
        self._audio: list[np.ndarray] = []
        self._events: list[tuple[int, int, int, bytes]] = []
        self._callback = _CALLBACK(self._on_synth)  # kept referenced: C holds the pointer
        self.lib.espeak_SetSynthCallback(self._callback)
        self.voice: str | None = None

    def _on_synth(self, wav, n, events) -> int:
        if n > 0:
            self._audio.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        i = 0
        while events[i].type != _EVENT_END_OF_LIST:
            e = events[i]
            self._events.append((e.type, e.text_position, e.sample, bytes(e.id).split(b"\0")[0]))
            i += 1
        return 0

    def run(self, text: str, voice: str, rate: int = 175, pitch: int = 50
            ) -> tuple[np.ndarray, list[tuple[int, int, int, bytes]]]:
        with self.lock:
            if voice != self.voice:
                if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
                    raise UserError(f"espeak-ng has no voice {voice!r}")
                self.voice = voice
            self.lib.espeak_SetParameter(_RATE, int(rate), 0)
            self.lib.espeak_SetParameter(_PITCH, int(pitch), 0)
            self._audio, self._events = [], []
            data = text.encode("utf-8") + b"\0"
            self.lib.espeak_Synth(data, len(data), 0, _CHARS_UTF8, 0, _UTF8, None, None)
            self.lib.espeak_Synchronize()
            audio = np.concatenate(self._audio) if self._audio else np.zeros(0, np.int16)
            return audio, self._events

    def ipa(self, text: str, voice: str) -> str:
        """espeak-ng's IPA for `text`, clause by clause joined by spaces (no audio is made)."""
        fn = self.lib.espeak_TextToPhonemes
        fn.restype, fn.argtypes = ctypes.c_char_p, [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int, ctypes.c_int]
        with self.lock:
            if voice != self.voice:
                if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
                    raise UserError(f"espeak-ng has no voice {voice!r}")
                self.voice = voice
            buf = ctypes.create_string_buffer(text.encode("utf-8"))
            ptr = ctypes.c_void_p(ctypes.addressof(buf))
            clauses = []
            while ptr.value:  # espeak-ng advances the pointer one clause per call, to NULL at the end
                out = fn(ctypes.byref(ptr), _CHARS_UTF8, _IPA)
                clauses.append((out or b"").decode("utf-8", "replace").strip())
            return " ".join(c for c in clauses if c)


_ENGINE: _Espeak | None = None
_ENGINE_LOCK = threading.Lock()


def _engine() -> _Espeak:
    global _ENGINE
    with _ENGINE_LOCK:
        if _ENGINE is None:
            _ENGINE = _Espeak()
        return _ENGINE


def speak(text: str, voice: str = "en-us", sample_rate: int = 24_000, rate: int = 175, pitch: int = 50
          ) -> Utterance:
    """Speak `text`; returns audio at `sample_rate` with each phoneme's start sample (rate in words per minute)."""
    eng = _engine()
    pcm, events = eng.run(text, voice, rate, pitch)
    phonemes, words, starts = [], [], []
    # espeak-ng reports a word by its 1-based character position; map that to the index of the space-separated
    # word holding it (it sometimes reports one word twice, e.g. after a clause break).
    word_ends = np.cumsum([len(w) + 1 for w in text.split(" ")])
    word = 0
    for kind, text_pos, sample, name in events:
        if kind == _EVENT_WORD:
            word = int(np.searchsorted(word_ends, text_pos - 1, side="right"))
        elif kind == _EVENT_PHONEME and name:
            ph = name.decode("utf-8", "replace").lstrip(_STRESS)
            phonemes.append(ph)
            words.append(-1 if ph.startswith("_") else word)
            starts.append(sample)
    scale = sample_rate / eng.rate
    audio = pcm.astype(np.float32) / 32768.0
    if sample_rate != eng.rate:
        audio = soxr.resample(audio, eng.rate, sample_rate).astype(np.float32)
    return Utterance(phonemes, words, np.round(np.array(starts, dtype=np.float64) * scale).astype(np.int64),
                     audio, sample_rate)


def library_path() -> str:
    """The libespeak-ng this process uses (loading it on first call)."""
    return _engine().path


def phonemize(text: str, voice: str = "en-us") -> Utterance:
    """Phonemes and word indices of `text` (the audio is made and dropped: espeak-ng is ~100x real time)."""
    u = speak(text, voice)
    return Utterance(u.phonemes, u.words, u.starts, np.zeros(0, np.float32), u.sample_rate)


def ipa(text: str, voice: str = "en-us") -> str:
    """espeak-ng's IPA transcription of `text` ('two' -> 'tˈuː'), as Piper's voices read it."""
    return _engine().ipa(text, voice)
