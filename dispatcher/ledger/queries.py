"""Reading the ledger: one turn, summaries, per-session (per-call) roll-ups, exports.

Summaries read the daily roll-ups for the whole UTC days of the window and the turns
themselves only for the partial days at its edges (:func:`~dispatcher.ledger.params.split_window`),
so a summary over millions of turns aggregates a few thousand roll-up rows. Totals are
exact (integer and NUMERIC sums); p50/p95 time to first token comes from the roll-ups'
histograms (within ±2.2 %, see :mod:`dispatcher.ledger.rollup`). The per-session report
reads the session's turns (an index range) and its percentiles are exact.

Every function takes ``tenant``: a tenant name restricts to that tenant (the HTTP API
always passes the caller's); ``None`` reads every tenant (operators on the command line).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Integer,
    Select,
    Table,
    case,
    cast,
    func,
    select,
    text,
    true,
)
from sqlalchemy.orm import Session

from dispatcher.ledger.models import Turn
from dispatcher.ledger.params import Window, split_window
from dispatcher.ledger.repository import DAILY, SESSION_DAILY, TURNS
from dispatcher.ledger.rollup import Agg, exact_percentile, hist_percentile
from dispatcher.ledger.types import install_sqlite_functions, money_sum

CENT_PCT = Decimal("0.01")
#: cost per minute is rounded to this (a billionth of a cent)
PER_MINUTE_QUANTUM = Decimal("0.00000000001")
DEFAULT_SESSION_GROUPS = 100

_INT_SUMS = Agg.INTS
_MONEY_SUMS = Agg.MONEY


def money(value: Decimal | None) -> str | None:
    """Exact decimal text (never exponent notation), or None."""
    return None if value is None else format(value, "f")


def _prepare(session: Session) -> None:
    """Backend settings for the summary's aggregate queries, for this transaction."""
    bind = session.connection()
    if bind.dialect.name == "sqlite":
        install_sqlite_functions(bind.connection.driver_connection)
    elif bind.dialect.name == "postgresql":
        # short analytic queries: compiling them (JIT) costs more than it saves, and the
        # per-session aggregate sorts more than the default 4 MB in memory
        session.execute(text("SET LOCAL jit = off"))
        session.execute(text("SET LOCAL work_mem = '64MB'"))


# -- summaries ------------------------------------------------------------------------------


@dataclass(slots=True)
class Group:
    """One group of a summary: its key (dimension -> value) and its sums.

    ``ttfts``, when set, are the group's exact times to first token (sessions); otherwise
    percentiles come from the histogram in ``agg``.
    """

    key: dict[str, Any]
    agg: Agg = field(default_factory=Agg)
    ttfts: list[float] | None = None

    def as_dict(self) -> dict[str, Any]:
        a = self.agg
        savings = a.baseline_cost_usd - a.cost_usd
        pct = (
            (savings * 100 / a.baseline_cost_usd).quantize(CENT_PCT, ROUND_HALF_EVEN)
            if a.baseline_cost_usd
            else None
        )
        return {
            "group": {k: _show(v) for k, v in self.key.items()},
            "turns": a.turns,
            "completed": a.completed,
            "failed": a.failed,
            "cancelled": a.cancelled,
            "refused": a.refused,
            "speculative": a.speculative,
            "input_tokens": a.input_tokens,
            "output_tokens": a.output_tokens,
            "cached_input_tokens": a.cached_input_tokens,
            "reasoning_tokens": a.reasoning_tokens,
            "cost_usd": money(a.cost_usd),
            "baseline_cost_usd": money(a.baseline_cost_usd),
            "savings_usd": money(savings),
            "savings_pct": None if pct is None else format(pct, "f"),
            "cancelled_speculative_cost_usd": money(a.cancelled_speculative_cost_usd),
            "ttft_p50_ms": self.percentile(0.50),
            "ttft_p95_ms": self.percentile(0.95),
        }

    def percentile(self, q: float) -> float | None:
        if self.ttfts is not None:
            return exact_percentile(self.ttfts, q)
        return hist_percentile(self.agg.ttft_hist, q)


def _show(value: Any) -> Any:
    if isinstance(value, date):
        return value.isoformat()
    return None if value == "" else value


