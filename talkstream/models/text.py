"""Text as the models see it: normalised to lowercase words over a small character set, then characters as tokens.

Digits become words (num2words), so "17 + 25" and "seventeen plus twenty five" read the same; anything outside the
character set is dropped. Characters keep the vocabulary tiny and need no trained tokenizer.
"""

from __future__ import annotations

import re

from num2words import num2words

SPECIALS = ["<pad>", "<bos>", "<eos>", "<asr>", "<chat>"]
CHARS = list("abcdefghijklmnopqrstuvwxyz '.,?!")
VOCAB = SPECIALS + CHARS
PAD, BOS, EOS, ASR, CHAT = range(len(SPECIALS))
_INDEX = {c: i for i, c in enumerate(VOCAB)}
_SYMBOLS = {"+": " plus ", "=": " equals ", "%": " percent ", "&": " and ", "*": " times "}


def _number(m: re.Match) -> str:
    s = m.group(0)
    try:
        words = num2words(float(s) if "." in s else int(s))
    except (ValueError, OverflowError):
        return " "
    return " " + words.replace("-", " ").replace(",", "") + " "


def normalize(text: str) -> str:
    """'What is 17+25?' -> 'what is seventeen plus twenty five?'"""
    text = re.sub(r"(?<=\d)\s*-\s*(?=\d)", " minus ", text)  # a hyphen elsewhere joins words
    text = re.sub(r"\d+(\.\d+)?", _number, text)
    text = "".join(_SYMBOLS.get(c, c) for c in text).lower()
    text = text.replace("\u2019", "'").replace(";", ",").replace(":", ",").replace("-", " ")
    text = "".join(c for c in text if c in _INDEX)
    text = re.sub(r"\s+([,.?!])", r"\1", re.sub(r"\s+", " ", text)).strip()
    return text


def encode(text: str) -> list[int]:
    """Normalised text -> token ids (no BOS/EOS)."""
    return [_INDEX[c] for c in normalize(text)]


def encode_char(c: str) -> int | None:
    """One character's id, None outside the character set (for aligning already-normalised text)."""
    return _INDEX.get(c) if c not in SPECIALS else None


def decode(ids: list[int]) -> str:
    return "".join(VOCAB[i] for i in ids if i >= len(SPECIALS))
