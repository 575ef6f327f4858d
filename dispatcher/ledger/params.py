"""Query parameters of the ledger (``since``, ``until``, ``group_by``, ``limit``), parsed purely.

Shared by the HTTP router and the command line, so both accept the same spellings and
reject bad ones with the same message (HTTP 422, exit code 2).

Times: ``2024-11-15`` (midnight UTC), ``2024-11-15T10:30:00`` (UTC when no offset is
given), ``2024-11-15T10:30:00+02:00``, ``now``, ``today``, ``yesterday``, or a span back
from now: ``90m``, ``24h``, ``7d``, ``2w``. ``since`` is inclusive, ``until`` exclusive.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

GROUP_BY_CHOICES = ("tier", "model", "provider", "rule", "day", "session")
MAX_LIMIT = 100_000
_SPAN = re.compile(r"^(\d{1,6})\s*(m|min|h|d|w)$")
_SPAN_UNIT = {"m": 60, "min": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class LedgerQueryError(ValueError):
    """Raised when a ledger query parameter is malformed; the message names it and its value."""

    def __init__(self, param: str, message: str) -> None:
        self.param = param
        super().__init__(f"{param}: {message}")


def parse_time(param: str, value: str | None, now: datetime) -> datetime | None:
    """A UTC datetime from one of the spellings above (None or blank stays None)."""
    if value is None or not value.strip():
        return None
    text = value.strip().lower()
    today = datetime.combine(now.astimezone(UTC).date(), time(), UTC)
    if text == "now":
        return now.astimezone(UTC)
    if text == "today":
        return today
    if text == "yesterday":
        return today - timedelta(days=1)
    span = _SPAN.match(text)
    if span:
        return now.astimezone(UTC) - timedelta(seconds=int(span[1]) * _SPAN_UNIT[span[2]])
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
            return datetime.combine(date.fromisoformat(text), time(), UTC)
        moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise LedgerQueryError(
            param,
            f"{value!r} is not a date or time (use 2024-11-15, 2024-11-15T10:30:00Z, "
            "now, today, yesterday, or a span back such as 90m, 24h, 7d)",
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def parse_group_by(value: str | None) -> tuple[str, ...]:
    """Dimensions from ``tier``, ``model,provider`` ... (``session`` only alone)."""
    if value is None or not value.strip():
        return ()
    dims = tuple(part.strip().lower() for part in value.split(","))
    for dim in dims:
        if dim not in GROUP_BY_CHOICES:
            raise LedgerQueryError(
                "group_by", f"unknown {dim!r} (choose from {', '.join(GROUP_BY_CHOICES)})"
            )
    if len(set(dims)) != len(dims):
        raise LedgerQueryError("group_by", f"{value!r} names a dimension twice")
    if "session" in dims and len(dims) > 1:
        raise LedgerQueryError("group_by", "session cannot be combined with other dimensions")
    return dims


def parse_limit(value: int | str | None, default: int | None = None) -> int | None:
    if value is None or value == "":
        return default
    try:
        limit = int(value)
    except (TypeError, ValueError):
        raise LedgerQueryError("limit", f"{value!r} is not a whole number") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise LedgerQueryError("limit", f"{limit} is outside 1..{MAX_LIMIT}")
    return limit


@dataclass(frozen=True, slots=True)
class Window:
    """A time window, split into whole UTC days (read from the roll-ups) and the partial
    days at its edges (read from the turns)."""

    since: datetime | None
    until: datetime | None
    #: roll-up days ``[day_from, day_to)``; None for unbounded; ``has_days`` False: none
    day_from: date | None
    day_to: date | None
    has_days: bool
    #: raw windows ``[start, end)`` read from ``ledger_turns``
    edges: tuple[tuple[datetime | None, datetime | None], ...]


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time(), UTC)


def split_window(since: datetime | None, until: datetime | None) -> Window:
    """Split ``[since, until)`` into whole days and edge windows (see :class:`Window`)."""
    if since is not None and until is not None and since >= until:
        raise LedgerQueryError(
            "since", f"{since.isoformat()} is not before until {until.isoformat()}"
        )
    day_from = None
    if since is not None:
        day_from = since.date() if since == _midnight(since.date()) else since.date() + timedelta(1)
    day_to = until.date() if until is not None else None
    if day_from is not None and day_to is not None and day_from >= day_to:
        return Window(since, until, None, None, False, ((since, until),))
    edges: list[tuple[datetime | None, datetime | None]] = []
    if since is not None and day_from is not None and since != _midnight(day_from):
        edges.append((since, _midnight(day_from)))
    if until is not None and day_to is not None and until != _midnight(day_to):
        edges.append((_midnight(day_to), until))
    return Window(since, until, day_from, day_to, True, tuple(edges))