@dataclass(slots=True)
class Summary:
    since: datetime | None
    until: datetime | None
    group_by: tuple[str, ...]
    groups: list[Group]
    total: Group
    #: groups left out by ``limit``
    more: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "since": None if self.since is None else self.since.isoformat(),
            "until": None if self.until is None else self.until.isoformat(),
            "group_by": list(self.group_by),
            "groups": [g.as_dict() for g in self.groups],
            "total": self.total.as_dict(),
            "more_groups": self.more,
            "ttft_percentiles": (
                "exact per session; from a histogram (within 2.2%) for other groups and the total"
            ),
        }


def _dim_column(table: Table, dim: str) -> ColumnElement[Any]:
    name = "session_id" if dim == "session" else dim
    col: ColumnElement[Any] = table.c[name]
    if table is TURNS and dim in ("tier", "provider", "model", "rule"):
        # the roll-ups key a missing dimension as ''; the turns keep NULL
        col = func.coalesce(col, "")
    return col.label(dim)


def _rollup_sums(table: Table) -> list[ColumnElement[Any]]:
    cols: list[ColumnElement[Any]] = [func.sum(table.c[n]).label(n) for n in _INT_SUMS]
    cols += [money_sum(table.c[n]).label(n) for n in _MONEY_SUMS]
    return cols


def _turn_sums() -> list[ColumnElement[Any]]:
    t = TURNS.c

    def count_if(condition: ColumnElement[bool]) -> ColumnElement[Any]:
        return func.sum(case((condition, 1), else_=0))

    return [
        func.count().label("turns"),
        *(
            count_if(t.status == s).label(s)
            for s in ("completed", "failed", "cancelled", "refused")
        ),
        count_if(t.speculative).label("speculative"),
        func.sum(t.input_tokens).label("input_tokens"),
        func.sum(t.output_tokens).label("output_tokens"),
        func.sum(t.cached_input_tokens).label("cached_input_tokens"),
        func.sum(t.reasoning_tokens).label("reasoning_tokens"),
        func.count(t.ttft_bucket).label("ttft_count"),
        money_sum(t.cost_usd).label("cost_usd"),
        # a turn without a baseline claims no savings (as in Agg.of_turn)
        money_sum(func.coalesce(t.baseline_cost_usd, t.cost_usd)).label("baseline_cost_usd"),
        money_sum(case(((t.status == "cancelled") & t.speculative, t.cost_usd), else_=None)).label(
            "cancelled_speculative_cost_usd"
        ),
    ]


def _agg_from_sums(r: Mapping[Any, Any]) -> Agg:
    agg = Agg()
    for n in _INT_SUMS:
        setattr(agg, n, int(r[n] or 0))
    for n in _MONEY_SUMS:
        value = r[n]
        setattr(agg, n, Decimal(0) if value is None else Decimal(value))
    return agg


def _tenant_filter(query: Select[Any], table: Table, tenant: str | None) -> Select[Any]:
    return query if tenant is None else query.where(table.c.tenant == tenant)


def _rollup_window(query: Select[Any], table: Table, w: Window) -> Select[Any]:
    if w.day_from is not None:
        query = query.where(table.c.day >= w.day_from)
    if w.day_to is not None:
        query = query.where(table.c.day < w.day_to)
    return query


def _turn_window(query: Select[Any], start: datetime | None, end: datetime | None) -> Select[Any]:
    if start is not None:
        query = query.where(TURNS.c.received_at >= start)
    if end is not None:
        query = query.where(TURNS.c.received_at < end)
    return query


def _merge(into: dict[tuple[Any, ...], Agg], key: tuple[Any, ...], agg: Agg) -> None:
    held = into.get(key)
    if held is None:
        into[key] = agg
    else:
        held.add(agg)


def _from_rollup(
    session: Session,
    w: Window,
    dims: tuple[str, ...],
    tenant: str | None,
    sessions: list[str] | None,
) -> dict[tuple[Any, ...], Agg]:
    table = SESSION_DAILY if "session" in dims else DAILY
    dim_cols = [_dim_column(table, d) for d in dims]
    query = _rollup_window(
        _tenant_filter(select(*dim_cols, *_rollup_sums(table)), table, tenant), table, w
    ).group_by(*dim_cols)
    if sessions is not None:
        query = query.where(table.c.session_id.in_(sessions))
    out: dict[tuple[Any, ...], Agg] = {}
    for r in session.execute(query).mappings():
        out[tuple(r[d] for d in dims)] = _agg_from_sums(r)
    if not out or "ttft_hist" not in table.c:
        return out
    for key, bucket, count in _rollup_hist(session, table, w, dims, tenant, sessions):
        if key in out:
            hist = out[key].ttft_hist
            hist[bucket] = hist.get(bucket, 0) + count
    return out


