"""Text normalisation and cheap features of a turn. Pure functions, no I/O.

Voice transcripts come without punctuation or capitals, with fillers ("uh", "um") and
run-on sentences; typed turns come with all of those. Both are brought to one form.
Everything here is a single pass over the tokens: routing must take microseconds.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

# Punctuation that separates words; apostrophes, decimal points, arithmetic, $, % and #
# stay because intents look at them ("what's", "3.5", "12*4", "$40", "20%", "c#").
_SEPARATORS = str.maketrans({c: " " for c in '"!?,;:()[]{}<>|\\`~@&_\n\t\r…“”‘'} | {"’": "'"})
# Every spelling of a hesitation up to five letters ("uhhh", "ummm"); "mhm" is a yes.
_FILLERS = frozenset(
    a + b
    for base in ("u", "e", "a", "h")
    for a in (base * n for n in (1, 2, 3))
    for b in ("h", "hh", "hhh", "m", "mm", "mmm", "r", "rm")
) | {"uhm", "uhmm", "mm", "mmm", "hm", "hmm", "hmmm", "erm", "ehm"}
_STRIP = ".-'"
# Transcripts often drop apostrophes; the phrase sets are written with them.
_APOSTROPHES = {
    w.replace("'", ""): w
    for w in (
        # not "we'll", "we're", "i'll", "i'd", "let's": without the apostrophe they are
        # other words ("well", "were", "ill", "id", "lets")
        "what's that's it's i'm don't can't won't didn't doesn't isn't i've you're they're "
        "where's how's who's there's here's wasn't aren't couldn't wouldn't shouldn't "
        "you'll we've haven't hasn't he's she's"
    ).split()
} | {"whats": "what's", "thats": "that's"}
#: "one" to "nine": said twice on purpose (phone numbers), and counted as numbers
_DIGIT_WORDS = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# words that are said twice on purpose
_REPEATABLE = frozenset("no yes yeah bye very hold okay ok zero oh double ha go".split()) | set(
    _DIGIT_WORDS
)
_ACK = re.compile(r"\b(?:mm+|uh+|um+)[\s-]*(?:hm+|huh)\b")

_QUESTION_START = frozenset(
    [
        "what",
        "how",
        "why",
        "when",
        "where",
        "which",
        "who",
        "whose",
        "whom",
        "can",
        "could",
        "would",
        "will",
        "is",
        "are",
        "do",
        "does",
        "did",
        "should",
        "shall",
        "am",
    ]
)
_CONJUNCTIONS = frozenset(
    [
        "and",
        "but",
        "because",
        "cause",
        "so",
        "also",
        "after",
        "before",
        "when",
        "whenever",
        "if",
        "although",
        "though",
        "while",
        "since",
        "unless",
        "until",
        "whereas",
        "or",
        "then",
        "plus",
        "otherwise",
    ]
)
_NUMBER_WORDS = frozenset(
    [
        *_DIGIT_WORDS,
        "ten",
        "eleven",
        "twelve",
        "thirteen",
        "fourteen",
        "fifteen",
        "sixteen",
        "seventeen",
        "eighteen",
        "nineteen",
        "twenty",
        "thirty",
        "forty",
        "fifty",
        "sixty",
        "seventy",
        "eighty",
        "ninety",
        "hundred",
        "thousand",
        "million",
        "billion",
        "half",
        "twice",
        "double",
        "triple",
        "dozen",
        "quarter",
    ]
)
_CLAUSE_PUNCT = (",", ";", ":", "!", "?")


def tokens(text: str) -> tuple[str, ...]:
    """Lower-case word tokens with fillers and edge punctuation removed."""
    out = []
    low = text.lower()
    if "hm" in low or "huh" in low:
        low = _ACK.sub("mhm", low)  # "mm hmm" and "uh huh" are a yes, not two fillers
    prev = ""
    for tok in low.translate(_SEPARATORS).split():
        tok = tok.strip(_STRIP)
        if not tok or tok in _FILLERS:
            continue
        tok = _APOSTROPHES.get(tok, tok)
        # speech recognition repeats words on a false start ("that's that's fine")
        if tok == prev and tok not in _REPEATABLE:
            continue
        out.append(tok)
        prev = tok
    return tuple(out)


def normalise(text: str) -> str:
    """Lower case, fillers dropped, punctuation turned to spaces (apostrophes and
    arithmetic kept), single spaces."""
    return " ".join(tokens(text))


def content_text(content: Any) -> str:
    """The text of an OpenAI message ``content``: a string, or a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, Mapping))
    return ""


def estimate_tokens(chars: int) -> int:
    """About four characters a token for English, the usual rule of thumb."""
    return (chars + 3) // 4


@dataclass(frozen=True, slots=True)
class Features:
    words: int
    questions: int
    clauses: int
    numbers: int
    conversation_tokens: int
    history_messages: int

    def as_dict(self) -> dict[str, int]:
        return {
            "words": self.words,
            "questions": self.questions,
            "clauses": self.clauses,
            "numbers": self.numbers,
            "conversation_tokens": self.conversation_tokens,
            "history_messages": self.history_messages,
        }


def features(raw: str, toks: tuple[str, ...], messages: Iterable[Mapping[str, Any]]) -> Features:
    """Counts the rules look at, in one pass over the tokens (and the history's lengths).

    Questions are the question marks when the turn has any; a voice transcript has none,
    so then a question word at the start of the turn or right after a conjunction counts.
    """
    marks = raw.count("?")
    questions = 0
    conjunctions = 0
    numbers = 0
    prev_is_boundary = True
    for tok in toks:
        if tok in _CONJUNCTIONS:
            conjunctions += 1
            prev_is_boundary = True
            continue
        if prev_is_boundary and tok in _QUESTION_START:
            questions += 1
        prev_is_boundary = False
        if tok in _NUMBER_WORDS or tok[0].isdigit() or (tok[0] == "$" and tok[1:2].isdigit()):
            numbers += 1
    punct = sum(raw.count(c) for c in _CLAUSE_PUNCT) + raw.count(". ")
    chars = len(raw)
    n_messages = 0
    for m in messages:
        chars += len(content_text(m.get("content")))
        n_messages += 1
    return Features(
        words=len(toks),
        questions=marks if marks else questions,
        clauses=1 + conjunctions + punct,
        numbers=numbers,
        conversation_tokens=estimate_tokens(chars),
        history_messages=n_messages,
    )
