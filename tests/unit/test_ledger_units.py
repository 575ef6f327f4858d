"""The ledger's pure parts: event parsing, query parameters, roll-up arithmetic."""

from __future__ import annotations

import math
import statistics
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import orjson
import pytest
from pydantic import ValidationError

from dispatcher.domain import TurnStatus, Usage
from dispatcher.ledger.events import LedgerEvent, content_hash
from dispatcher.ledger.params import (
    LedgerQueryError,
    parse_group_by,
    parse_limit,
    parse_time,
    split_window,
)
from dispatcher.ledger.rollup import Agg, exact_percentile, hist_percentile, ttft_bucket
from dispatcher.policy import load_policy
from dispatcher.settings import DEFAULT_POLICY_PATH
from workers.ledger import ledger_event

NOW = datetime(2024, 11, 15, 12, 0, tzinfo=UTC)


def worker_event(**over: object) -> dict[str, object]:
    """A ledger event exactly as the worker builds it (workers/ledger.py)."""
    policy = load_policy(DEFAULT_POLICY_PATH)
    usage = Usage(input_tokens=1200, output_tokens=80, cached_input_tokens=1024)
    model = policy.models["gpt-4o-mini"]
    received = NOW.timestamp()
    job = {
        "turn_id": "turn-1",
        "tenant": "acme",
        "session_id": "call-1",
        "tier": "fast",
        "chain": ["llama-3.1-8b-instant", "gpt-4o-mini"],
        "rule": "short-social",
        "confidence": 0.92,
        "params": {"messages": [{"role": "user", "content": "yes"}]},
        "received_at": received,
        "deadline_at": received + 8,
        "policy_version": policy.version,
        "speculative": False,
        "text_chars": 3,
        "text_sha256": "a" * 64,
    }
    event = ledger_event(
        job,  # type: ignore[arg-type]
        terminal="done",
        code=None,
        chain=job["chain"],  # type: ignore[arg-type]
        attempts=[
            {
                "provider": "groq",
                "model": "llama-3.1-8b-instant",
                "outcome": "failed",
                "error_class": "rate_limited",
                "ttft_ms": None,
                "retry_after": 1.0,
                "hedge": False,
            },
            {
                "provider": "openai",
                "model": "gpt-4o-mini",
                "outcome": "ok",
                "error_class": None,
                "ttft_ms": 180.4,
                "retry_after": None,
                "hedge": False,
            },
        ],
        provider="openai",
        model="gpt-4o-mini",
        usage=usage,
        usage_estimated=False,
        cost=model.cost(usage),
        baseline_cost=policy.baseline_cost(usage),
        started_at=received + 0.004,
        first_token_at=received + 0.2105,
        finished_at=received + 0.9,
        finish_reason="stop",
        answer_chars=42,
        last_resort=False,
        worker="w1",
    )
    event.update(over)
    return event


# -- events --------------------------------------------------------------------------------


def test_worker_event_becomes_a_row_with_exact_money_and_utc_times() -> None:
    raw = orjson.dumps(worker_event())
    row = LedgerEvent.parse(raw).to_row(stream_id="1-0", now=NOW)
    assert row["turn_id"] == "turn-1" and row["tenant"] == "acme"
    assert row["session_id"] == "call-1"
    assert row["status"] == "completed"
    # (1200-1024)*0.15 + 1024*0.075 + 80*0.60 per million
    assert row["cost_usd"] == Decimal("0.0001512")
    assert isinstance(row["cost_usd"], Decimal)
    assert row["baseline_cost_usd"] == Decimal("0.00252")  # (176*2.5+1024*1.25+80*10)/1e6
    assert row["received_at"] == NOW
    assert row["day"] == date(2024, 11, 15)
    assert row["ttft_ms"] == pytest.approx(210.5)
    assert row["ttft_bucket"] == ttft_bucket(210.5)
    assert row["cached_input_tokens"] == 1024
    assert [a["outcome"] for a in row["attempts"]] == ["failed", "ok"]
    assert row["policy_version"] and row["worker"] == "w1"