def _rollup_hist(
    session: Session,
    table: Table,
    w: Window,
    dims: tuple[str, ...],
    tenant: str | None,
    sessions: list[str] | None,
) -> Iterator[tuple[tuple[Any, ...], int, int]]:
    """(group key, bucket, count) of the roll-up histograms, summed per group.

    Postgres expands and sums the histograms itself (``jsonb_each_text``), so only one
    row per group and bucket crosses the wire; SQLite's are added up here.
    """
    dim_cols = [_dim_column(table, d) for d in dims]
    if session.get_bind().dialect.name == "postgresql":
        each = func.jsonb_each_text(table.c.ttft_hist).table_valued("key", "value")
        bucket = cast(each.c.key, Integer).label("bucket")
        query = select(*dim_cols, bucket, func.sum(cast(each.c.value, BigInteger)).label("n"))
        query = query.select_from(table).join(each, true())
        query = _rollup_window(_tenant_filter(query, table, tenant), table, w)
        query = query.where(table.c.ttft_count > 0)
        if sessions is not None:
            query = query.where(table.c.session_id.in_(sessions))
        for r in session.execute(query.group_by(*dim_cols, bucket)).mappings():
            yield tuple(r[d] for d in dims), int(r["bucket"]), int(r["n"])
        return
    query = _rollup_window(
        _tenant_filter(select(*dim_cols, table.c.ttft_hist), table, tenant), table, w
    ).where(table.c.ttft_count > 0)
    if sessions is not None:
        query = query.where(table.c.session_id.in_(sessions))
    for r in session.execute(query).mappings():
        key = tuple(r[d] for d in dims)
        for b, n in (r["ttft_hist"] or {}).items():
            yield key, int(b), int(n)


def _from_turns(
    session: Session,
    start: datetime | None,
    end: datetime | None,
    dims: tuple[str, ...],
    tenant: str | None,
) -> dict[tuple[Any, ...], Agg]:
    dim_cols = [_dim_column(TURNS, d) for d in dims]
    base = _turn_window(_tenant_filter(select(*dim_cols, *_turn_sums()), TURNS, tenant), start, end)
    out: dict[tuple[Any, ...], Agg] = {}
    for r in session.execute(base.group_by(*dim_cols)).mappings():
        out[tuple(r[d] for d in dims)] = _agg_from_sums(r)
    if "session" in dims:
        return out  # sessions' percentiles are read exactly (_session_ttfts)
    buckets = _turn_window(
        _tenant_filter(
            select(*dim_cols, TURNS.c.ttft_bucket, func.count().label("n")), TURNS, tenant
        ),
        start,
        end,
    ).where(TURNS.c.ttft_bucket.is_not(None))
    for r in session.execute(buckets.group_by(*dim_cols, TURNS.c.ttft_bucket)).mappings():
        key = tuple(r[d] for d in dims)
        hist = out[key].ttft_hist
        b = int(r["ttft_bucket"])
        hist[b] = hist.get(b, 0) + int(r["n"])
    return out


def _collect(
    session: Session,
    w: Window,
    dims: tuple[str, ...],
    tenant: str | None,
    sessions: list[str] | None = None,
) -> dict[tuple[Any, ...], Agg]:
    groups: dict[tuple[Any, ...], Agg] = {}
    if w.has_days:
        for key, agg in _from_rollup(session, w, dims, tenant, sessions).items():
            _merge(groups, key, agg)
    for start, end in w.edges:
        for key, agg in _from_turns(session, start, end, dims, tenant).items():
            _merge(groups, key, agg)
    return {k: a for k, a in groups.items() if a.turns}


