"""Writing the ledger: prices by policy version, and turns in batches with their roll-ups.

Functions take a keyword-only ``session``, flush, and never commit: the caller owns the
transaction (the writer commits once per batch, then acknowledges the stream entries).

:func:`write_turns` is idempotent by turn id. Within its transaction it

1. takes the ledger's write lock (a transaction-scoped advisory lock on Postgres; on
   SQLite the writer's ``BEGIN IMMEDIATE`` already holds the database's write lock), so
   two writers never interleave their read-modify-write of the roll-ups;
2. reads the rows already stored for the batch's turn ids;
3. drops events that change nothing (same content hash: a redelivery) or are older than
   the stored row (an earlier ``finished_at``: a stale duplicate);
4. ``INSERT ... ON CONFLICT (turn_id) DO UPDATE`` for the rest;
5. adds to the roll-ups each new row's contribution *minus* the replaced row's, so a turn
   counts once however often its event is delivered.

On Postgres each step is one statement whatever the batch size: the rows travel as one
JSON array expanded by ``json_populate_recordset`` (money as decimal text, so NUMERIC
gets it exactly), and the roll-ups are upserted additively (``turns = turns +
EXCLUDED.turns``, histograms merged key by key), so they need no read. On SQLite the rows
go through ``executemany`` and the roll-ups are read, added to, and written back.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import orjson
from sqlalchemy import String, Table, any_, bindparam, func, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from dispatcher.ledger.models import (
    DailyRollup,
    PolicyVersion,
    Price,
    SessionDailyRollup,
    Turn,
)
from dispatcher.ledger.rollup import Agg, daily_key, session_key

if TYPE_CHECKING:
    from dispatcher.policy.models import Policy

#: ``pg_advisory_xact_lock`` key of the ledger writers ("ledger" in ASCII)
WRITE_LOCK_KEY = 0x6C6564676572
#: rows per statement: keeps SQLite under its bound-parameter limit, and Postgres fast
CHUNK = 500

TURNS: Table = Turn.__table__  # type: ignore[assignment]
DAILY: Table = DailyRollup.__table__  # type: ignore[assignment]
SESSION_DAILY: Table = SessionDailyRollup.__table__  # type: ignore[assignment]
PRICES: Table = Price.__table__  # type: ignore[assignment]
POLICIES: Table = PolicyVersion.__table__  # type: ignore[assignment]

#: columns read back to compute the contribution a stored row made to the roll-ups
_OLD_COLUMNS = (
    "turn_id",
    "tenant",
    "session_id",
    "day",
    "tier",
    "provider",
    "model",
    "rule",
    "status",
    "speculative",
    "input_tokens",
    "output_tokens",
    "cached_input_tokens",
    "reasoning_tokens",
    "cost_usd",
    "baseline_cost_usd",
    "ttft_bucket",
    "finished_at",
    "event_hash",
)


@dataclass(frozen=True, slots=True)
class WriteResult:
    """What one batch did: rows inserted, rows replaced, events that changed nothing."""

    inserted: int = 0
    updated: int = 0
    unchanged: int = 0

    @property
    def events(self) -> int:
        return self.inserted + self.updated + self.unchanged


def _insert(session: Session, table: Table) -> Any:
    name = session.get_bind().dialect.name
    if name == "postgresql":
        return postgresql.insert(table)
    if name == "sqlite":
        return sqlite.insert(table)
    raise NotImplementedError(f"the ledger supports postgresql and sqlite, not {name}")


def _upsert(session: Session, table: Table, rows: Sequence[Mapping[str, Any]]) -> None:
    """``INSERT ... ON CONFLICT (primary key) DO UPDATE SET <every other column>``."""
    if not rows:
        return
    stmt = _insert(session, table)
    keys = [c.name for c in table.primary_key.columns]
    stmt = stmt.on_conflict_do_update(
        index_elements=keys,
        set_={c.name: stmt.excluded[c.name] for c in table.columns if c.name not in keys},
    )
    for start in range(0, len(rows), CHUNK):
        session.execute(stmt, list(rows[start : start + CHUNK]))


def lock_for_write(session: Session) -> None:
    """Serialise ledger writers for the rest of the transaction (Postgres)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(select(func.pg_advisory_xact_lock(WRITE_LOCK_KEY)))