def test_event_is_tolerant_of_extra_missing_and_renamed_fields() -> None:
    event = LedgerEvent.parse(
        orjson.dumps(
            {
                "turn_id": "t",
                "tenant": "acme",
                "session": "call-9",  # synonym
                "status": "canceled",  # synonym
                "error": {"code": "cancelled", "message": "bye"},
                "brand_new_field": [1, 2, 3],
                "tier": "",
                "usage": None,
                "attempts": None,
                "cost_usd": 0.000123,  # a JSON number: read through its repr, not binary
            }
        )
    )
    assert event.session_id == "call-9"
    assert event.status is TurnStatus.CANCELLED
    assert event.error_code == "cancelled"
    assert event.tier is None and event.model is None and event.received_at is None
    assert event.attempts == [] and event.usage.input_tokens == 0
    assert event.cost_usd == Decimal("0.000123")
    row = event.to_row(stream_id=None, now=NOW)
    assert row["received_at"] == NOW  # nothing else known: the time it was written
    assert row["ttft_bucket"] is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"turn_id": ""}, "turn_id"),
        ({"tenant": None}, "tenant"),
        ({"status": "exploded"}, "status"),
        ({"cost_usd": "12abc"}, "cost_usd"),
        ({"cost_usd": "NaN"}, "cost_usd"),
    ],
)
def test_unusable_events_are_rejected_naming_the_field(
    change: dict[str, object], message: str
) -> None:
    with pytest.raises((ValidationError, ValueError), match=message):
        LedgerEvent.parse(orjson.dumps(worker_event(**change)))


def test_not_an_object_is_rejected() -> None:
    with pytest.raises(ValueError):
        LedgerEvent.parse(b"[1, 2]")


def test_content_hash_ignores_the_stream_entry_but_not_the_content() -> None:
    ev = LedgerEvent.parse(orjson.dumps(worker_event()))
    a = ev.to_row(stream_id="1-0", now=NOW)
    b = ev.to_row(stream_id="2-0", now=NOW + timedelta(hours=1))
    assert a["event_hash"] == b["event_hash"]
    changed = LedgerEvent.parse(orjson.dumps(worker_event(cost_usd="0.5"))).to_row(
        stream_id="1-0", now=NOW
    )
    assert changed["event_hash"] != a["event_hash"]
    assert content_hash({"x": Decimal("1.10")}) != content_hash({"x": Decimal("1.1")})


def test_missing_cost_is_priced_by_the_writer() -> None:
    event = LedgerEvent.parse(orjson.dumps(worker_event(cost_usd=None, baseline_cost_usd=None)))
    row = event.to_row(
        stream_id=None,
        now=NOW,
        pricer=lambda version, model, usage: Decimal(usage.output_tokens) if model else Decimal(7),
    )
    assert row["cost_usd"] == Decimal(80)
    assert row["baseline_cost_usd"] == Decimal(7)


# -- parameters ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (None, None),
        ("", None),
        ("2024-11-15", datetime(2024, 11, 15, tzinfo=UTC)),
        ("2024-11-15T10:30:00", datetime(2024, 11, 15, 10, 30, tzinfo=UTC)),
        ("2024-11-15T10:30:00Z", datetime(2024, 11, 15, 10, 30, tzinfo=UTC)),
        ("2024-11-15T12:30:00+02:00", datetime(2024, 11, 15, 10, 30, tzinfo=UTC)),
        ("now", NOW),
        ("today", datetime(2024, 11, 15, tzinfo=UTC)),
        ("yesterday", datetime(2024, 11, 14, tzinfo=UTC)),
        ("90m", NOW - timedelta(minutes=90)),
        ("24h", NOW - timedelta(hours=24)),
        ("7d", NOW - timedelta(days=7)),
        ("2w", NOW - timedelta(days=14)),
    ],
)
def test_parse_time(text: str | None, expected: datetime | None) -> None:
    assert parse_time("since", text, NOW) == expected


@pytest.mark.parametrize("text", ["yesterdayish", "2024-13-01", "15/11/2024", "7 days", "-3d"])
def test_parse_time_rejects_with_the_parameter_and_value(text: str) -> None:
    with pytest.raises(LedgerQueryError, match=rf"^until: '{text}' is not a date or time"):
        parse_time("until", text, NOW)


@pytest.mark.parametrize(
    ("text", "dims"),
    [
        (None, ()),
        ("tier", ("tier",)),
        ("Tier, model", ("tier", "model")),
        ("day,provider,rule", ("day", "provider", "rule")),
        ("session", ("session",)),
    ],
)
def test_parse_group_by(text: str | None, dims: tuple[str, ...]) -> None:
    assert parse_group_by(text) == dims


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("colour", "unknown 'colour'"),
        ("tier,tier", "twice"),
        ("session,tier", "cannot be combined"),
        ("tier,", "unknown ''"),
    ],
)
def test_parse_group_by_rejects(text: str, message: str) -> None:
    with pytest.raises(LedgerQueryError, match=message):
        parse_group_by(text)


@pytest.mark.parametrize("text", ["0", "-1", "x", "100001"])
def test_parse_limit_rejects(text: str) -> None:
    with pytest.raises(LedgerQueryError, match=r"^limit: "):
        parse_limit(text)


