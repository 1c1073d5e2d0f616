"""Speech for the turn heads (talkstream.models.turn_head), made from the registry's TTS voices.

Two tasks, each a set of 16 kHz windows with a label:
- `end`: the last `END_WINDOW_S` seconds of a turn at a pause, `ENDS_PAUSE_S` of silence after the speech. Label 1: a
  complete sentence. Label 0: a sentence cut at a word (the prefix spoken on its own, which ends on a word that
  needs more, or the whole sentence cut at a quiet point inside it, which keeps the phrase's rising/level pitch),
  or followed by a filler ("um", "and uh").
- `barge`: the first `BARGE_AFTER_S` seconds of someone speaking over the agent (from `BARGE_BEFORE_S` before the
  onset). Label 1: a backchannel ("mm-hm", "yeah", "okay", a laugh); label 0: a real interruption ("wait", "no, I
  meant Tuesday", a new question).

Train and evaluation are disjoint in voices (data/voices.py's TRAIN/EVAL lists) and in sentences: training reads
data/sentences.py's templates and licence prose; evaluation reads the Harvard sentences and requests written for
it (`EVAL_REQUESTS`), never trained on. Every clip gets a random level, background noise and, for a share, an
8 kHz mu-law phone line.

    talkstream train turn-data --out runs/turn_data      # resumes: one file per voice and split
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import soxr

from talkstream.audio_io import phone_line
from talkstream.data.sentences import HARVARD, sentences
from talkstream.data.voices import EVAL_VOICES, THINKER_EXTRA_VOICES, TRAIN_VOICES, Voice, kokoro_blends, synthesize

RATE = 16_000
END_WINDOW_S = 3.0  # what the end-of-turn head hears: the turn's last 3 s, its pause included
ENDS_PAUSE_S = (0.12, 0.35)  # silence after the speech when the head is asked (the VAD's pause plus its lag)
BARGE_BEFORE_S = 0.2
BARGE_AFTER_S = (0.22, 0.34)  # the barge-in head decides this long after the speech began
BARGE_WINDOW_S = 0.6  # what it hears: the window zero-padded after the speech so far (as `fit_window` pads)

# Words a sentence cut after them clearly goes on.
CONTINUES = {"the", "a", "an", "to", "for", "of", "and", "but", "or", "with", "in", "on", "at", "my", "your",
             "our", "their", "his", "her", "is", "was", "will", "would", "could", "that", "because", "if", "about",
             "from", "by", "some", "like", "than", "into", "when", "where", "which", "who", "then", "so", "did",
             "does", "can", "have", "had", "be", "been", "are", "were", "i", "we", "you", "they", "it", "this"}
FILLERS = ["um", "uh", "and um", "so uh", "and uh", "er", "you know", "like um", "well um"]

REQUESTS = [  # training: the sort of thing people ask an agent (never the evaluation's)
    "Can you set a timer for ten minutes?", "What is the weather going to be like tomorrow?",
    "I need to change my flight to next Friday.", "Please remind me to call my mother tonight.",
    "How many days are there until the end of the month?", "Could you read me the last message again?",
    "I would like to order two large pizzas with extra cheese.", "Turn the lights off in the kitchen.",
    "What time does the pharmacy open on Sunday?", "Tell me a short story about a dragon.",
    "My internet connection keeps dropping every few minutes.", "Is there a train to the airport after nine?",
    "I want to cancel my subscription and get a refund.", "How do I reset the password on my account?",
    "Add milk, eggs and bread to my shopping list.", "Can you explain how a heat pump works?",
    "We are five people and we would like a table by the window.", "Send a message to Anna saying I am late.",
]
EVAL_REQUESTS = [  # evaluation only
    "I'd like to book a table for four people at eight o'clock.", "Can you find me a hotel near the old harbour?",
    "What is the quickest way to get to the museum from here?", "Please move my dentist appointment to Thursday.",
    "How much would it cost to ship a parcel to Canada?", "Could you play some quiet piano music for me?",
    "I think there is a mistake on my last electricity bill.", "When does the next bus leave for the city centre?",
    "My daughter wants to know how far away the moon is.", "Can you recommend a good book about the ocean?",
    "I lost my bank card and I need to block it right now.", "What should I cook tonight with rice and spinach?",
    "Is the swimming pool open on public holidays?", "Remind me to water the plants every Monday morning.",
    "How long should I boil an egg to make it soft?", "We need a taxi for three people to the station.",
    "Could you translate good morning into Spanish?", "Why does the sky turn red in the evening?",
    "I want to return the shoes I bought last week.", "What was the score of the football match yesterday?",
]

BACKCHANNELS = ["Mm-hm.", "Mhm.", "Uh-huh.", "Yeah.", "Yes.", "Okay.", "Right.", "Sure.", "I see.", "Got it.",
                "Hmm.", "Oh.", "Ah, okay.", "Yep.", "Uh-huh, yeah.", "Ha ha.", "Ha ha ha.", "Oh wow.", "Right, right.",
                "Okay, yeah.", "Ah.", "Cool."]
EVAL_BACKCHANNELS = ["Mm-hm.", "Yeah.", "Okay.", "Right.", "Uh-huh.", "Ha ha.", "Sure.", "Yes.", "Oh.", "I see."]
INTERRUPTIONS = ["Wait.", "Stop.", "Wait, wait.", "No, I meant Tuesday.", "Hold on.", "Sorry, what did you say?",
                 "Actually, can you repeat that?", "No no no.", "Excuse me.", "Hang on a second.", "But what about",
                 "Can I ask something?", "That's not what I asked.", "Let me stop you there.", "What time is it?",
                 "Never mind.", "Could you speak slower?", "Go back.", "Why?", "How much is it?"]
EVAL_INTERRUPTIONS = ["Wait, no.", "No, I meant Friday.", "Stop, please.", "Hold on, what?",
                      "Sorry, I didn't catch that.", "Actually, make it two.", "Where is that?", "Excuse me, sorry.",
                      "Hang on.", "Is that right?"]


def to_16k(audio24: np.ndarray) -> np.ndarray:
    return soxr.resample(audio24, 24_000, RATE).astype(np.float32)


def trim(audio: np.ndarray, floor_db: float = -40.0) -> np.ndarray:
    """Leading and trailing silence off (20 ms frames below `floor_db` of the loudest)."""
    hop = RATE // 50
    n = audio.size // hop
    if n == 0:
        return audio
    rms = np.sqrt(np.mean(audio[: n * hop].reshape(n, hop) ** 2, axis=1) + 1e-12)
    loud = np.flatnonzero(20 * np.log10(rms / rms.max()) > floor_db)
    return audio[loud[0] * hop : (loud[-1] + 1) * hop] if loud.size else audio[:0]


def quiet_cut(audio: np.ndarray, rng: random.Random) -> int | None:
    """A sample index inside the speech (25%-85% of it) where at least 40 ms is quiet: a word boundary, mostly."""
    hop = RATE // 50
    n = audio.size // hop
    if n < 20:
        return None
    rms = np.sqrt(np.mean(audio[: n * hop].reshape(n, hop) ** 2, axis=1) + 1e-12)
    quiet = rms < 0.12 * np.median(rms)
    spots = [i for i in range(int(0.25 * n), int(0.85 * n)) if quiet[i] and quiet[i - 1]]
    return rng.choice(spots) * hop if spots else None


def line(audio: np.ndarray, rng: random.Random, phone_share: float = 0.2) -> np.ndarray:
    """A microphone or phone line: level, background noise, sometimes 8 kHz mu-law."""
    g = np.random.default_rng(rng.randrange(2**32))
    x = audio / (np.abs(audio).max() + 1e-9) * 10 ** (rng.uniform(-26, -3) / 20)
    speech_rms = float(np.sqrt(np.mean(x[np.abs(x) > 1e-4] ** 2))) if np.any(np.abs(x) > 1e-4) else 0.01
    noise = g.standard_normal(x.size).astype(np.float32)
    if rng.random() < 0.5:  # pinkish
        noise = np.cumsum(noise) * 0.05
        noise -= np.convolve(noise, np.ones(64) / 64, mode="same")
    noise *= speech_rms * 10 ** (-rng.uniform(15, 45) / 20) / (noise.std() + 1e-9)
    x = (x + noise).astype(np.float32)
    if rng.random() < phone_share:
        x = phone_line(x, RATE)
    return x


def window_end(speech: np.ndarray, pause_s: float, window_s: float = END_WINDOW_S) -> np.ndarray:
    """The last `window_s` of `speech` followed by `pause_s` of silence (zeros before it when short)."""
    x = np.concatenate([speech, np.zeros(int(pause_s * RATE), np.float32)])
    n = int(window_s * RATE)
    return x[-n:] if x.size >= n else np.concatenate([np.zeros(n - x.size, np.float32), x])


def window_barge(speech: np.ndarray, after_s: float) -> np.ndarray:
    """`BARGE_BEFORE_S` of silence, the first `after_s` of the speech, zeros to `BARGE_WINDOW_S`."""
    before = np.zeros(int(BARGE_BEFORE_S * RATE), np.float32)
    head = speech[: int(after_s * RATE)]
    total = int(BARGE_WINDOW_S * RATE)
    return np.concatenate([before, head, np.zeros(total - before.size - head.size, np.float32)])


def cut_prefix(text: str, rng: random.Random) -> str | None:
    """The words of `text` up to one after which the sentence clearly goes on (or any but the last two)."""
    words = text.rstrip(".?!").split()
    if len(words) < 4:
        return None
    spots = [k for k in range(2, len(words) - 1) if words[k - 1].lower().strip(",") in CONTINUES]
    k = rng.choice(spots) if spots and rng.random() < 0.8 else rng.randrange(2, len(words) - 1)
    return " ".join(words[:k]).rstrip(",")


def end_examples(voice: Voice, texts: list[str], rng: random.Random,
                 phone_share: float = 0.2) -> tuple[list[np.ndarray], list[int], list[str]]:
    xs, ys, kinds = [], [], []
    for text in texts:
        full = trim(to_16k(synthesize(voice, text)))
        if full.size < RATE // 4:
            continue
        xs.append(line(window_end(full, rng.uniform(*ENDS_PAUSE_S)), rng, phone_share))
        ys.append(1)
        kinds.append("complete")
        r = rng.random()
        cut = quiet_cut(full, rng) if r < 0.4 else None
        if cut is not None:
            part, kind = full[:cut], "cut_inside"
        else:
            prefix = cut_prefix(text, rng)
            if prefix is None:
                continue
            if r > 0.75:
                prefix, kind = f"{prefix}, {rng.choice(FILLERS)}", "filler"
            else:
                kind = "prefix"
            part = trim(to_16k(synthesize(voice, prefix)))
        if part.size < RATE // 4:
            continue
        xs.append(line(window_end(part, rng.uniform(*ENDS_PAUSE_S)), rng, phone_share))
        ys.append(0)
        kinds.append(kind)
    return xs, ys, kinds


def barge_examples(voice: Voice, backchannels: list[str], interruptions: list[str], rng: random.Random,
                   repeats: int = 1) -> tuple[list[np.ndarray], list[int], list[str]]:
    """`repeats` windows per clip, each with its own decision time, level and line."""
    xs, ys, kinds = [], [], []
    for label, texts in ((1, backchannels), (0, interruptions)):
        for text in texts:
            speech = trim(to_16k(synthesize(voice, text)))
            if speech.size < RATE // 20:
                continue
            for _ in range(repeats):
                xs.append(line(window_barge(speech, rng.uniform(*BARGE_AFTER_S)), rng))
                ys.append(label)
                kinds.append(text)
    return xs, ys, kinds


def plan(split: str, per_voice: int, seed: int) -> list[tuple[Voice, list[str], list[str], list[str]]]:
    """(voice, sentences, backchannels, interruptions) for every voice of the split."""
    rng = random.Random(seed)
    if split == "eval":
        texts = HARVARD + EVAL_REQUESTS
        return [(v, texts, EVAL_BACKCHANNELS, EVAL_INTERRUPTIONS) for v in EVAL_VOICES]
    out = []
    pool = sentences(4000, seed=seed)
    voices = TRAIN_VOICES + THINKER_EXTRA_VOICES
    for v in voices:
        n = per_voice * (3 if v.engine in ("kokoro", "piper") else 1)
        texts = rng.sample(pool, n - n // 4) + rng.sample(REQUESTS, min(len(REQUESTS), n // 4))
        out.append((v, texts, rng.sample(BACKCHANNELS, 8), rng.sample(INTERRUPTIONS, 8)))
    return out


def make_barge(out: Path, repeats: int = 3, seed: int = 0) -> list[Path]:
    """More barge-in windows from the fast voices (every training backchannel and interruption, `repeats` windows
    each): the barge-in head's task has far fewer clips per voice than the end-of-turn head's."""
    out.mkdir(parents=True, exist_ok=True)
    done = []
    for voice in TRAIN_VOICES + THINKER_EXTRA_VOICES:
        if voice.engine == "kokoro":
            continue
        path = out / f"trainb-{voice.id.replace(':', '_').replace('+', '_')}.npz"
        if not path.exists():
            bx, by, bk = barge_examples(voice, BACKCHANNELS, INTERRUPTIONS, random.Random(f"{seed}-b-{voice.id}"),
                                        repeats)
            tmp = path.with_suffix(".tmp.npz")
            np.savez_compressed(tmp, barge_x=np.stack(bx).astype(np.float16), barge_y=np.array(by),
                                barge_kind=np.array(bk), voice=voice.id)
            tmp.rename(path)
            print(f"barge: {voice.id}: {len(by)} windows", flush=True)
        done.append(path)
    return done


def plan_more(per_voice: int, seed: int) -> list[tuple[Voice, list[str], list[str], list[str]]]:
    """More end-of-turn windows in other words (`trainm-`): licence prose and the Thinker's training questions, in
    every training voice but the slow Kokoro ones (two of those, fewer each)."""
    from talkstream.data.sentences import licence_sentences
    from talkstream.models.dialogue import dialogues

    rng = random.Random(f"{seed}-more")
    prose = licence_sentences() or sentences(500, seed=seed + 1)
    asked = [q[0].upper() + q[1:] + "?" for q, _ in dialogues(2000, "train", seed=seed)]
    out: list[tuple[Voice, list[str], list[str], list[str]]] = []
    for v in TRAIN_VOICES + THINKER_EXTRA_VOICES:
        if v.engine == "kokoro" and v.name not in ("jm_kumo", "jf_nezumi"):
            continue
        n = per_voice * (2 if v.engine in ("piper", "festival") else 1)
        out.append((v, rng.sample(prose, n // 2) + rng.sample(asked, n - n // 2), [], []))
    return out


BLENDS = 10  # blended Kokoro voices (`trainx-`)


def plan_blends(per_voice: int, seed: int) -> list[tuple[Voice, list[str], list[str], list[str]]]:
    """Natural voices the shipped ones are not (`trainx-`): `BLENDS` blends of the training Kokoro voices' styles at
    their own speeds (data/voices.py kokoro_blends), each with its own sentences, requests and questions, and
    backchannels and interruptions. The held-out Kokoro voice sounded least complete to heads trained mostly on
    espeak-ng's: a natural voice's falling pitch is gentler."""
    from talkstream.models.dialogue import dialogues

    rng = random.Random(f"{seed}-blends")
    pool = sentences(4000, seed=seed + 2)
    asked = [q[0].upper() + q[1:] + "?" for q, _ in dialogues(2000, "train", seed=seed + 1)]
    out = []
    for v in kokoro_blends(BLENDS, seed):
        n = 2 * per_voice
        texts = rng.sample(pool, n // 2) + rng.sample(asked, n // 4) + rng.sample(REQUESTS, n - n // 2 - n // 4)
        out.append((v, texts, rng.sample(BACKCHANNELS, 8), rng.sample(INTERRUPTIONS, 8)))
    return out


def _file_name(split: str, voice: Voice) -> str:
    table: dict[str, str | int | None] = {":": "_", "+": "_", "*": "x", "@": "s"}
    return f"{split}-{voice.id}.npz".translate(str.maketrans(table))


def make(out: Path, split: str = "train", per_voice: int = 24, seed: int = 0) -> list[Path]:
    """One .npz per voice (resumes: files already there are kept)."""
    out.mkdir(parents=True, exist_ok=True)
    done = []
    planners = {"trainm": plan_more, "trainx": plan_blends}
    planned = planners[split](per_voice, seed) if split in planners else plan(split, per_voice, seed)
    for n, (voice, texts, bcs, ints) in enumerate(planned):
        path = out / _file_name(split, voice)
        if not path.exists():
            rng = random.Random(f"{seed}-{split}-{voice.id}")
            # The blends carry more phone lines: complete turns over 8 kHz were held longest (issue 37).
            ex, ey, ek = end_examples(voice, texts, rng, phone_share=0.35 if split == "trainx" else 0.2)
            bx, by, bk = barge_examples(voice, bcs, ints, rng)
            tmp = path.with_suffix(".tmp.npz")
            arrays: dict[str, Any] = {"end_x": np.stack(ex).astype(np.float16), "end_y": np.array(ey),
                                      "end_kind": np.array(ek), "voice": voice.id}
            if by:
                arrays |= {"barge_x": np.stack(bx).astype(np.float16), "barge_y": np.array(by),
                           "barge_kind": np.array(bk)}
            np.savez_compressed(tmp, **arrays)
            tmp.rename(path)
            print(f"{split} {n + 1}: {voice.id}: {len(ey)} end, {len(by)} barge", flush=True)
        done.append(path)
    return done