def write_turns(session: Session, rows: Sequence[Mapping[str, Any]]) -> WriteResult:
    """Upsert turn rows (as :meth:`LedgerEvent.to_row` makes them) and their roll-ups.

    When a batch holds several rows of one turn, the one with the latest ``finished_at``
    (then the later in the batch) wins.
    """
    if not rows:
        return WriteResult()
    latest: dict[str, Mapping[str, Any]] = {}
    for row in rows:
        held = latest.get(row["turn_id"])
        if held is None or not _older(row, held):
            latest[row["turn_id"]] = row
    lock_for_write(session)
    old = _stored(session, list(latest))
    writes: list[Mapping[str, Any]] = []
    daily: dict[tuple[Any, ...], Agg] = defaultdict(Agg)
    sessions: dict[tuple[Any, ...], Agg] = defaultdict(Agg)
    inserted = updated = unchanged = 0
    for turn_id, row in latest.items():
        before = old.get(turn_id)
        if before is not None and (
            before["event_hash"] == row["event_hash"] or _older(row, before)
        ):
            unchanged += 1
            continue
        writes.append(row)
        new = Agg.of_turn(row)
        daily[daily_key(row)].add(new)
        sessions[session_key(row)].add(new)
        if before is None:
            inserted += 1
        else:
            updated += 1
            gone = Agg.of_turn(before)
            daily[daily_key(before)].add(gone, -1)
            sessions[session_key(before)].add(gone, -1)
    unchanged += len(rows) - len(latest)
    daily_keys = ("tenant", "day", "tier", "provider", "model", "rule")
    session_keys = ("tenant", "day", "session_id")
    if _is_postgres(session):
        _pg_upsert(session, TURNS, writes)
        _pg_add(session, DAILY, daily_keys, daily)
        _pg_add(session, SESSION_DAILY, session_keys, sessions)
    else:
        _upsert(session, TURNS, writes)
        _apply(session, DAILY, daily_keys, daily)
        _apply(session, SESSION_DAILY, session_keys, sessions)
    session.flush()
    return WriteResult(inserted, updated, unchanged)


def _older(row: Mapping[str, Any], than: Mapping[str, Any]) -> bool:
    a, b = row.get("finished_at"), than.get("finished_at")
    return a is not None and b is not None and a < b


