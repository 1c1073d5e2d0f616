"""Data made here: sentences, TTS voices, the speech corpus, and the bundled sample."""

from pathlib import Path

# A held-out voice (kokoro jf_tebukuro, never in training) saying one eval sentence: the default demo input.
SAMPLE_WAV = Path(__file__).resolve().parent / "sample.wav"
