"""English sentences for making speech: templated sentences plus prose from the system's licence texts.

Deterministic for a seed, so a corpus can be rebuilt exactly. The same generator later feeds the model's tasks.
"""

from __future__ import annotations

import glob
import random
import re

SUBJECTS = [
    "the old man", "my sister", "a small child", "the teacher", "our neighbour", "the pilot", "a tired nurse",
    "the farmer", "her brother", "the young doctor", "a quiet student", "the captain", "every driver", "the baker",
    "my best friend", "the musician", "a stranger", "the engineer", "the cat", "a large dog", "the committee",
]
VERBS = [
    "found", "carried", "painted", "forgot", "opened", "bought", "watched", "fixed", "dropped", "borrowed",
    "cleaned", "measured", "described", "remembered", "followed", "ordered", "delivered", "tested", "moved", "sold",
]
OBJECTS = [
    "a yellow umbrella", "the broken window", "three heavy boxes", "an empty bottle", "the morning paper",
    "a bright red kite", "the kitchen table", "seven silver coins", "a wooden chair", "the blue bicycle",
    "a map of the city", "the last train ticket", "a basket of apples", "the garden gate", "a long letter",
    "the spare key", "a jar of honey", "the violin case", "a pair of boots", "the weather report",
]
PLACES = [
    "near the station", "before lunch", "in the rain", "after the meeting", "at the market", "by the river",
    "on Tuesday morning", "behind the library", "during the storm", "at midnight", "in the north village",
    "under the bridge", "across the street", "at the harbour", "in the school hall", "outside the bakery",
]
ADVERBS = ["quickly", "slowly", "carefully", "happily", "quietly", "suddenly", "proudly", "nervously", "gently"]
QUESTIONS = [
    "Where did {s} put {o}?", "Why has {s} {v} {o} {p}?", "Did {s} really say that {o} was gone?",
    "How long will it take to reach the coast {p}?", "Could you tell {s} about {o}?",
    "What time does the shop close {p}?", "Is it true that {s} {v} {o}?",
]
STATEMENTS = [
    "{S} {v} {o} {p}.", "{S} {a} {v} {o}.", "{S} {v} {o}, and then {s2} {v2} {o2}.",
    "I think {s} {v} {o} {p}.", "Yesterday {s} {v} {o} {p}.", "{S} will have {v} {o} by tomorrow.",
    "Please bring {o} to {s} {p}.", "Nobody knew that {s} had {v} {o}.",
]
EXCLAIM = ["Wow, {s} {v} {o}!", "Look out, {o} is falling!", "Hurry up, we are late {p}!"]

UNITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
         "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]


def number_words(n: int) -> str:
    """0 <= n < 10000 in English words: 'two thousand and forty one'."""
    if n < 20:
        return UNITS[n]
    if n < 100:
        return TENS[n // 10] + ("" if n % 10 == 0 else " " + UNITS[n % 10])
    if n < 1000:
        rest = n % 100
        return UNITS[n // 100] + " hundred" + ("" if rest == 0 else " and " + number_words(rest))
    rest = n % 1000
    return number_words(n // 1000) + " thousand" + ("" if rest == 0 else " " + number_words(rest))


def _fill(template: str, rng: random.Random) -> str:
    s = rng.choice(SUBJECTS)
    text = template.format(
        s=s, S=s[0].upper() + s[1:], v=rng.choice(VERBS), o=rng.choice(OBJECTS), p=rng.choice(PLACES),
        a=rng.choice(ADVERBS), s2=rng.choice(SUBJECTS), v2=rng.choice(VERBS), o2=rng.choice(OBJECTS),
    )
    return text[0].upper() + text[1:]


def licence_sentences() -> list[str]:
    """Plain prose sentences (5-22 words) from the licence texts every Debian system ships; [] if none."""
    text = " ".join(open(f, errors="ignore").read() for f in sorted(glob.glob("/usr/share/common-licenses/*")))
    parts = (p.strip() for p in re.split(r"(?<=[.!?])\s+", re.sub(r"\s+", " ", text)))
    seen: dict[str, None] = {}
    for p in parts:
        if 5 <= len(p.split()) <= 22 and re.fullmatch(r"[A-Za-z ,.;:'()-]+[.!?]", p):
            seen.setdefault(p)
    return list(seen)


def sentences(n: int, seed: int = 0) -> list[str]:
    """n varied English sentences: statements, questions, numbers, exclamations and licence prose."""
    rng = random.Random(seed)
    prose = licence_sentences()
    out = []
    for _ in range(n):
        r = rng.random()
        if r < 0.2 and prose:
            out.append(rng.choice(prose))
        elif r < 0.55:
            out.append(_fill(rng.choice(STATEMENTS), rng))
        elif r < 0.75:
            out.append(_fill(rng.choice(QUESTIONS), rng))
        elif r < 0.9:
            a, b = rng.randrange(10000), rng.randrange(100)
            how = rng.choice(ADVERBS)
            out.append(f"The total came to {number_words(a)}, and {number_words(b)} of them were {how} counted.")
        else:
            out.append(_fill(rng.choice(EXCLAIM), rng))
    return out


# Open-domain sentences outside every template and text above (the Harvard sentences, lists 1-2, IEEE 1969
# "Recommended Practice for Speech Quality Measurements", public domain): `bench model` hears them to show what the
# ears do on speech that the corpora this project trains on never resemble.
HARVARD = [
    "The birch canoe slid on the smooth planks.", "Glue the sheet to the dark blue background.",
    "It's easy to tell the depth of a well.", "These days a chicken leg is a rare dish.",
    "Rice is often served in round bowls.", "The juice of lemons makes fine punch.",
    "The box was thrown beside the parked truck.", "The hogs were fed chopped corn and garbage.",
    "Four hours of steady work faced us.", "A large size in stockings is hard to sell.",
    "The boy was there when the sun rose.", "A rod is used to catch pink salmon.",
    "The source of the huge river is the clear spring.", "Kick the ball straight and follow through.",
    "Help the woman get back to her feet.", "A pot of tea helps to pass the evening.",
    "Smoky fires lack flame and heat.", "The soft cushion broke the man's fall.",
    "The salt breeze came across from the sea.", "The girl at the booth sold fifty bonds.",
]
