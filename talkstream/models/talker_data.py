"""The Talker's training data: its voice (a Kokoro voice, jm_kumo by default, or Piper's en_US joe)
speaking answers, questions and sentences, with the duration of every unit from the voice itself
(talkstream.models.talker_units).

    talkstream data talker --out data/talker [--voice piper:en_US-joe]

Each example holds the units, their durations in codec frames, the codec encoder's latent of the audio (what the
Talker regresses onto; float16 [D, F]) and the audio itself (int16 at 24 kHz: the voice decoder's target). Eval
sentences never occur in training. A part is written in shards of `shard` examples, each skipped when present, so
an interrupted build resumes. `voice.json` names the voice, so a resumed build cannot mix two voices and the
Talker trained on it knows whose speech it learned.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from talkstream.data.sentences import sentences
from talkstream.errors import UserError
from talkstream.models import text as tx
from talkstream.models.dialogue import dialogues
from talkstream.models.talker_units import KokoroAligner, PiperAligner, make_aligner, text_units

log = logging.getLogger(__name__)


def talker_texts(n_sentences: int, n_questions: int, n_eval: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """(train, eval) texts, normalised as the Thinker writes them; eval sentences are disjoint from train."""
    qa = dialogues(1600, "train", seed)
    train = sorted({a for _, a in qa}) + [q for q, _ in qa[:n_questions]] + sentences(n_sentences, seed=seed + 202)
    train = list(dict.fromkeys(tx.normalize(t) for t in train))
    seen = set(train)
    held = [t for t in (tx.normalize(s) for s in sentences(n_eval * 3, seed=seed + 303)) if t not in seen]
    return train, held[:n_eval]


@torch.no_grad()
def talker_example(aligner: PiperAligner | KokoroAligner, codec, text: str) -> dict:
    units = [u for u in text_units(text) if u in aligner.id_map]
    audio, durations = aligner.speak(units)
    pcm = torch.from_numpy(audio)[None, None]
    pcm = torch.nn.functional.pad(pcm, (0, -pcm.shape[-1] % codec.cfg.hop))
    z, _ = codec.encoder.net.step(pcm, codec.encoder.net.init_state(1))
    if z.shape[-1] != durations.sum():
        raise RuntimeError(f"{text!r}: {z.shape[-1]} latent frames but durations sum to {durations.sum()}")
    return {"text": text, "units": units, "durations": torch.from_numpy(durations),
            "latent": z[0].to(torch.float16),
            "audio": torch.from_numpy(np.round(np.clip(audio, -1, 1) * 32767).astype(np.int16))}


def _build_part(out: Path, name: str, texts: list[str], aligner, codec, shard: int) -> None:
    for start in range(0, len(texts), shard):
        path = out / f"{name}_{start // shard:03d}.pt"
        if path.is_file():
            continue
        items = [talker_example(aligner, codec, t)
                 for t in tqdm(texts[start:start + shard], desc=f"{name} {start // shard}", unit="utt")]
        torch.save(items, path.with_suffix(".tmp"))
        path.with_suffix(".tmp").rename(path)


def build_talker_data(out: Path, codec, *, speaker: str, n_sentences: int = 2000, n_questions: int = 600,
                      n_eval: int = 100, shard: int = 250, seed: int = 0, threads: int = 1) -> Path:
    """`speaker` is a TalkerConfig.speaker id; the CLI's --voice holds the default (the shipped Talker's voice)."""
    out = Path(out)
    have = talker_speaker(out) if (out / "voice.json").is_file() or any(out.glob("*.pt")) else None
    if have is not None and have != speaker:
        raise UserError(f"{out} holds {have}'s speech; write {speaker}'s to another folder")
    aligner = make_aligner(speaker, threads)  # an unknown voice fails here, before anything is written
    out.mkdir(parents=True, exist_ok=True)
    (out / "voice.json").write_text(json.dumps({"speaker": speaker}) + "\n")
    train, held = talker_texts(n_sentences, n_questions, n_eval, seed)
    _build_part(out, "eval", held, aligner, codec, shard)
    _build_part(out, "train", train, aligner, codec, shard)
    return out


def talker_speaker(folder: Path) -> str:
    """Whose speech a `data talker` folder holds (folders from before voice.json hold joe's)."""
    meta = Path(folder) / "voice.json"
    return json.loads(meta.read_text())["speaker"] if meta.is_file() else "piper:en_US-joe"


def load_talker_data(folder: Path, split: str) -> list[dict]:
    parts = sorted(Path(folder).glob(f"{split}_*.pt"))
    if not parts:
        raise UserError(f"no {split}_*.pt in {folder}: run `talkstream data talker --out {folder}`")
    return [item for p in parts for item in torch.load(p, weights_only=False)]
