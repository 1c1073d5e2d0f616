"""Make the speech corpus the codec (and later the model) train on, from registry-shipped TTS voices.

    talkstream data speech --out data/speech --minutes 40

writes `train/` and `eval/` folders of 24 kHz PCM16 WAV files and a `manifest.jsonl` (file, split, voice, text).
Train voices are augmented with sox (tempo, pitch, room reverb); a share of non-speech clips (coloured noise, tones,
near-silence) keeps silence and noise clean. Eval voices are disjoint from train voices, and eval sentences come from
a different seed.
"""

from __future__ import annotations

import json
import logging
import random
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm import tqdm

from talkstream.data.sentences import sentences
from talkstream.data.voices import EVAL_VOICES, SAMPLE_RATE, TRAIN_VOICES, Voice, synthesize

log = logging.getLogger(__name__)

# Rough seconds of speech per sentence, used to turn a minutes budget into sentence counts.
_SECONDS_PER_SENTENCE = 3.5
# Share of each train voice's budget; kokoro is slow (RTF ~0.7 on 2 cores), so it gets fewer minutes per voice.
_ENGINE_WEIGHT = {"piper": 4.0, "kokoro": 1.0, "espeak": 0.4, "festival": 1.5}


def _sox_augment(audio: np.ndarray, rng: random.Random) -> np.ndarray:
    """Random tempo / pitch / reverb / level through sox; returns the input unchanged if sox is missing."""
    effects: list[str] = []
    if rng.random() < 0.4:
        effects += ["tempo", f"{rng.uniform(0.85, 1.15):.3f}"]
    if rng.random() < 0.4:
        effects += ["pitch", str(rng.randint(-300, 300))]
    if rng.random() < 0.2:
        effects += ["reverb", str(rng.randint(10, 60)), "50", str(rng.randint(20, 90))]
    if not effects:
        return audio
    with tempfile.TemporaryDirectory() as d:
        src, dst = Path(d) / "in.wav", Path(d) / "out.wav"
        sf.write(src, audio, SAMPLE_RATE, subtype="FLOAT")
        try:
            subprocess.run(["sox", str(src), str(dst), *effects, "channels", "1"], check=True, capture_output=True)
        except (OSError, subprocess.CalledProcessError) as e:
            log.warning("sox augmentation skipped: %s", e)
            return audio
        out, _ = sf.read(dst, dtype="float32")
    return out.reshape(-1) if out.ndim == 1 else out.mean(axis=1)


def non_speech_clip(rng: random.Random, seconds: float = 2.0) -> np.ndarray:
    """Coloured noise, a tone sweep, or near-silence: what a microphone also hears."""
    n = int(seconds * SAMPLE_RATE)
    g = np.random.default_rng(rng.randrange(2**32))
    kind = rng.choice(["white", "pink", "brown", "tone", "silence"])
    if kind == "tone":
        f0, f1 = rng.uniform(100, 2000), rng.uniform(100, 4000)
        phase = 2 * np.pi * np.cumsum(np.linspace(f0, f1, n)) / SAMPLE_RATE
        x = np.sin(phase)
    else:
        x = g.standard_normal(n)
        if kind in ("pink", "brown"):
            spec = np.fft.rfft(x)
            f = np.maximum(np.fft.rfftfreq(n), 1.0 / n)
            spec /= f ** (0.5 if kind == "pink" else 1.0)
            x = np.fft.irfft(spec, n)
        if kind == "silence":
            x *= 1e-3
    x = x / (np.abs(x).max() + 1e-9) * rng.uniform(0.02, 0.5)
    return x.astype(np.float32)


def _plan(minutes: float, eval_per_voice: int) -> list[tuple[str, Voice, int]]:
    total_w = sum(_ENGINE_WEIGHT[v.engine] for v in TRAIN_VOICES)
    plan = []
    for v in TRAIN_VOICES:
        n = max(4, round(minutes * 60 / _SECONDS_PER_SENTENCE * _ENGINE_WEIGHT[v.engine] / total_w))
        plan.append(("train", v, n))
    plan += [("eval", v, eval_per_voice) for v in EVAL_VOICES]
    return plan


def make_speech_corpus(out: Path, minutes: float = 40.0, eval_per_voice: int = 16, non_speech_share: float = 0.05,
                       seed: int = 0) -> Path:
    """Write the corpus under `out`; skips files already there, so an interrupted run resumes."""
    out = Path(out)
    (out / "train").mkdir(parents=True, exist_ok=True)
    (out / "eval").mkdir(parents=True, exist_ok=True)
    plan = _plan(minutes, eval_per_voice)
    train_text = sentences(sum(n for s, _, n in plan if s == "train"), seed=seed)
    eval_text = sentences(sum(n for s, _, n in plan if s == "eval"), seed=seed + 1_000_003)
    rng = random.Random(seed)
    rows = []
    ti = ei = 0
    with tqdm(total=sum(n for _, _, n in plan), desc="speech corpus", unit="utt") as bar:
        for split, voice, n in plan:
            for i in range(n):
                text = train_text[ti] if split == "train" else eval_text[ei]
                ti, ei = (ti + 1, ei) if split == "train" else (ti, ei + 1)
                name = f"{split}/{voice.engine}_{voice.name.replace('+', '-')}_{i:04d}.wav"
                utt_rng = random.Random(f"{seed}:{name}")
                path = out / name
                if not path.exists():
                    audio = synthesize(voice, text)
                    if split == "train":
                        audio = _sox_augment(audio, utt_rng)
                    peak = np.abs(audio).max()
                    if peak > 0.99:
                        audio = audio * (0.99 / peak)
                    sf.write(path, audio, SAMPLE_RATE, subtype="PCM_16")
                rows.append({"file": name, "split": split, "voice": voice.id, "text": text})
                bar.update(1)
    n_noise = int(non_speech_share * sum(1 for r in rows if r["split"] == "train"))
    for i in range(n_noise):
        name = f"train/nonspeech_{i:04d}.wav"
        if not (out / name).exists():
            sf.write(out / name, non_speech_clip(rng), SAMPLE_RATE, subtype="PCM_16")
        rows.append({"file": name, "split": "train", "voice": "none", "text": ""})
    with open(out / "manifest.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return out