def summary(
    session: Session,
    *,
    tenant: str | None,
    since: datetime | None = None,
    until: datetime | None = None,
    group_by: tuple[str, ...] = (),
    limit: int | None = None,
) -> Summary:
    """Turns, tokens, cost, baseline, savings and p50/p95 TTFT per group, and in total.

    Groups are ordered by day when ``day`` is a dimension, else by cost (highest first);
    ``limit`` keeps the first ones (``session`` groups default to the top
    :data:`DEFAULT_SESSION_GROUPS`).
    """
    _prepare(session)
    w = split_window(since, until)
    if "session" in group_by and limit is None:
        limit = DEFAULT_SESSION_GROUPS
    if not group_by:
        total = Group({}, _collect(session, w, (), tenant).get((), Agg()))
        return Summary(since, until, group_by, [total] if total.agg.turns else [], total)
    # the top sessions can be picked in SQL when no edge adds to them afterwards
    picked: list[str] | None = None
    n_sessions = 0
    if (
        "session" in group_by
        and limit is not None
        and not w.edges
        and session.get_bind().dialect.name != "sqlite"
    ):
        picked, n_sessions = _top_sessions(session, w, tenant, limit)
    groups = _collect(session, w, group_by, tenant, picked)
    if "session" in group_by:
        # the shown sessions may be the top few: the total comes from the daily roll-up
        total = Group({}, _collect(session, w, (), tenant).get((), Agg()))
    else:
        total = Group({}, Agg())
        for agg in groups.values():
            total.agg.add(agg)
    ordered = [Group(dict(zip(group_by, key, strict=True)), agg) for key, agg in groups.items()]
    if "day" in group_by:
        ordered.sort(key=lambda g: tuple(str(g.key[d]) for d in group_by))
    else:
        ordered.sort(key=lambda g: (-g.agg.cost_usd, tuple(str(v) for v in g.key.values())))
    more = 0
    if limit is not None and len(ordered) > limit:
        more = len(ordered) - limit
        ordered = ordered[:limit]
    if picked is not None:
        more = max(0, n_sessions - len(ordered))
    if "session" in group_by and ordered:
        ttfts = _session_ttfts(session, w, tenant, [g.key["session"] for g in ordered])
        for g in ordered:
            g.ttfts = ttfts.get(g.key["session"], [])
    return Summary(since, until, group_by, ordered, total, more)


def _session_ttfts(
    session: Session, w: Window, tenant: str | None, session_ids: list[str]
) -> dict[str, list[float]]:
    """Times to first token of the given sessions' turns in the window (index ranges)."""
    t = TURNS.c
    query = _turn_window(
        _tenant_filter(select(t.session_id, t.ttft_ms), TURNS, tenant), w.since, w.until
    ).where(t.session_id.in_(session_ids), t.ttft_ms.is_not(None))
    out: dict[str, list[float]] = {}
    for row in session.execute(query):
        out.setdefault(str(row[0]), []).append(float(row[1]))
    return out


def _top_sessions(
    session: Session, w: Window, tenant: str | None, limit: int
) -> tuple[list[str], int]:
    """The ``limit`` costliest sessions of the window, and how many sessions it has."""
    t = SESSION_DAILY
    query = (
        _rollup_window(
            _tenant_filter(select(t.c.session_id, func.count().over().label("n")), t, tenant),
            t,
            w,
        )
        .group_by(t.c.session_id)
        .order_by(money_sum(t.c.cost_usd).desc(), t.c.session_id)
        .limit(limit)
    )
    rows = session.execute(query).all()
    return [r[0] for r in rows], int(rows[0][1]) if rows else 0


# -- turns ------------------------------------------------------------------------------


def get_turn(session: Session, *, turn_id: str, tenant: str | None) -> Turn | None:
    """The ledger row of one turn (None if absent, or another tenant's)."""
    query = select(Turn).where(Turn.turn_id == turn_id)
    if tenant is not None:
        query = query.where(Turn.tenant == tenant)
    return session.scalars(query).first()


def list_turns(
    session: Session,
    *,
    tenant: str | None,
    session_id: str | None = None,
    limit: int = 50,
) -> list[Turn]:
    """A session's turns in the order they came, or else the latest turns, newest first."""
    query = select(Turn)
    if tenant is not None:
        query = query.where(Turn.tenant == tenant)
    if session_id is not None:
        query = query.where(Turn.session_id == session_id).order_by(Turn.received_at, Turn.turn_id)
    else:
        query = query.order_by(Turn.received_at.desc(), Turn.turn_id.desc())
    return list(session.scalars(query.limit(limit)))


