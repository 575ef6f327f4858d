"""Matching word sequences token by token: a dict lookup a word, not a regex scan."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterable

from dispatcher.routing.text import tokens


class PhraseIndex:
    """Labelled phrases indexed by their first word; longest match wins."""

    def __init__(self, labelled: Iterable[tuple[str, str]]) -> None:
        merged: dict[tuple[str, ...], set[str]] = defaultdict(set)
        for phrase, label in labelled:
            toks = tuple(tokens(phrase))
            if toks:
                merged[toks].add(label)
        index: dict[str, list[tuple[tuple[str, ...], frozenset[str]]]] = defaultdict(list)
        for toks, labels in merged.items():
            index[toks[0]].append((toks, frozenset(labels)))
        for entries in index.values():
            entries.sort(key=lambda e: len(e[0]), reverse=True)
        self._index = dict(index)

    def labels(self, toks: tuple[str, ...]) -> set[str]:
        """Every label of every phrase found anywhere in ``toks``."""
        found: set[str] = set()
        index = self._index
        n = len(toks)
        for i, tok in enumerate(toks):
            entries = index.get(tok)
            if entries is None:
                continue
            for phrase, labels in entries:
                k = len(phrase)
                if k == 1 or (i + k <= n and tuple(toks[i : i + k]) == phrase):
                    found |= labels
        return found

    def covers(
        self,
        toks: tuple[str, ...],
        required: Collection[str],
        allowed: Collection[str],
        fillers: Collection[str],
        filler_phrases: PhraseIndex | None = None,
    ) -> bool:
        """True when ``toks`` is nothing but phrases of ``required`` or ``allowed`` intents
        and fillers, with at least one ``required`` phrase (greedy longest match)."""
        index = self._index
        fp = filler_phrases._index if filler_phrases is not None else {}
        i, n, matched = 0, len(toks), False
        while i < n:
            step = 0
            tok = toks[i]
            for phrase, labels in index.get(tok, ()):
                k = len(phrase)
                if k == 1 or toks[i : i + k] == phrase:
                    if not labels.isdisjoint(required):
                        matched = True
                    elif labels.isdisjoint(allowed):
                        continue
                    step = k
                    break
            if not step:
                for phrase, _ in fp.get(tok, ()):
                    k = len(phrase)
                    if toks[i : i + k] == phrase:
                        step = k
                        break
            if step:
                i += step
            elif tok in fillers:
                i += 1
            else:
                return False
        return matched
