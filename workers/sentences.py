"""An incremental sentence splitter for text-to-speech: feed deltas, get whole sentences.

A sentence ends at ``.``, ``!`` or ``?`` (optionally followed by closing quotes or
brackets) when whitespace follows, or at a line break. A ``.`` does not end a sentence
after a known abbreviation ("Dr.", "e.g.", "vs."), a single letter ("J. Smith") or a word
with inner dots ("U.S."); "3.5" never splits because a digit, not whitespace, follows.

The character after the mark decides, so a sentence is released when the next delta
arrives (one inter-token interval later) or when the stream ends (:meth:`flush`). Pure: no
I/O, no clock.
"""

from __future__ import annotations

TERMINATORS = frozenset(".!?")
CLOSERS = frozenset("\"')]}”’»")
#: Lower-cased words that take a dot without ending the sentence.
ABBREVIATIONS = frozenset(
    {
        "dr", "mr", "mrs", "ms", "prof", "sr", "jr", "st", "mt", "vs", "al",
        "e.g", "i.e", "eg", "ie", "cf", "approx", "dept", "est", "inc", "ltd", "co",
        "corp", "fig", "ca", "jan", "feb", "mar", "apr", "jun", "jul", "aug",
        "sep", "sept", "oct", "nov", "dec", "mon", "tue", "wed", "thu", "fri", "sat", "sun",
    }
)  # fmt: skip


def _is_abbreviation(text: str, dot: int) -> bool:
    """Whether the ``.`` at ``text[dot]`` closes an abbreviation rather than a sentence."""
    start = dot
    while start > 0 and not text[start - 1].isspace() and text[start - 1] not in "(\"'":
        start -= 1
    word = text[start:dot]
    if not word:
        return False
    if len(word) == 1 and word.isalpha():
        return True  # an initial: "J. Smith"
    if "." in word and any(c.isalpha() for c in word):
        return True  # "e.g", "U.S"
    return word.lower() in ABBREVIATIONS


class SentenceSplitter:
    """Accumulates text deltas; :meth:`feed` returns the sentences each delta completes."""

    def __init__(self) -> None:
        self._buf = ""
        self._pos = 0  # where scanning resumes: everything before has no boundary

    def feed(self, text: str) -> list[str]:
        """Add ``text``; return every sentence it completes (stripped, non-empty)."""
        self._buf += text
        out: list[str] = []
        buf = self._buf
        i = self._pos
        start = 0
        n = len(buf)
        while i < n:
            ch = buf[i]
            if ch == "\n":
                self._emit(buf[start:i], out)
                start = i + 1
                i += 1
                continue
            if ch not in TERMINATORS:
                i += 1
                continue
            j = i + 1
            while j < n and (buf[j] in TERMINATORS or buf[j] in CLOSERS):
                j += 1  # "?!", "...", '."'
            if j >= n:
                break  # the next character decides; wait for it
            if buf[j].isspace() and not (ch == "." and _is_abbreviation(buf, i)):
                self._emit(buf[start:j], out)
                start = j
            i = j
        self._buf = buf[start:]
        self._pos = max(i - start, 0)
        return out

    def flush(self) -> str | None:
        """The text left at the end of the stream, as a last sentence (None if blank)."""
        rest, self._buf, self._pos = self._buf.strip(), "", 0
        return rest or None

    @staticmethod
    def _emit(piece: str, out: list[str]) -> None:
        piece = piece.strip()
        if piece:
            out.append(piece)


def split_sentences(text: str) -> list[str]:
    """Split a whole text at once (the same rules as the incremental splitter)."""
    splitter = SentenceSplitter()
    sentences = splitter.feed(text)
    last = splitter.flush()
    return [*sentences, last] if last else sentences