def turn_dict(turn: Turn | Mapping[Any, Any]) -> dict[str, Any]:
    """A turn as JSON-ready data: money as exact text, times as ISO 8601."""
    row = (
        dict(turn)
        if isinstance(turn, Mapping)
        else {c.name: getattr(turn, c.key) for c in TURNS.columns}
    )
    out: dict[str, Any] = {}
    for name, value in row.items():
        if name in ("event_hash",):
            continue
        if isinstance(value, Decimal):
            value = money(value)
        elif isinstance(value, datetime | date):
            value = value.isoformat()
        out[name] = value
    return out


# -- sessions (calls) -------------------------------------------------------------------


def session_report(
    session: Session, *, session_id: str, tenant: str | None
) -> dict[str, Any] | None:
    """The per-call roll-up: turns, cost, cost of cancelled speculative turns, cost per
    minute of call, p50/p95 TTFT (exact), and each turn's tier. None if no turn."""
    turns = list_turns(session, tenant=tenant, session_id=session_id, limit=1_000_000)
    if not turns:
        return None
    cost = sum((t.cost_usd for t in turns), Decimal(0))
    baseline = sum(
        (t.cost_usd if t.baseline_cost_usd is None else t.baseline_cost_usd for t in turns),
        Decimal(0),
    )
    spec = sum((t.cost_usd for t in turns if t.speculative and t.status == "cancelled"), Decimal(0))
    start = min(t.received_at for t in turns)
    end = max((t.finished_at or t.received_at) for t in turns)
    seconds = Decimal(str((end - start).total_seconds()))
    per_minute = (
        (cost * 60 / seconds).quantize(PER_MINUTE_QUANTUM, ROUND_HALF_EVEN) if seconds > 0 else None
    )
    ttfts = [t.ttft_ms for t in turns if t.ttft_ms is not None]
    savings = baseline - cost
    return {
        "session_id": session_id,
        "tenant": turns[0].tenant if tenant is not None else sorted({t.tenant for t in turns}),
        "turns": len(turns),
        "statuses": dict(Counter(t.status for t in turns)),
        "tiers": dict(Counter(t.tier or "" for t in turns)),
        "speculative_turns": sum(1 for t in turns if t.speculative),
        "input_tokens": sum(t.input_tokens for t in turns),
        "output_tokens": sum(t.output_tokens for t in turns),
        "cost_usd": money(cost),
        "baseline_cost_usd": money(baseline),
        "savings_usd": money(savings),
        "savings_pct": (
            format((savings * 100 / baseline).quantize(CENT_PCT, ROUND_HALF_EVEN), "f")
            if baseline
            else None
        ),
        "cancelled_speculative_cost_usd": money(spec),
        "started_at": start.isoformat(),
        "ended_at": end.isoformat(),
        "duration_s": float(seconds),
        "cost_per_minute_usd": money(per_minute),
        "ttft_p50_ms": exact_percentile(ttfts, 0.50),
        "ttft_p95_ms": exact_percentile(ttfts, 0.95),
        "turn_list": [
            {
                "turn_id": t.turn_id,
                "received_at": t.received_at.isoformat(),
                "tier": t.tier,
                "model": t.model,
                "status": t.status,
                "speculative": t.speculative,
                "cost_usd": money(t.cost_usd),
                "ttft_ms": t.ttft_ms,
            }
            for t in turns
        ],
    }


# -- export -------------------------------------------------------------------------------

EXPORT_COLUMNS = tuple(c.name for c in TURNS.columns if c.name != "event_hash")


def count_turns(
    session: Session,
    *,
    tenant: str | None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> int:
    query = _turn_window(
        _tenant_filter(select(func.count()).select_from(TURNS), TURNS, tenant), since, until
    )
    return int(session.scalar(query) or 0)


def iter_turns(
    session: Session,
    *,
    tenant: str | None,
    since: datetime | None = None,
    until: datetime | None = None,
    batch: int = 2000,
) -> Iterator[dict[str, Any]]:
    """Every turn of the window in arrival order, streamed ``batch`` rows at a time.

    Postgres reads through a server-side cursor (``yield_per``), so memory stays flat
    however many rows there are.
    """
    query = _turn_window(
        _tenant_filter(select(*(TURNS.c[n] for n in EXPORT_COLUMNS)), TURNS, tenant), since, until
    ).order_by(TURNS.c.received_at, TURNS.c.turn_id)
    result = session.execute(query.execution_options(yield_per=batch))
    for row in result.mappings():
        yield turn_dict(row)
