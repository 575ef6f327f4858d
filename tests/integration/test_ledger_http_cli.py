"""The ledger's HTTP router (mounted on a bare FastAPI app) and its command line.

The router is mounted the way the ingress mounts it: with a session factory and the app's
own tenant dependency (here: an ``X-Tenant`` header). Bad parameters get 422 with
``{"error": {"code", "message"}}``; another tenant's data is invisible.
"""

from __future__ import annotations

import csv
import io
import time
import tracemalloc
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any

import orjson
import pytest
from fastapi import FastAPI, Header, HTTPException
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from dispatcher.ledger import queries
from dispatcher.ledger.bench import TurnFactory
from dispatcher.ledger.cli import app as ledger_cli
from dispatcher.ledger.db import make_engine, session_factory
from dispatcher.ledger.events import LedgerEvent
from dispatcher.ledger.http import create_ledger_router
from dispatcher.ledger.models import Turn
from dispatcher.ledger.repository import register_policy, write_turns
from dispatcher.policy import Policy, load_policy
from dispatcher.settings import DEFAULT_POLICY_PATH

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def policy() -> Policy:
    return load_policy(DEFAULT_POLICY_PATH)


def fill(
    url: str, policy: Policy, n: int = 120, seed: int = 11, **factory: Any
) -> list[dict[str, Any]]:
    """``n`` turns of three tenants written straight through the repository."""
    events = list(TurnFactory(policy, seed=seed, total=n, **factory).events(n))
    now = datetime.now(UTC)
    engine = make_engine(url, writer=True)
    try:
        for start in range(0, n, 5000):
            chunk = events[start : start + 5000]
            rows = [LedgerEvent.model_validate(e).to_row(stream_id=None, now=now) for e in chunk]
            with Session(engine) as s, s.begin():
                register_policy(s, policy)
                write_turns(s, rows)
    finally:
        engine.dispose()
    return events


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    eng = make_engine(db_url)
    yield eng
    eng.dispose()


def caller(x_tenant: Annotated[str | None, Header()] = None) -> str:
    if not x_tenant:
        raise HTTPException(401, "no tenant")
    return x_tenant


@pytest.fixture
def client(engine: Engine) -> Iterator[TestClient]:
    app = FastAPI()
    app.include_router(create_ledger_router(session_factory(engine), caller))
    with TestClient(app) as c:
        yield c


T1 = {"X-Tenant": "tenant-1"}


# -- HTTP ------------------------------------------------------------------------------------


def test_get_turn_is_the_ledger_row_of_the_callers_own_turn(
    client: TestClient, db_url: str, policy: Policy
) -> None:
    events = fill(db_url, policy)
    mine = next(e for e in events if e["tenant"] == "tenant-1")
    theirs = next(e for e in events if e["tenant"] == "tenant-2")
    r = client.get(f"/v1/turns/{mine['turn_id']}", headers=T1)
    assert r.status_code == 200
    body = r.json()
    assert body["turn_id"] == mine["turn_id"]
    assert body["cost_usd"] == mine["cost_usd"]  # exact decimal text
    assert body["attempts"] == mine["attempts"]
    assert body["status"] == mine["status"]
    # another tenant's turn is exactly as invisible as a missing one
    for turn_id in (theirs["turn_id"], "no-such-turn"):
        r = client.get(f"/v1/turns/{turn_id}", headers=T1)
        assert r.status_code == 404
        assert r.json()["error"]["code"] == "not_found"
    assert client.get(f"/v1/turns/{mine['turn_id']}").status_code == 401


def test_summary_groups_and_totals_for_the_callers_tenant(
    client: TestClient, db_url: str, policy: Policy
) -> None:
    events = fill(db_url, policy)
    mine = [e for e in events if e["tenant"] == "tenant-1"]
    r = client.get("/v1/ledger/summary", params={"group_by": "tier"}, headers=T1)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["total"]["turns"] == len(mine)
    assert Decimal(body["total"]["cost_usd"]) == sum(Decimal(e["cost_usd"]) for e in mine)
    assert sum(g["turns"] for g in body["groups"]) == len(mine)
    for g in body["groups"]:
        assert set(g) >= {
            "group",
            "turns",
            "input_tokens",
            "output_tokens",
            "cost_usd",
            "baseline_cost_usd",
            "savings_usd",
            "savings_pct",
            "ttft_p50_ms",
            "ttft_p95_ms",
        }
        assert Decimal(g["savings_usd"]) == Decimal(g["baseline_cost_usd"]) - Decimal(g["cost_usd"])
    r = client.get(
        "/v1/ledger/summary",
        params={"group_by": "day,model", "since": "30d", "until": "now"},
        headers=T1,
    )
    assert r.status_code == 200 and r.json()["total"]["turns"] == len(mine)


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"group_by": "colour"}, "group_by"),
        ({"group_by": "tier,session"}, "group_by"),
        ({"since": "last tuesday"}, "since"),
        ({"until": "2024-02-30"}, "until"),
        ({"since": "2024-11-15", "until": "2024-11-14"}, "since"),
        ({"limit": "lots"}, "limit"),
    ],
)
def test_bad_summary_parameters_get_422_with_a_message(
    client: TestClient, params: dict[str, str], param: str
) -> None:
    r = client.get("/v1/ledger/summary", params=params, headers=T1)
    assert r.status_code == 422
    error = r.json()["error"]
    assert error["code"] == "invalid_parameter"
    assert error["message"].startswith(f"{param}: ")


