"""The simulator's answers: pure and deterministic, so callers can predict them.

Every provider format of the simulator answers a prompt (the text of the last user
message) with ``answer_tokens(prompt, n)``; ``"".join(tokens)`` is the answer text. A
tool call gets its arguments from :func:`tool_arguments` and streams them in the pieces
of :func:`argument_fragments`. Tests and benchmarks import these to know what to expect.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator, Mapping
from functools import lru_cache
from typing import Any

import orjson

#: 64 words, so one byte of the hash stream picks one without bias (256 % 64 == 0).
VOCABULARY: tuple[str, ...] = (
    "the", "your", "order", "account", "we", "can", "help", "with",
    "that", "today", "please", "check", "details", "team", "service", "will",
    "be", "ready", "soon", "thanks", "for", "waiting", "booking", "payment",
    "delivery", "update", "request", "is", "now", "confirmed", "here", "next",
    "step", "call", "back", "time", "support", "number", "email", "address",
    "plan", "change", "new", "price", "store", "open", "available", "latest",
    "status", "message", "reply", "ticket", "refund", "tomorrow", "morning", "option",
    "simple", "quick", "note", "all", "set", "sure", "agent", "line",
)  # fmt: skip

#: The shortest and longest sentence, in tokens.
SENTENCE_MIN, SENTENCE_MAX = 6, 10

#: How many characters of a tool call's JSON arguments each streamed fragment carries.
FRAGMENT_CHARS = 8

_TOKEN_RE = re.compile(r"\w+|[^\w\s]")


def _hash_bytes(prompt: str) -> Iterator[int]:
    """An endless, deterministic byte stream: SHA-256 of the prompt in counter mode."""
    seed = hashlib.sha256(prompt.encode("utf-8")).digest()
    counter = 0
    while True:
        yield from hashlib.sha256(seed + counter.to_bytes(8, "big")).digest()
        counter += 1


@lru_cache(maxsize=4096)
def _answer(prompt: str, n_tokens: int) -> tuple[str, ...]:
    tokens: list[str] = []
    stream = _hash_bytes(prompt)
    sentence_left = 0
    for i in range(n_tokens):
        if sentence_left == 0:
            sentence_left = SENTENCE_MIN + next(stream) % (SENTENCE_MAX - SENTENCE_MIN + 1)
            word = VOCABULARY[next(stream) % len(VOCABULARY)].capitalize()
        else:
            word = VOCABULARY[next(stream) % len(VOCABULARY)]
        sentence_left -= 1
        if sentence_left == 0 or i == n_tokens - 1:
            word += "."
        tokens.append(word if i == 0 else " " + word)
    return tuple(tokens)


def answer_tokens(prompt: str, n_tokens: int) -> list[str]:
    """Return the ``n_tokens`` tokens the simulator streams in answer to ``prompt``.

    Tokens are vocabulary words, each with a leading space except the first; a sentence
    (capitalised) ends with "." every 6 to 10 tokens and the last token always ends with
    ".". The same prompt always gives the same tokens; a shorter answer is the start of a
    longer one, except that its last token always ends with ".". ``n_tokens <= 0`` gives
    an empty list.
    """
    return list(_answer(prompt, max(n_tokens, 0)))


def count_tokens(text: str) -> int:
    """Count the tokens of ``text`` the way the simulator bills input.

    An approximation of a real tokenizer: one token per run of letters, digits or "_",
    and one per other non-space character ("Hello, world." is 4 tokens). It is additive
    over whitespace-separated pieces, so the input tokens of a request are the sum over
    its texts (system prompt, each message's text, tool results).
    """
    return len(_TOKEN_RE.findall(text))


def _string_value(prompt: str) -> str:
    words = [w.strip(".,;:!?\"'()[]{}") for w in prompt.split()[:5]]
    return " ".join(w for w in words if w) or "sim"


def _first_type(schema: Mapping[str, Any]) -> str:
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if str(k).lower() != "null"), "null")
    if isinstance(kind, str):
        return kind.lower()  # Gemini's OpenAPI subset spells types "STRING", "OBJECT"...
    if "properties" in schema:
        return "object"
    return "string"


def schema_value(schema: Mapping[str, Any], prompt: str) -> Any:
    """Return a deterministic value for a JSON schema (see :func:`tool_arguments`)."""
    for key in ("anyOf", "oneOf", "allOf"):
        variants = schema.get(key)
        if isinstance(variants, list) and variants:
            usable = [v for v in variants if isinstance(v, Mapping) and v.get("type") != "null"]
            return schema_value(usable[0] if usable else variants[0], prompt)
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    if "const" in schema:
        return schema["const"]
    kind = _first_type(schema)
    if kind in ("integer", "number"):
        return 1
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    if kind == "array":
        items = schema.get("items")
        return [schema_value(items, prompt)] if isinstance(items, Mapping) else []
    if kind == "object":
        return tool_arguments(schema, prompt)
    return _string_value(prompt)


def tool_arguments(schema: Mapping[str, Any] | None, prompt: str) -> dict[str, Any]:
    """Return the arguments the simulator passes to a tool whose parameters are ``schema``.

    Only the schema's ``required`` properties are filled, in their declared order:
    strings get the first (up to five) words of the prompt without punctuation ("sim" if
    there are none), numbers and integers 1, booleans true, enums their first value,
    arrays one item, objects recurse. Type names are case-insensitive.
    """
    if not schema:
        return {}
    properties = schema.get("properties") or {}
    required = schema.get("required") or []
    return {
        name: schema_value(properties.get(name) or {}, prompt)
        for name in required
        if isinstance(name, str)
    }


def tool_arguments_json(schema: Mapping[str, Any] | None, prompt: str) -> str:
    """Return :func:`tool_arguments` as the compact JSON text the providers stream."""
    return orjson.dumps(tool_arguments(schema, prompt)).decode()


def argument_fragments(arguments: str) -> list[str]:
    """Split a tool call's JSON ``arguments`` into the pieces streamed one per token.

    Each piece is :data:`FRAGMENT_CHARS` characters (the last may be shorter); a tool
    call's output token count is the number of pieces.
    """
    return [arguments[i : i + FRAGMENT_CHARS] for i in range(0, len(arguments), FRAGMENT_CHARS)]
