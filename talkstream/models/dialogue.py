"""The closed-domain spoken dialogue the built-in Thinker learns: question templates and their exact answers.

Skills: greetings, repeat-after-me, small arithmetic, spelling, days and months, counting. `dialogues(split)` is
deterministic; the eval split holds out whole questions (sentence-disjoint): a question belongs to eval when its
stable hash says so, so no eval question is ever heard in training, while every skill appears in both splits.
"""

from __future__ import annotations

import hashlib
import random

from talkstream.data.sentences import OBJECTS, number_words

DAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]
MONTHS = ["january", "february", "march", "april", "may", "june", "july", "august", "september", "october",
          "november", "december"]
SPELL_WORDS = ["cat", "dog", "sun", "book", "tree", "fish", "milk", "rain", "bird", "door", "lamp", "cake", "ship",
               "moon", "star", "hand", "road", "king", "gold", "blue", "red", "map", "box", "cup", "hat", "pen",
               "egg", "bus", "car", "sky"]
GREETINGS = [
    ("hello", "hello, how can i help you?"), ("hi there", "hi, how can i help you?"),
    ("good morning", "good morning to you!"), ("good evening", "good evening to you!"),
    ("how are you", "i am well, thank you."), ("what is your name", "my name is talkstream."),
    ("thank you", "you are welcome."), ("goodbye", "goodbye, talk to you soon."),
    ("who made you", "i was trained by the talkstream project."), ("can you hear me", "yes, i can hear you."),
]
_EVAL_SHARE = 0.12


def _is_eval(question: str) -> bool:
    return int(hashlib.sha1(question.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < _EVAL_SHARE


def _arithmetic(rng: random.Random) -> tuple[str, str]:
    op = rng.choice(["plus", "minus", "times"])
    if op == "times":
        a, b = rng.randint(2, 12), rng.randint(2, 12)
        r = a * b
    elif op == "minus":
        a = rng.randint(1, 99)
        b = rng.randint(0, a)
        r = a - b
    else:
        a, b = rng.randint(0, 60), rng.randint(0, 60)
        r = a + b
    q = f"what is {number_words(a)} {op} {number_words(b)}"
    return q, f"{number_words(a)} {op} {number_words(b)} is {number_words(r)}."


def _one(rng: random.Random) -> tuple[str, str]:
    skill = rng.random()
    if skill < 0.35:
        return _arithmetic(rng)
    if skill < 0.5:
        w = rng.choice(SPELL_WORDS)
        return f"how do you spell {w}", f"{w} is spelled {' '.join(w)}."
    if skill < 0.62:
        d = rng.randrange(7)
        which = rng.choice(["after", "before"])
        ans = DAYS[(d + (1 if which == "after" else -1)) % 7]
        return f"what day comes {which} {DAYS[d]}", f"the day {which} {DAYS[d]} is {ans}."
    if skill < 0.72:
        m = rng.randrange(12)
        ans = MONTHS[(m + 1) % 12]
        return f"what month comes after {MONTHS[m]}", f"the month after {MONTHS[m]} is {ans}."
    if skill < 0.82:
        o = rng.choice(OBJECTS)
        return f"repeat after me {o}", f"{o}."
    if skill < 0.9:
        a = rng.randint(1, 15)
        n = rng.randint(3, 5)
        return (f"count from {number_words(a)} to {number_words(a + n - 1)}",
                ", ".join(number_words(a + i) for i in range(n)) + ".")
    return rng.choice(GREETINGS)


def dialogues(n: int, split: str = "train", seed: int = 0) -> list[tuple[str, str]]:
    """n (question, answer) pairs from `split` ("train" or "eval"), question text without punctuation."""
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', not {split!r}")
    rng = random.Random(f"{seed}-{split}")
    out: list[tuple[str, str]] = []
    tries = 0
    while len(out) < n and tries < n * 200:
        tries += 1
        q, a = _one(rng)
        if _is_eval(q) == (split == "eval"):
            out.append((q, a))
    return out
