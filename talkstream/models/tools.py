"""Answers that are right by construction: the built-in Thinker's tool calls and the tools that run them.

A small model cannot be trusted with arithmetic or the time, so the built-in Thinker does what LLM agents do: it
reads the transcript and emits a tool call (`ToolCall(name, args)`), the runtime executes it, and the reply speaks the
result. The call is chosen by matching the transcript against the dialogue's skills (talkstream.models.dialogue:
greetings, repeat-after-me, arithmetic, spelling, days, months, counting) plus the clock (time, day, date); that
choice is written here as patterns, not learned. A transcript no skill matches gets a short spoken "I can help
with ..." reply, and a tool that fails (a number too large, division by zero) gets a spoken apology; the caller also
sends an error event, so a failure is never silent.

    call = choose_tool("what is 17 plus 25")     # ToolCall('calculator', ('plus', 17, 25))
    reply = run_tool(call)                       # 'seventeen plus twenty five is forty two.'
"""

from __future__ import annotations

import datetime as dt
import difflib
import functools
import re
from collections.abc import Callable
from dataclasses import dataclass

from talkstream.models import text as tx
from talkstream.models.dialogue import DAYS, GREETINGS, MONTHS

_UNITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
          "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
_TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
_NUMBER_WORD = set(_UNITS) | set(_TENS[2:]) | {"hundred", "thousand", "and"}
_MAX_NUMBER = 999_999
UNKNOWN_REPLY = "sorry, i can do arithmetic, spelling, days, months, counting and the time."
FAILED_REPLY = "sorry, i could not work that out."


class ToolError(ValueError):
    """A tool could not answer (the caller speaks an apology and sends an error event)."""


@dataclass(frozen=True)
class ToolCall:
    name: str
    args: tuple = ()


def number_words(n: int) -> str:
    """13 -> 'thirteen', as the dialogue writes numbers (no hyphens, no commas)."""
    return tx.normalize(str(n)).strip(".")


def parse_number(words: str) -> int:
    """'twenty five' -> 25, 'one hundred and two' -> 102, '17' -> 17. Raises ToolError on anything else."""
    words = words.strip()
    if re.fullmatch(r"\d+", words):
        return int(words)
    total, current, seen = 0, 0, False
    for w in words.split():
        if w in _UNITS:
            current += _UNITS.index(w)
        elif w in _TENS[2:]:
            current += 10 * _TENS.index(w)
        elif w == "hundred":
            current = max(current, 1) * 100
        elif w == "thousand":
            total += max(current, 1) * 1000
            current = 0
        elif w == "and":
            continue
        else:
            raise ToolError(f"not a number: {words!r}")
        seen = True
    if not seen:
        raise ToolError(f"not a number: {words!r}")
    return total + current


_NUM = r"((?:(?:" + "|".join(sorted(_NUMBER_WORD, key=len, reverse=True)) + r")\b\s?)+)"
_OPS = {"plus": "plus", "minus": "minus", "times": "times", "multiplied by": "times", "divided by": "divided by",
        "x": "times"}


def _clean(transcript: str) -> str:
    """A transcript as the patterns read it: '6,890' one number, then words only (numbers as words)."""
    text = re.sub(r"(?<=\d),(?=\d{3})", "", transcript)
    return " ".join(re.sub(r"[^a-z' ]", " ", tx.normalize(text)).split())


# Loose on purpose: a recogniser mishears the words around the ones that matter ("what they come after monday").
_PATTERNS: list[tuple[re.Pattern, Callable[[re.Match], ToolCall | None]]] = [
    (re.compile(rf"{_NUM}\s*(plus|minus|times|multiplied by|divided by) {_NUM}"),
     lambda m: ToolCall("calculator", (_OPS[m.group(2)], m.group(1).strip(), m.group(3).strip()))),
    (re.compile(r"\bspell (?:the word )?([a-z']+)"), lambda m: ToolCall("speller", (m.group(1),))),
    (re.compile(r"repeat after me,? (.+)"), lambda m: ToolCall("repeat", (m.group(1),))),
    (re.compile(rf"count (?:from )?{_NUM}\s*to {_NUM}"),
     lambda m: ToolCall("counter", (m.group(1).strip(), m.group(2).strip()))),
    # A month question whose month was misheard ("what month comes after me", "... after monday"): the month that
    # sounds nearest, if one is near; before the days, since the user asked for a month.
    (re.compile(r"\bmonth\b.*?\bafter ([a-z']+)"), lambda m: _month_call(m.group(1))),
    (re.compile(rf"\b(after|before) ({'|'.join(DAYS)})\b"),
     lambda m: ToolCall("calendar", ("day", m.group(1), m.group(2)))),
    (re.compile(rf"\bafter ({'|'.join(MONTHS)})\b"), lambda m: ToolCall("calendar", ("month", "after", m.group(1)))),
    (re.compile(r"\bwhat(?:'s| is)? (?:the )?time\b|\btime is it\b|\btell me the time\b"),
     lambda m: ToolCall("clock", ("time",))),
    (re.compile(r"\bwhat(?:'s| is)? the date\b|\bwhat date\b|\btoday'?s date\b"),
     lambda m: ToolCall("clock", ("date",))),
    (re.compile(r"\b(?:what|which) day is (?:it|today)\b|\bwhat day it is\b"), lambda m: ToolCall("clock", ("day",))),
    # The last resort of a misheard clock question ("what lays it today"): the one word that names what is asked.
    (re.compile(r"\bdate\b"), lambda m: ToolCall("clock", ("date",))),
    (re.compile(r"\btoday\b"), lambda m: ToolCall("clock", ("day",))),
]


