"""The ledger writer against real Redis (DB 7) and a real database (Postgres and SQLite).

Events are appended to the stream as workers append them; the writer drains the stream
through its consumer group. Checked: one row per turn, exact costs, idempotence on
redelivery, roll-ups that always equal the sum of the rows, pending entries taken over,
poison entries set aside, and Postgres going away and coming back.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import orjson
import pytest
import redis
from helpers import refuse_connections, wait_for, writer_in_thread
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from dispatcher.ledger import queries
from dispatcher.ledger.bench import TurnFactory
from dispatcher.ledger.db import make_engine
from dispatcher.ledger.models import DailyRollup, Price, SessionDailyRollup, Turn
from dispatcher.ledger.repository import priced_cost
from dispatcher.ledger.writer import DEAD_STREAM, STREAM, LedgerWriter, WriterConfig, WriterStats
from dispatcher.policy import Policy, load_policy
from dispatcher.settings import DEFAULT_POLICY_PATH

pytestmark = pytest.mark.integration

GROUPS = (
    (),
    ("tier",),
    ("model",),
    ("provider",),
    ("rule",),
    ("day",),
    ("session",),
    ("tier", "day"),
    ("model", "provider", "rule"),
)


@pytest.fixture(scope="module")
def policy() -> Policy:
    return load_policy(DEFAULT_POLICY_PATH)


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    eng = make_engine(db_url)
    yield eng
    eng.dispose()


def add(r: redis.Redis, events: list[dict[str, Any]], stream: str = STREAM) -> list[str]:
    pipe = r.pipeline(transaction=False)
    for ev in events:
        pipe.xadd(stream, {"event": orjson.dumps(ev)})
    return [i.decode() for i in pipe.execute()]


def drain(r: redis.Redis, url: str, policy: Policy, **config: Any) -> WriterStats:
    """Run a writer until the stream is drained and nothing is pending."""
    engine = make_engine(url, writer=True)
    try:
        cfg = WriterConfig(consumer="test-writer", block_ms=50, **config)
        return LedgerWriter(r, engine, cfg, policy=policy).run(until_idle=True)
    finally:
        engine.dispose()


def rows_of(engine: Engine) -> list[Turn]:
    with Session(engine) as s:
        return list(s.scalars(select(Turn)))


def assert_rollups_match_rows(engine: Engine) -> None:
    """Both roll-ups hold exactly the sums of the turns (per key)."""
    expected: dict[tuple[Any, ...], list[Any]] = defaultdict(lambda: [0, 0, Decimal(0), 0])
    per_session: dict[tuple[Any, ...], list[Any]] = defaultdict(lambda: [0, 0, Decimal(0)])
    for t in rows_of(engine):
        key = (t.tenant, t.day, t.tier or "", t.provider or "", t.model or "", t.rule or "")
        e = expected[key]
        e[0] += 1
        e[1] += t.input_tokens
        e[2] += t.cost_usd
        e[3] += t.ttft_bucket is not None
        s = per_session[(t.tenant, t.day, t.session_id)]
        s[0] += 1
        s[1] += t.output_tokens
        s[2] += t.cost_usd
    with Session(engine) as s:
        got = {
            (d.tenant, d.day, d.tier, d.provider, d.model, d.rule): [
                d.turns,
                d.input_tokens,
                d.cost_usd,
                d.ttft_count,
            ]
            for d in s.scalars(select(DailyRollup))
            if d.turns
        }
        got_sessions = {
            (d.tenant, d.day, d.session_id): [d.turns, d.output_tokens, d.cost_usd]
            for d in s.scalars(select(SessionDailyRollup))
            if d.turns
        }
        hist_total = sum(sum(d.ttft_hist.values()) for d in s.scalars(select(DailyRollup)))
    assert got == dict(expected)
    assert got_sessions == dict(per_session)
    assert hist_total == sum(e[3] for e in expected.values())


# -- one row per turn, exact ------------------------------------------------------------------


def test_every_event_becomes_one_row_with_costs_exactly_tokens_times_prices(
    ledger_redis: redis.Redis, db_url: str, engine: Engine, policy: Policy
) -> None:
    # Given 300 turns of every status, their costs computed by the policy from usage
    events = list(TurnFactory(policy, seed=1, spread_s=3 * 86400).events(300))
    add(ledger_redis, events)
    # When the writer drains the stream
    stats = drain(ledger_redis, db_url, policy)
    # Then each turn has exactly one row and nothing is left in the stream
    assert stats.inserted == 300 and stats.dead == 0
    assert ledger_redis.xlen(STREAM) == 0
    assert ledger_redis.xpending(STREAM, "ledger-writer")["pending"] == 0
    rows = {t.turn_id: t for t in rows_of(engine)}
    assert set(rows) == {e["turn_id"] for e in events}
    with Session(engine) as s:
        prices = {(p.policy_version, p.model): p for p in s.scalars(select(Price))}
    assert len(prices) == len(policy.models)
    statuses = set()
    for ev in events:
        row = rows[ev["turn_id"]]
        statuses.add(row.status)
        assert row.cost_usd == Decimal(ev["cost_usd"])
        assert row.baseline_cost_usd == Decimal(ev["baseline_cost_usd"])
        # tokens x the stored prices of the turn's policy version, to the last decimal
        u = ev["usage"]
        price = prices[(row.policy_version, row.model)]
        assert row.cost_usd == priced_cost(
            price,
            u["input_tokens"],
            u["output_tokens"],
            u["cached_input_tokens"],
            u["reasoning_tokens"],
        )
        baseline = prices[(row.policy_version, policy.baseline_model)]
        assert row.baseline_cost_usd == priced_cost(
            baseline,
            u["input_tokens"],
            u["output_tokens"],
            u["cached_input_tokens"],
            u["reasoning_tokens"],
        )
        assert row.attempts == ev["attempts"] and row.chain == ev["chain"]
    assert statuses == {"completed", "failed", "cancelled", "refused"}
    assert_rollups_match_rows(engine)


def test_redelivered_events_write_nothing_twice(
    ledger_redis: redis.Redis, db_url: str, engine: Engine, policy: Policy
) -> None:
    events = list(TurnFactory(policy, seed=2, spread_s=86400).events(200))
    add(ledger_redis, events)
    drain(ledger_redis, db_url, policy)
    with Session(engine) as s:
        before = queries.summary(s, tenant=None).as_dict()["total"]
    # When every event is delivered again (a worker retried, an entry was claimed twice),
    # twice, and in one batch together with its own duplicate
    add(ledger_redis, events + events)
    stats = drain(ledger_redis, db_url, policy)
    # Then nothing changes: same rows, same roll-ups
    assert stats.inserted == 0 and stats.updated == 0 and stats.unchanged == 400
    assert len(rows_of(engine)) == 200
    with Session(engine) as s:
        assert queries.summary(s, tenant=None).as_dict()["total"] == before
    assert_rollups_match_rows(engine)


def test_a_changed_event_replaces_its_row_and_moves_its_rollup(
    ledger_redis: redis.Redis, db_url: str, engine: Engine, policy: Policy
) -> None:
    first = next(TurnFactory(policy, seed=3, spread_s=60).events(1))
    first.update(tier="fast", model="gpt-4o-mini", provider="openai", cost_usd="0.0010")
    later = {
        **first,
        "tier": "standard",
        "status": "cancelled",
        "cost_usd": "0.0020",
        "finished_at": first["finished_at"] + 5,
    }
    stale = {**first, "tier": "reasoning", "finished_at": first["finished_at"] - 5}
    add(ledger_redis, [first])
    drain(ledger_redis, db_url, policy)
    add(ledger_redis, [later])
    add(ledger_redis, [stale])  # older than the row: ignored
    stats = drain(ledger_redis, db_url, policy)
    assert (stats.updated, stats.unchanged) == (1, 1)
    [row] = rows_of(engine)
    assert (row.tier, row.status, row.cost_usd) == ("standard", "cancelled", Decimal("0.0020"))
    with Session(engine) as s:
        summary = queries.summary(s, tenant=None, group_by=("tier",))
    assert [(g.key["tier"], g.agg.turns, g.agg.cost_usd) for g in summary.groups] == [
        ("standard", 1, Decimal("0.0020"))
    ]
    assert_rollups_match_rows(engine)


# -- summaries equal the rows -------------------------------------------------------------------


def _expected(rows: list[Turn], dims: tuple[str, ...]) -> dict[tuple[Any, ...], list[Any]]:
    out: dict[tuple[Any, ...], list[Any]] = defaultdict(lambda: [0, 0, 0, Decimal(0), Decimal(0)])
    for t in rows:
        values = {
            "tier": t.tier,
            "model": t.model,
            "provider": t.provider,
            "rule": t.rule,
            "day": t.day.isoformat(),
            "session": t.session_id,
        }
        e = out[tuple(values[d] for d in dims)]
        e[0] += 1
        e[1] += t.input_tokens
        e[2] += t.output_tokens
        e[3] += t.cost_usd
        e[4] += t.cost_usd if t.baseline_cost_usd is None else t.baseline_cost_usd
    return dict(out)


@pytest.mark.parametrize("dims", GROUPS, ids=lambda d: ",".join(d) or "total")
def test_summary_totals_equal_the_sum_of_rows(
    ledger_redis: redis.Redis, db_url: str, engine: Engine, policy: Policy, dims: tuple[str, ...]
) -> None:
    add(ledger_redis, list(TurnFactory(policy, seed=4, spread_s=5 * 86400).events(600)))
    drain(ledger_redis, db_url, policy)
    rows = rows_of(engine)
    now = datetime.now(UTC)
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    windows: list[tuple[datetime | None, datetime | None]] = [
        (None, None),
        (midnight - timedelta(days=3), midnight),  # whole days: roll-ups only
        (midnight - timedelta(days=3, hours=7, minutes=13), now - timedelta(hours=2)),  # edges
        (midnight - timedelta(hours=20), midnight - timedelta(hours=3)),  # inside partial days
    ]
    for tenant in (None, "tenant-1"):
        for since, until in windows:
            chosen = [
                t
                for t in rows
                if (tenant is None or t.tenant == tenant)
                and (since is None or t.received_at >= since)
                and (until is None or t.received_at < until)
            ]
            expected = _expected(chosen, dims)
            with Session(engine) as s:
                summary = queries.summary(
                    s, tenant=tenant, since=since, until=until, group_by=dims, limit=10_000
                )
            got = {
                tuple(g.key[d].isoformat() if d == "day" else g.key[d] or None for d in dims): [
                    g.agg.turns,
                    g.agg.input_tokens,
                    g.agg.output_tokens,
                    g.agg.cost_usd,
                    g.agg.baseline_cost_usd,
                ]
                for g in summary.groups
            }
            if not dims and not chosen:
                expected = {}
            assert got == expected, (tenant, since, until)
            total = summary.total.agg
            assert total.turns == len(chosen)
            assert total.cost_usd == sum((t.cost_usd for t in chosen), Decimal(0))
            data = summary.as_dict()
            assert Decimal(data["total"]["cost_usd"]) == total.cost_usd


def test_session_summary_keeps_the_costliest_and_counts_the_rest(
    ledger_redis: redis.Redis, db_url: str, engine: Engine, policy: Policy
) -> None:
    add(ledger_redis, list(TurnFactory(policy, seed=5, spread_s=86400).events(400)))
    drain(ledger_redis, db_url, policy)
    rows = rows_of(engine)
    per_session = _expected(rows, ("session",))
    with Session(engine) as s:
        summary = queries.summary(s, tenant=None, group_by=("session",), limit=5)
    costs = sorted((e[3] for e in per_session.values()), reverse=True)
    assert [g.agg.cost_usd for g in summary.groups] == costs[:5]
    assert summary.more == len(per_session) - 5
    assert summary.total.agg.turns == 400


def test_session_report_is_the_per_call_rollup(
    ledger_redis: redis.Redis, db_url: str, engine: Engine, policy: Policy
) -> None:
    factory = TurnFactory(policy, seed=6, spread_s=60)
    events = list(factory.events(16))  # calls of 8 turns
    base = time.time() - 120
    for i, ev in enumerate(events):
        ev.update(session_id="call-x", received_at=base + 10 * i, finished_at=base + 10 * i + 2)
    events[3].update(status="cancelled", speculative=True, cost_usd="0.000125")
    events[4].update(status="cancelled", speculative=False, cost_usd="0.000500")
    events[5].update(status="completed", speculative=True)
    add(ledger_redis, events)
    drain(ledger_redis, db_url, policy)
    with Session(engine) as s:
        report = queries.session_report(s, session_id="call-x", tenant=None)
        assert queries.session_report(s, session_id="call-x", tenant="nobody") is None
    assert report is not None
    assert report["turns"] == 16
    total = sum((Decimal(e["cost_usd"]) for e in events), Decimal(0))
    assert Decimal(report["cost_usd"]) == total
    assert Decimal(report["cancelled_speculative_cost_usd"]) == Decimal("0.000125")
    assert report["duration_s"] == pytest.approx(152, abs=0.01)
    per_minute = Decimal(report["cost_per_minute_usd"])
    assert abs(per_minute - total * 60 / Decimal("152")) < Decimal("1e-11")
    assert [t["tier"] for t in report["turn_list"]] == [e["tier"] for e in events]
    ttfts = sorted(e["ttft_ms"] for e in events if e["ttft_ms"] is not None)
    assert ttfts[0] <= report["ttft_p50_ms"] <= report["ttft_p95_ms"] <= ttfts[-1]


# -- delivery: pending entries, poison entries ----------------------------------------------


def test_entries_left_pending_by_a_dead_writer_are_taken_over(
    ledger_redis: redis.Redis, ledger_pg: str, policy: Policy
) -> None:
    events = list(TurnFactory(policy, seed=7, spread_s=60).events(250))
    add(ledger_redis, events)
    # Given a writer that read a batch and died before acknowledging it
    ledger_redis.xgroup_create(STREAM, "ledger-writer", id="0", mkstream=True)
    ledger_redis.xreadgroup("ledger-writer", "ghost", {STREAM: ">"}, count=100)
    assert ledger_redis.xpending(STREAM, "ledger-writer")["pending"] == 100
    time.sleep(0.2)
    # When another writer runs, it claims the idle entries as well as the unread ones
    stats = drain(ledger_redis, ledger_pg, policy, claim_idle_ms=100, claim_every_s=0.1)
    # Then every turn is written once
    assert stats.claimed == 100 and stats.inserted == 250
    assert ledger_redis.xpending(STREAM, "ledger-writer")["pending"] == 0
    engine = make_engine(ledger_pg)
    assert len(rows_of(engine)) == 250
    engine.dispose()


def test_a_writer_restarted_under_its_name_writes_its_own_pending_entries_once(
    ledger_redis: redis.Redis, ledger_pg: str, policy: Policy
) -> None:
    events = list(TurnFactory(policy, seed=13, spread_s=60).events(500))
    add(ledger_redis, events)
    # Given a writer named "test-writer" that read 300 entries in three reads and died
    ledger_redis.xgroup_create(STREAM, "ledger-writer", id="0", mkstream=True)
    for _ in range(3):
        ledger_redis.xreadgroup("ledger-writer", "test-writer", {STREAM: ">"}, count=100)
    # When it comes back under the same name, reading small batches (its pending ones
    # page by page, then the rest), with no claiming at all
    stats = drain(ledger_redis, ledger_pg, policy, batch_size=120, claim_idle_ms=3_600_000)
    # Then each entry was handled once
    assert stats.claimed == 0
    assert (stats.events, stats.inserted, stats.unchanged) == (500, 500, 0)
    assert ledger_redis.xpending(STREAM, "ledger-writer")["pending"] == 0


def test_poison_entries_are_dead_lettered_and_the_rest_written(
    ledger_redis: redis.Redis, ledger_pg: str, policy: Policy
) -> None:
    good = list(TurnFactory(policy, seed=8, spread_s=60).events(20))
    add(ledger_redis, good[:10])
    ledger_redis.xadd(STREAM, {"event": b"{not json"})
    ledger_redis.xadd(STREAM, {"something": b"else"})
    ledger_redis.xadd(STREAM, {"event": orjson.dumps({**good[0], "status": "exploded"})})
    add(ledger_redis, good[10:])
    stats = drain(ledger_redis, ledger_pg, policy)
    assert (stats.inserted, stats.dead) == (20, 3)
    assert ledger_redis.xlen(STREAM) == 0
    dead = ledger_redis.xrange(DEAD_STREAM)
    reasons = [fields[b"error"].decode() for _, fields in dead]
    assert any("JSON" in r or "json" in r for r in reasons)
    assert any("no 'event' field" in r for r in reasons)
    assert any("status" in r for r in reasons)


# -- Postgres away and back -----------------------------------------------------------------


def test_postgres_unavailable_events_wait_then_every_row_appears_once(
    ledger_redis: redis.Redis,
    ledger_pg_factory: Callable[[], str],
    policy: Policy,
) -> None:
    from sqlalchemy.engine import make_url

    from dispatcher.ledger import migrate

    url = ledger_pg_factory()
    migrate.upgrade(url)
    name = make_url(url).database
    admin = make_engine(
        make_url(url).set(database="postgres").render_as_string(False), isolation_level="AUTOCOMMIT"
    )
    engine = make_engine(url, writer=True)
    factory = TurnFactory(policy, seed=9, spread_s=60)
    config = WriterConfig(consumer="w", block_ms=50, retry_initial_s=0.05, retry_max_s=0.3)
    try:
        with writer_in_thread(ledger_redis, engine, config, policy) as writer:
            # Given a running writer that has written a first batch
            add(ledger_redis, list(factory.events(50)))
            wait_for(lambda: writer.stats.inserted == 50, 10, "the first batch")
            # When the database stops accepting connections and drops the existing ones
            refuse_connections(admin, name)
            # and turns keep ending meanwhile
            later = list(factory.events(300))
            add(ledger_redis, later)
            wait_for(lambda: writer.stats.db_retries >= 3, 10, "the writer to retry")
            # Then the events wait in the stream, unacknowledged
            assert ledger_redis.xlen(STREAM) == 300
            assert writer.stats.inserted == 50
            # When the database is back
            refuse_connections(admin, name, refuse=False)
            wait_for(lambda: ledger_redis.xlen(STREAM) == 0, 20, "the backlog to be written")
    finally:
        refuse_connections(admin, name, refuse=False)
        engine.dispose()
        admin.dispose()
    # Then every turn has its row, none twice
    check = make_engine(url)
    rows = rows_of(check)
    assert len(rows) == 350 == len({t.turn_id for t in rows})
    assert writer.stats.inserted == 350 and writer.stats.updated == 0
    assert_rollups_match_rows(check)
    check.dispose()


def test_an_unreachable_database_at_start_is_waited_for(
    ledger_redis: redis.Redis, ledger_pg: str, policy: Policy
) -> None:
    # A writer pointed at a port where nothing listens keeps the events and says so
    add(ledger_redis, list(TurnFactory(policy, seed=10, spread_s=60).events(10)))
    engine = make_engine("postgresql+psycopg://postgres@127.0.0.1:1/nowhere", writer=True)
    config = WriterConfig(block_ms=50, retry_initial_s=0.05)
    with writer_in_thread(ledger_redis, engine, config) as writer:
        wait_for(lambda: writer.stats.db_retries >= 2, 10, "retries")
    assert writer.stats.inserted == 0
    # the stopped writer leaves its batch pending; a writer with the right URL takes it over
    assert ledger_redis.xpending(STREAM, "ledger-writer")["pending"] == 10
    stats = drain(ledger_redis, ledger_pg, policy, claim_idle_ms=1, claim_every_s=0.05)
    assert stats.inserted == 10
    engine.dispose()