def _is_postgres(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def _stored(session: Session, turn_ids: list[str]) -> dict[str, dict[str, Any]]:
    cols = [TURNS.c[name] for name in _OLD_COLUMNS]
    found: dict[str, dict[str, Any]] = {}
    if _is_postgres(session):
        ids = bindparam("ids", turn_ids, type_=postgresql.ARRAY(String))
        for r in session.execute(select(*cols).where(TURNS.c.turn_id == any_(ids))).mappings():
            found[r["turn_id"]] = dict(r)
        return found
    for start in range(0, len(turn_ids), CHUNK):
        chunk = turn_ids[start : start + CHUNK]
        for r in session.execute(select(*cols).where(TURNS.c.turn_id.in_(chunk))).mappings():
            found[r["turn_id"]] = dict(r)
    return found


def _apply(
    session: Session,
    table: Table,
    key_names: tuple[str, ...],
    deltas: Mapping[tuple[Any, ...], Agg],
) -> None:
    """Read the roll-up rows the deltas touch, add the deltas, write them back."""
    deltas = {k: d for k, d in deltas.items() if not d.is_zero()}
    if not deltas:
        return
    stored: dict[tuple[Any, ...], Agg] = {}
    # a superset query (every key column IN its values), narrowed exactly in Python:
    # simpler for both backends than a row-value IN list, and as quick with the PK index
    keys = list(deltas)
    for start in range(0, len(keys), CHUNK):
        chunk = keys[start : start + CHUNK]
        query = select(table)
        for i, name in enumerate(key_names):
            values = sorted({k[i] for k in chunk})
            query = query.where(table.c[name].in_(values))
        wanted = set(chunk)
        for r in session.execute(query).mappings():
            key = tuple(r[name] for name in key_names)
            if key in wanted:
                stored[key] = Agg.from_columns(r)
    out: list[dict[str, Any]] = []
    hist = "ttft_hist" in table.c
    for key, delta in sorted(deltas.items(), key=lambda kv: tuple(map(str, kv[0]))):
        agg = stored.get(key) or Agg()
        agg.add(delta)
        out.append(_rollup_row(key_names, key, agg, hist))
    _upsert(session, table, out)


def _rollup_row(
    key_names: tuple[str, ...], key: tuple[Any, ...], agg: Agg, hist: bool
) -> dict[str, Any]:
    row = {**dict(zip(key_names, key, strict=True)), **agg.columns()}
    if not hist:
        del row["ttft_hist"]
    return row


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return format(value, "f")
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _records(rows: Sequence[Mapping[str, Any]]) -> str:
    # a key left out is NULL to json_populate_recordset: None values need not travel
    return orjson.dumps(
        [{k: v for k, v in row.items() if v is not None} for row in rows], default=_json_default
    ).decode()


def _pg_statement(table: Table, set_clause: str) -> str:
    names = ", ".join(c.name for c in table.columns)
    keys = ", ".join(c.name for c in table.primary_key.columns)
    return (
        f"INSERT INTO {table.name} ({names}) SELECT {names} "
        f"FROM json_populate_recordset(NULL::{table.name}, CAST(:rows AS json)) "
        f"ON CONFLICT ({keys}) DO UPDATE SET {set_clause}"
    )


def _pg_upsert(session: Session, table: Table, rows: Sequence[Mapping[str, Any]]) -> None:
    """One statement: the rows as a JSON array, each replacing the stored one."""
    if not rows:
        return
    keys = {c.name for c in table.primary_key.columns}
    set_clause = ", ".join(
        f"{c.name} = EXCLUDED.{c.name}" for c in table.columns if c.name not in keys
    )
    session.execute(text(_pg_statement(table, set_clause)), {"rows": _records(rows)})


#: merge two ``{bucket: count}`` histograms, dropping buckets that fall to zero
_PG_HIST_ADD = (
    "(SELECT coalesce(jsonb_object_agg(k, n), '{{}}'::jsonb) FROM ("
    "SELECT k, sum(v::bigint) AS n FROM ("
    "SELECT * FROM jsonb_each_text({table}.ttft_hist) "
    "UNION ALL SELECT * FROM jsonb_each_text(EXCLUDED.ttft_hist)) AS e(k, v) "
    "GROUP BY k HAVING sum(v::bigint) <> 0) AS m)"
)


def _pg_add(
    session: Session,
    table: Table,
    key_names: tuple[str, ...],
    deltas: Mapping[tuple[Any, ...], Agg],
) -> None:
    """Add the deltas to the roll-up rows in one statement (no read needed)."""
    hist = "ttft_hist" in table.c
    rows = [
        _rollup_row(key_names, key, delta, hist)
        for key, delta in sorted(deltas.items(), key=lambda kv: tuple(map(str, kv[0])))
        if not delta.is_zero()
    ]
    if not rows:
        return
    sums = [f"{n} = {table.name}.{n} + EXCLUDED.{n}" for n in (*Agg.INTS, *Agg.MONEY)]
    if hist:
        sums.append("ttft_hist = " + _PG_HIST_ADD.format(table=table.name))
    session.execute(text(_pg_statement(table, ", ".join(sums))), {"rows": _records(rows)})


def register_policy(session: Session, policy: Policy, *, now: datetime | None = None) -> bool:
    """Record the prices of ``policy`` under its version; False if already known.

    A version's prices never change (the version is a digest of the policy file unless the
    file names one), so a known version is left as it is.
    """
    version = policy.version
    if version is None:
        raise ValueError("the policy has no version: load it with load_policy/parse_policy")
    if session.get(PolicyVersion, version) is not None:
        return False
    stmt = _insert(session, POLICIES).on_conflict_do_nothing(index_elements=["version"])
    session.execute(
        stmt,
        [
            {
                "version": version,
                "prices_as_of": policy.prices_as_of,
                "baseline_model": policy.baseline_model,
                "registered_at": now or datetime.now(UTC),
            }
        ],
    )
    prices = [
        {
            "policy_version": version,
            "model": model_id,
            "provider": model.provider,
            "input_usd_per_mtok": model.price.input,
            "output_usd_per_mtok": model.price.output,
            "cached_input_usd_per_mtok": (
                model.price.input if model.price.cached_input is None else model.price.cached_input
            ),
            "reasoning_usd_per_mtok": (
                model.price.output if model.price.reasoning is None else model.price.reasoning
            ),
        }
        for model_id, model in policy.models.items()
    ]
    stmt = _insert(session, PRICES).on_conflict_do_nothing(
        index_elements=["policy_version", "model"]
    )
    session.execute(stmt, prices)
    session.flush()
    return True


def price_table(session: Session, version: str) -> dict[str, Price]:
    """The prices of one policy version, by model id (empty if the version is unknown)."""
    rows = session.scalars(select(Price).where(Price.policy_version == version))
    return {p.model: p for p in rows}


def known_versions(session: Session) -> set[str]:
    return set(session.scalars(select(PolicyVersion.version)))


def priced_cost(
    price: Price, input_tokens: int, output_tokens: int, cached: int = 0, reasoning: int = 0
) -> Decimal:
    """Exact cost of a usage at a stored price (the same formula as the policy's)."""
    cached = min(cached, input_tokens)
    reasoning = min(reasoning, output_tokens)
    total = (
        (input_tokens - cached) * price.input_usd_per_mtok
        + cached * price.cached_input_usd_per_mtok
        + (output_tokens - reasoning) * price.output_usd_per_mtok
        + reasoning * price.reasoning_usd_per_mtok
    )
    return total / Decimal(1_000_000)


def delete_all(session: Session, tables: Iterable[Table] = (TURNS, DAILY, SESSION_DAILY)) -> None:
    """Empty the turn and roll-up tables (tests and benchmarks only)."""
    for table in tables:
        session.execute(text(f"DELETE FROM {table.name}"))
    session.flush()