@functools.cache
def _sounds(word: str) -> str:
    from talkstream.models.phonemes import ipa

    return re.sub(r"[ˈˌ\s]", "", ipa(word))


def _month_call(heard: str) -> ToolCall | None:
    """The calendar's month question for the month that sounds most like `heard` (espeak-ng's IPA, edit distance),
    when it differs by at most two sounds; None otherwise."""
    if heard in MONTHS:
        return ToolCall("calendar", ("month", "after", heard))
    distance, month = min((edit_distance(_sounds(heard), _sounds(m)), m) for m in MONTHS)
    return ToolCall("calendar", ("month", "after", month)) if distance <= 3 else None


def edit_distance(a, b) -> int:
    """Levenshtein distance between two sequences (of sounds here; of words for the ears' training WER)."""
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (x != y))
    return row[-1]


def choose_tool(transcript: str) -> ToolCall | None:
    """The tool call for what the user said, or None when no skill matches."""
    text = _clean(transcript)
    for pattern, make in _PATTERNS:
        m = pattern.search(text)
        call = make(m) if m else None
        if call is not None:
            return call
    # Greetings are whole short turns: the closest one, if it is close ("hi there" heard as "hi there!").
    close = difflib.get_close_matches(text, [g for g, _ in GREETINGS], n=1, cutoff=0.75)
    return ToolCall("greeting", (close[0],)) if close else None


def _calculator(op: str, a_words: str, b_words: str) -> str:
    a, b = parse_number(a_words), parse_number(b_words)
    r: float
    if op == "plus":
        r = a + b
    elif op == "minus":
        r = a - b
    elif op == "times":
        r = a * b
    else:
        if b == 0:
            raise ToolError("division by zero")
        r = a / b
        if r != int(r):
            return f"{number_words(a)} divided by {number_words(b)} is about {tx.normalize(f'{r:.2f}').strip('.')}."
        r = int(r)
    if abs(r) > _MAX_NUMBER or a > _MAX_NUMBER or b > _MAX_NUMBER:
        raise ToolError("number too large")
    said = number_words(abs(r)) if r >= 0 else "minus " + number_words(-r)
    return f"{number_words(a)} {op} {number_words(b)} is {said}."


def _calendar(kind: str, which: str, name: str) -> str:
    names = DAYS if kind == "day" else MONTHS
    i = names.index(name)
    ans = names[(i + (1 if which == "after" else -1)) % len(names)]
    return f"the {kind} {which} {name} is {ans}."


def _counter(a_words: str, b_words: str) -> str:
    a, b = parse_number(a_words), parse_number(b_words)
    if not 0 <= b - a < 20:
        raise ToolError("i count up to twenty numbers at a time")
    return ", ".join(number_words(n) for n in range(a, b + 1)) + "."


def _clock(what: str, now: dt.datetime | None = None) -> str:
    now = now or dt.datetime.now().astimezone()
    if what == "time":
        hour = now.hour % 12 or 12
        minutes = "o'clock" if now.minute == 0 else (
            f"oh {number_words(now.minute)}" if now.minute < 10 else number_words(now.minute))
        part = "in the morning" if now.hour < 12 else "in the afternoon" if now.hour < 18 else "in the evening"
        return f"it is {number_words(hour)} {minutes} {part}."
    if what == "day":
        return f"today is {DAYS[now.weekday()]}."
    return f"today is {DAYS[now.weekday()]}, {MONTHS[now.month - 1]} {number_words(now.day)}, {number_words(now.year)}."


def run_tool(call: ToolCall, now: dt.datetime | None = None) -> str:
    """Execute a tool call -> the reply's text. Raises ToolError when the tool cannot answer."""
    if call.name == "calculator":
        return _calculator(*call.args)
    if call.name == "speller":
        word = call.args[0]
        return f"{word} is spelled {' '.join(word)}."
    if call.name == "calendar":
        return _calendar(*call.args)
    if call.name == "repeat":
        return f"{call.args[0].strip()}."
    if call.name == "counter":
        return _counter(*call.args)
    if call.name == "clock":
        return _clock(call.args[0], now)
    if call.name == "greeting":
        return dict(GREETINGS)[call.args[0]]
    raise ToolError(f"unknown tool {call.name!r}")
