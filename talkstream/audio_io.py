"""Reading and writing audio files: any common format or rate in, mono float32 at the rate asked for out.

soundfile reads WAV/FLAC/OGG/MP3 (libsndfile); PyAV covers the rest (m4a, opus, webm, video soundtracks).
Resampling is soxr. Every failure a user can cause is an `AudioInputError` with one readable line.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from talkstream.errors import UserError


class AudioInputError(UserError, ValueError):
    """The input is not usable audio (missing, empty, not audio, NaN...). The message is for the user."""


def _read_with_av(path: Path) -> tuple[np.ndarray, int]:
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise AudioInputError(f"{path}: has no audio stream")
            stream = container.streams.audio[0]
            resampler = av.AudioResampler(format="flt", layout="mono", rate=stream.rate or 48_000)
            chunks = []
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(-1))
            rate = resampler.rate
    except av.error.FFmpegError as e:
        raise AudioInputError(f"{path}: not a readable audio file ({e.__class__.__name__})") from None
    return (np.concatenate(chunks) if chunks else np.zeros(0, np.float32)), int(rate)


def to_mono(audio: np.ndarray) -> np.ndarray:
    """[T] or [T, C] -> [T] (channels averaged)."""
    audio = np.asarray(audio, dtype=np.float32)
    return audio.mean(axis=1) if audio.ndim == 2 else audio.reshape(-1)


def sanitize(audio: np.ndarray, what: str = "audio") -> np.ndarray:
    """Refuse NaN/inf; clip to [-1, 1] (clipping is handled, not an error)."""
    if not np.all(np.isfinite(audio)):
        raise AudioInputError(f"{what}: contains NaN or infinite samples")
    return np.clip(audio, -1.0, 1.0).astype(np.float32, copy=False)


def resample(audio: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    if rate_in <= 0:
        raise AudioInputError(f"invalid sample rate {rate_in}")
    if rate_in == rate_out:
        return audio.astype(np.float32, copy=False)
    return soxr.resample(audio, rate_in, rate_out, quality="HQ").astype(np.float32)


def load_audio(path: str | Path, sample_rate: int) -> np.ndarray:
    """Read any common audio file -> float32 mono [T] at `sample_rate`, in [-1, 1]."""
    path = Path(path)
    if not path.is_file():
        raise AudioInputError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise AudioInputError(f"{path}: file is empty")
    try:
        audio, rate = sf.read(str(path), dtype="float32", always_2d=False)
    except (sf.LibsndfileError, RuntimeError, TypeError):
        audio, rate = _read_with_av(path)
    audio = to_mono(audio)
    if audio.size == 0:
        raise AudioInputError(f"{path}: contains no audio samples")
    return resample(sanitize(audio, str(path)), int(rate), sample_rate)


def save_audio(path: str | Path, audio: np.ndarray, sample_rate: int) -> None:
    """Write float audio [T] as 16-bit PCM (WAV/FLAC by extension)."""
    sf.write(str(path), np.clip(np.asarray(audio, np.float32).reshape(-1), -1, 1), sample_rate, subtype="PCM_16")


def phone_line(audio: np.ndarray, rate: int, encoding: str = "ulaw") -> np.ndarray:
    """`audio` as a phone call carries it: down to 8 kHz, G.711 (mu-law or A-law) there and back
    (protocol/telephony.py's codec, as calls are served), up to `rate` again (the same length). Training material
    for the models that hear phone callers (the turn heads, the ears)."""
    from talkstream.protocol.telephony import RATE, g711_decode, g711_encode

    narrow = soxr.resample(np.asarray(audio, np.float32), rate, RATE)
    back = soxr.resample(g711_decode(g711_encode(narrow, encoding), encoding), RATE, rate).astype(np.float32)
    out = np.zeros(len(audio), np.float32)
    out[: min(back.size, out.size)] = back[: out.size]
    return out
