"""Matching word sequences token by token: a dict lookup a word, not a regex scan."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterable

from dispatcher.routing.text import tokens

_Entry = tuple[tuple[str, ...], frozenset[str]]


class PhraseIndex:
    """Labelled phrases. One-word phrases sit in a dict by word; longer ones in a dict by
    their first two words, each bucket longest first, so matching at a position costs two
    dict lookups and a comparison or two, whatever the number of phrases."""

    def __init__(self, labelled: Iterable[tuple[str, str]]) -> None:
        merged: dict[tuple[str, ...], set[str]] = defaultdict(set)
        for phrase, label in labelled:
            toks = tokens(phrase)
            if toks:
                merged[toks].add(label)
        self._single: dict[str, frozenset[str]] = {}
        pairs: dict[tuple[str, str], list[_Entry]] = defaultdict(list)
        for toks, labels in merged.items():
            if len(toks) == 1:
                self._single[toks[0]] = frozenset(labels)
            else:
                pairs[(toks[0], toks[1])].append((toks, frozenset(labels)))
        for entries in pairs.values():
            entries.sort(key=lambda e: len(e[0]), reverse=True)
        self._pairs = dict(pairs)

    def _longest_at(self, toks: tuple[str, ...], i: int) -> list[_Entry]:
        """Phrases (two words or more) that match at ``i``, longest first."""
        if i + 1 >= len(toks):
            return []
        entries = self._pairs.get((toks[i], toks[i + 1]))
        if not entries:
            return []
        return [e for e in entries if len(e[0]) == 2 or toks[i : i + len(e[0])] == e[0]]

    def labels(self, toks: tuple[str, ...]) -> set[str]:
        """Every label of every phrase found anywhere in ``toks``."""
        found: set[str] = set()
        single, pairs = self._single, self._pairs
        n = len(toks)
        for i, tok in enumerate(toks):
            labels = single.get(tok)
            if labels is not None:
                found |= labels
            if i + 1 < n:
                entries = pairs.get((tok, toks[i + 1]))
                if entries:
                    for phrase, labs in entries:
                        k = len(phrase)
                        if k == 2 or toks[i : i + k] == phrase:
                            found |= labs
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
        i, n, matched = 0, len(toks), False
        while i < n:
            step = 0
            candidates = self._longest_at(toks, i)
            single = self._single.get(toks[i])
            if single is not None:
                candidates.append(((toks[i],), single))
            for phrase, labels in candidates:
                if not labels.isdisjoint(required):
                    matched = True
                elif labels.isdisjoint(allowed):
                    continue
                step = len(phrase)
                break
            if not step and filler_phrases is not None:
                fp = filler_phrases._longest_at(toks, i)
                if fp:
                    step = len(fp[0][0])
            if step:
                i += step
            elif toks[i] in fillers:
                i += 1
            else:
                return False
        return matched

    def ends_with(self, toks: tuple[str, ...], wanted: Collection[str]) -> bool:
        """True when the turn ends with a phrase labelled in ``wanted``."""
        n = len(toks)
        if n and not self._single.get(toks[-1], frozenset()).isdisjoint(wanted):
            return True
        for start in range(max(0, n - 6), n - 1):
            for phrase, labels in self._longest_at(toks, start):
                if start + len(phrase) == n and not labels.isdisjoint(wanted):
                    return True
        return False