def test_session_endpoint_is_the_per_call_rollup(
    client: TestClient, db_url: str, policy: Policy
) -> None:
    events = fill(db_url, policy)
    call = events[8]["session_id"]
    turns = [e for e in events if e["session_id"] == call]
    tenant = turns[0]["tenant"]
    r = client.get(f"/v1/ledger/sessions/{call}", headers={"X-Tenant": tenant})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["turns"] == len([t for t in turns if t["tenant"] == tenant])
    assert {
        "cost_usd",
        "cancelled_speculative_cost_usd",
        "cost_per_minute_usd",
        "ttft_p50_ms",
        "ttft_p95_ms",
        "tiers",
        "turn_list",
    } <= set(body)
    other = "tenant-0" if tenant != "tenant-0" else "tenant-2"
    assert client.get(f"/v1/ledger/sessions/{call}", headers={"X-Tenant": other}).status_code == 404


def test_a_database_that_is_down_is_a_503_not_a_crash(policy: Policy) -> None:
    engine = make_engine("postgresql+psycopg://postgres@127.0.0.1:1/nowhere")
    app = FastAPI()
    app.include_router(create_ledger_router(engine, caller))
    with TestClient(app) as c:
        r = c.get("/v1/ledger/summary", headers=T1)
        assert r.status_code == 503
        assert r.json()["error"]["code"] == "ledger_unavailable"
        # a bad parameter is still the caller's error
        assert c.get("/v1/ledger/summary?group_by=x", headers=T1).status_code == 422
    engine.dispose()


# -- command line ----------------------------------------------------------------------------


def run(url: str, *args: str) -> Any:
    result = CliRunner().invoke(ledger_cli, list(args), env={"DISPATCHER_DATABASE_URL": url})
    return result


def test_cli_summary_json_totals_equal_the_rows(
    db_url: str, engine: Engine, policy: Policy
) -> None:
    fill(db_url, policy)
    result = run(db_url, "summary", "--group-by", "provider", "--json")
    assert result.exit_code == 0, result.output
    body = orjson.loads(result.stdout)
    with Session(engine) as s:
        rows = list(s.scalars(select(Turn)))
    assert body["total"]["turns"] == len(rows)
    assert Decimal(body["total"]["cost_usd"]) == sum((t.cost_usd for t in rows), Decimal(0))
    table = run(db_url, "summary", "--group-by", "tier", "--since", "30d")
    assert table.exit_code == 0 and "total" in table.stdout and "p95 ttft" in table.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("summary", "--group-by", "colour"), "--group-by: unknown 'colour'"),
        (("summary", "--since", "yesterdayish"), "--since: 'yesterdayish' is not a date"),
        (("export", "--format", "xml"), "--format: 'xml' is not csv or jsonl"),
    ],
)
def test_cli_bad_arguments_exit_2_with_one_sentence(
    ledger_sqlite: str, args: tuple[str, ...], message: str
) -> None:
    result = run(ledger_sqlite, *args)
    assert result.exit_code == 2
    assert message in result.stderr


def test_cli_turns_session_and_export(db_url: str, policy: Policy, tmp_path: Any) -> None:
    events = fill(db_url, policy)
    call = events[16]["session_id"]
    of_call = [e for e in events if e["session_id"] == call]
    result = run(db_url, "turns", "--session", call, "--json")
    assert result.exit_code == 0, result.output
    lines = [orjson.loads(x) for x in result.stdout.splitlines()]
    assert [x["turn_id"] for x in lines] == [e["turn_id"] for e in of_call]
    assert run(db_url, "turns", "--limit", "5").exit_code == 0
    report = run(db_url, "session", call)
    assert report.exit_code == 0 and "cost per minute" in report.stdout
    assert run(db_url, "session", "no-such-call").exit_code == 1
    # export: every row, exact money, both formats
    jsonl = run(db_url, "export", "--format", "jsonl")
    assert jsonl.exit_code == 0, jsonl.output
    exported = [orjson.loads(x) for x in jsonl.stdout.splitlines()]
    assert len(exported) == len(events)
    by_id = {e["turn_id"]: e for e in events}
    assert all(x["cost_usd"] == by_id[x["turn_id"]]["cost_usd"] for x in exported)
    out = tmp_path / "turns.csv"
    assert run(db_url, "export", "--format", "csv", "--since", "60d", "-o", str(out)).exit_code == 0
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert len(rows) == len(events)
    assert orjson.loads(rows[0]["attempts"]) == by_id[rows[0]["turn_id"]]["attempts"]


def test_cli_without_tables_or_database_exits_3(tmp_path: Any) -> None:
    result = run(f"sqlite:///{tmp_path / 'blank.db'}", "summary")
    assert result.exit_code == 3
    assert "dispatcher migrate" in result.stderr
    result = run("postgresql+psycopg://postgres@127.0.0.1:1/nowhere", "summary")
    assert result.exit_code == 3
    assert "cannot reach the ledger database" in result.stderr


def test_export_streams_in_flat_memory(ledger_pg: str, policy: Policy) -> None:
    # 30,000 rows are far more than the export holds at once (one batch of 2,000)
    fill(ledger_pg, policy, n=30_000, seed=12)
    engine = make_engine(ledger_pg)
    sink = io.StringIO()
    try:
        with Session(engine) as s:
            tracemalloc.start()
            count = 0
            t0 = time.perf_counter()
            for row in queries.iter_turns(s, tenant=None):
                sink.write(orjson.dumps(row).decode())
                sink.seek(0)
                sink.truncate()
                count += 1
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
    finally:
        engine.dispose()
    assert count == 30_000
    # buffered, 30,000 rows of ~45 columns would take well over 100 MB as Python objects
    assert peak < 25 * 1024 * 1024, (
        f"peak {peak / 1e6:.1f} MB after {time.perf_counter() - t0:.1f}s"
    )
