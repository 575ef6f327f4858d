"""Typing help for redis-py, whose command stubs return ``Awaitable[T] | T`` for both clients."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TypeVar, cast

T = TypeVar("T")


def aw(result: Awaitable[T] | T) -> Awaitable[T]:
    """The awaitable an asyncio client's command returned, typed as such."""
    return cast(Awaitable[T], result)


def text(value: bytes | str) -> str:
    """A Redis reply as text (this client returns bytes; the stubs say str)."""
    return value.decode("utf-8") if isinstance(value, bytes) else value