def _t(day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(2024, 11, day, hour, minute, tzinfo=UTC)


@pytest.mark.parametrize(
    ("since", "until", "days", "edges"),
    [
        (None, None, (None, None), ()),
        (_t(10), _t(12), (date(2024, 11, 10), date(2024, 11, 12)), ()),
        (_t(10, 6), _t(12), (date(2024, 11, 11), date(2024, 11, 12)), ((_t(10, 6), _t(11)),)),
        (_t(10), _t(12, 9), (date(2024, 11, 10), date(2024, 11, 12)), ((_t(12), _t(12, 9)),)),
        (
            _t(10, 6),
            _t(13, 9),
            (date(2024, 11, 11), date(2024, 11, 13)),
            ((_t(10, 6), _t(11)), (_t(13), _t(13, 9))),
        ),
        (None, _t(12, 9), (None, date(2024, 11, 12)), ((_t(12), _t(12, 9)),)),
        (_t(10, 6), None, (date(2024, 11, 11), None), ((_t(10, 6), _t(11)),)),
    ],
)
def test_split_window_whole_days_and_edges(
    since: datetime | None,
    until: datetime | None,
    days: tuple[date | None, date | None],
    edges: tuple[tuple[datetime, datetime], ...],
) -> None:
    w = split_window(since, until)
    assert w.has_days
    assert (w.day_from, w.day_to) == days
    assert w.edges == edges


@pytest.mark.parametrize(
    ("since", "until"), [(_t(10, 6), _t(10, 9)), (_t(10, 6), _t(11, 5)), (_t(10, 23), _t(11))]
)
def test_split_window_within_partial_days_reads_only_turns(
    since: datetime, until: datetime
) -> None:
    w = split_window(since, until)
    assert not w.has_days or w.day_from == w.day_to
    covered = sum(((e or until) - (s or since)).total_seconds() for s, e in w.edges)
    assert covered == (until - since).total_seconds()


def test_split_window_rejects_an_empty_window() -> None:
    with pytest.raises(LedgerQueryError, match="is not before until"):
        split_window(_t(12), _t(10))


# -- roll-up arithmetic ----------------------------------------------------------------------


def test_histogram_percentiles_are_within_2_2_percent() -> None:
    values = [math.exp(4 + i / 997) * (1 + (i * 7919 % 13) / 100) for i in range(5000)]
    hist: dict[int, int] = {}
    for v in values:
        b = ttft_bucket(v)
        assert b is not None
        hist[b] = hist.get(b, 0) + 1
    ordered = sorted(values)
    for q in (0.5, 0.95):
        exact = ordered[math.ceil(q * len(ordered)) - 1]
        approx = hist_percentile(hist, q)
        assert approx is not None
        assert abs(approx - exact) / exact < 0.022


def test_percentiles_of_nothing_are_none() -> None:
    assert hist_percentile({}, 0.5) is None
    assert exact_percentile([], 0.5) is None
    assert ttft_bucket(None) is None
    assert ttft_bucket(0.2) == 0


def test_exact_percentile_matches_linear_interpolation() -> None:
    values = [12.0, 250.5, 90.0, 33.3, 180.0, 101.0]
    assert exact_percentile(values, 0.5) == round(statistics.median(values), 1)
    assert exact_percentile([5.0], 0.95) == 5.0


def _row(**over: object) -> dict[str, object]:
    row: dict[str, object] = {
        "status": "completed",
        "speculative": False,
        "input_tokens": 100,
        "output_tokens": 10,
        "cached_input_tokens": 0,
        "reasoning_tokens": 0,
        "cost_usd": Decimal("0.0000123"),
        "baseline_cost_usd": Decimal("0.00035"),
        "ttft_bucket": 130,
    }
    row.update(over)
    return row


def test_agg_of_turns_adds_and_subtracts_back_to_zero() -> None:
    a = Agg.of_turn(_row())
    b = Agg.of_turn(_row(status="cancelled", speculative=True, ttft_bucket=None))
    total = Agg()
    total.add(a)
    total.add(b)
    assert total.turns == 2 and total.cancelled == 1 and total.speculative == 1
    assert total.cost_usd == Decimal("0.0000246")
    assert total.cancelled_speculative_cost_usd == Decimal("0.0000123")
    assert dict(total.ttft_hist) == {130: 1}
    total.add(a, -1)
    total.add(b, -1)
    assert total.is_zero()
    assert total.columns()["ttft_hist"] == {}


def test_a_turn_without_baseline_claims_no_savings() -> None:
    agg = Agg.of_turn(_row(baseline_cost_usd=None))
    assert agg.baseline_cost_usd == agg.cost_usd


def test_agg_columns_round_trip() -> None:
    agg = Agg.of_turn(_row())
    assert Agg.from_columns(agg.columns()) == agg


def test_the_command_line_and_the_writer_agree_on_the_batch_size() -> None:
    from dispatcher.ledger import cli, writer

    assert cli.DEFAULT_BATCH == writer.DEFAULT_BATCH
