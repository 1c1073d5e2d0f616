"""The Thinker-Talker's training data, made here from registry-shipped voices and encoded to codec tokens.

    talkstream data model --out data/model

Thinker (`thinker_{train,eval}.pt`): spoken questions (the dialogue templates) and sentences, each stored as
8-codebook codec tokens with its text and, for questions, the answer. Train voices and eval voices are disjoint
(talkstream.data.voices), and eval questions are sentence-disjoint (talkstream.models.dialogue). The speech corpus
of the codec (`data/speech`, made by `talkstream data speech`) is added when present.

The Talker's data is its own (`talkstream data talker`, talkstream.models.talker_data).

Files are written once per part and skipped when present, so an interrupted build resumes part by part.
"""

from __future__ import annotations

import json
import logging
import random
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from tqdm import tqdm

from talkstream.data.sentences import sentences
from talkstream.data.voices import EVAL_VOICES, THINKER_EXTRA_VOICES, TRAIN_VOICES, Voice, synthesize
from talkstream.errors import UserError
from talkstream.models import phonemes as ph
from talkstream.models.dialogue import dialogues

log = logging.getLogger(__name__)
_WORD = re.compile(r"[a-z']+")


def _encode(codec, audio: np.ndarray) -> torch.Tensor:
    with torch.no_grad():
        codes = codec.encode(torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))[None, None])
    return codes[0].to(torch.int16)


def _say(voice: Voice, text: str, rng: random.Random) -> np.ndarray:
    """One utterance in `voice`, with random speaking rate/pitch (espeak) and level, so the Thinker hears variety."""
    if voice.engine == "espeak":
        try:
            audio = ph.speak(text, voice.name, rate=rng.randint(140, 210), pitch=rng.randint(30, 70)).audio
        except UserError:  # a voice the C API does not find by name (en-gb+m3): the command line does
            audio = synthesize(voice, text)
    else:
        audio = synthesize(voice, text)
    peak = float(np.abs(audio).max()) or 1.0
    return (audio / peak * rng.uniform(0.25, 0.95)).astype(np.float32)


def _weighted_voices(voices: list[Voice]) -> list[Voice]:
    # Kokoro runs near real time on these cores: it gets a small share; espeak is ~100x real time.
    weight = {"espeak": 6, "piper": 6, "festival": 2, "kokoro": 1}
    return [v for v in voices for _ in range(weight[v.engine])]


def _thinker_part(codec, items: list[tuple[str, str | None]], voices: list[Voice], seed: int, desc: str) -> list[dict]:
    rng = random.Random(seed)
    pool = _weighted_voices(voices)
    out = []
    for text, answer in tqdm(items, desc=desc, unit="utt"):
        voice = rng.choice(pool)
        out.append({"codes": _encode(codec, _say(voice, text, rng)), "text": text, "answer": answer,
                    "voice": voice.id})
    return out


def _corpus_part(codec, corpus: Path, split: str) -> list[dict]:
    manifest = corpus / "manifest.jsonl"
    if not manifest.is_file():
        log.warning("%s not found: the Thinker trains without the codec's speech corpus", manifest)
        return []
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    out = []
    for r in tqdm([r for r in rows if r["split"] == split and r["text"]], desc=f"corpus {split}", unit="utt"):
        audio, _ = sf.read(corpus / r["file"], dtype="float32")
        out.append({"codes": _encode(codec, audio), "text": r["text"], "answer": None, "voice": r["voice"]})
    return out


def _save_once(path: Path, make: Callable[[], list[dict]]) -> None:
    if path.is_file():
        log.info("%s exists, kept", path)
        return
    items = make()
    torch.save(items, path.with_suffix(".tmp"))
    path.with_suffix(".tmp").rename(path)
    seconds = sum(i["codes"].shape[-1] for i in items) / 75
    print(f"{path}: {len(items)} utterances, {seconds / 60:.1f} min")


def build_model_data(out: Path, codec, corpus: Path | None = Path("data/speech"), questions: int = 1600,
                     sentences_asr: int = 800, eval_questions: int = 200, seed: int = 0) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    train_q = dialogues(questions, "train", seed)
    eval_q = dialogues(eval_questions, "eval", seed)
    asr_text = sentences(sentences_asr, seed=seed + 101)

    def thinker_train() -> list[dict]:
        items = _thinker_part(codec, [(q, a) for q, a in train_q], TRAIN_VOICES, seed, "thinker questions")
        items += _thinker_part(codec, [(s, None) for s in asr_text], [v for v in TRAIN_VOICES if v.engine != "kokoro"],
                               seed + 1, "thinker sentences")
        return items + (_corpus_part(codec, corpus, "train") if corpus else [])

    def thinker_eval() -> list[dict]:
        items = _thinker_part(codec, [(q, a) for q, a in eval_q], EVAL_VOICES, seed + 2, "thinker eval questions")
        return items + (_corpus_part(codec, corpus, "eval") if corpus else [])

    def thinker_train_more() -> list[dict]:
        # The same questions and sentences again, each in one of many more espeak-ng voices (held-out voices hear
        # the Thinker's weakness: it overfits the few training voices).
        texts: list[tuple[str, str | None]] = [(q, a) for q, a in train_q] + [(s, None) for s in asr_text]
        return [it for copy in range(2)  # each twice, in two voices drawn at random
                for it in _thinker_part(codec, texts, THINKER_EXTRA_VOICES, seed + 5 + copy, "thinker more voices")]

    _save_once(out / "thinker_eval.pt", thinker_eval)
    _save_once(out / "thinker_train.pt", thinker_train)
    _save_once(out / "thinker_train_more.pt", thinker_train_more)
    return out
