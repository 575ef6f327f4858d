"""The ledger's HTTP endpoints, as a router the ingress mounts (DESIGN §4).

::

    from dispatcher.ledger.http import create_ledger_router
    app.include_router(create_ledger_router(sessions, current_tenant))

``sessions`` is a ``sessionmaker`` (or any zero-argument callable returning a
``Session``, or an ``Engine``); ``current_tenant`` is the app's FastAPI dependency that
authenticates the caller and returns its tenant (a ``str``, or an object with a
``tenant`` attribute). Every query is restricted to that tenant: another tenant's turn is
a 404, exactly like a missing one.

- ``GET /v1/turns/{turn_id}``: the ledger row of one turn;
- ``GET /v1/ledger/summary?since&until&group_by&limit``: turns, tokens, cost, baseline
  cost, savings (USD and %), p50/p95 TTFT per group and in total;
- ``GET /v1/ledger/sessions/{session_id}``: the per-call roll-up.

Bad parameters get 422 ``{"error": {"code": "invalid_parameter", "message": ...}}``, the
message naming the parameter and the value; a database that cannot be reached gets 503.
The handlers are plain functions (FastAPI runs them in its thread pool): SQLAlchemy
sessions here are synchronous.
"""

# No ``from __future__ import annotations`` here: FastAPI reads the handlers' annotations,
# and the tenant dependency in them is a local of the factory, not a module global.
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse
from sqlalchemy import Engine
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session

from dispatcher.ledger import queries
from dispatcher.ledger.db import session_factory
from dispatcher.ledger.params import (
    GROUP_BY_CHOICES,
    LedgerQueryError,
    parse_group_by,
    parse_limit,
    parse_time,
)

log = logging.getLogger(__name__)

SessionSource = Callable[[], Session] | Engine


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


def _tenant_of(who: Any) -> str:
    if isinstance(who, str):
        return who
    tenant = getattr(who, "tenant", None)
    if isinstance(tenant, str):
        return tenant
    raise TypeError(f"the tenant dependency returned {type(who).__name__}, not a tenant name")


def create_ledger_router(
    sessions: SessionSource,
    tenant: Callable[..., Any],
    *,
    prefix: str = "/v1",
) -> APIRouter:
    """A router with the ledger's endpoints (see the module docstring)."""
    make_session: Callable[[], Session] = (
        session_factory(sessions) if isinstance(sessions, Engine) else sessions
    )
    router = APIRouter(prefix=prefix, tags=["ledger"])
    Caller = Annotated[Any, Depends(tenant)]

    @contextmanager
    def reading() -> Iterator[Session]:
        with make_session() as session:
            yield session

    def guarded(call: Callable[[Session], JSONResponse]) -> JSONResponse:
        try:
            with reading() as session:
                return call(session)
        except LedgerQueryError as exc:
            return _error(422, "invalid_parameter", str(exc))
        except (OperationalError, InterfaceError) as exc:
            log.error("ledger unreachable: %s", exc.orig or exc)
            return _error(503, "ledger_unavailable", "the ledger database cannot be reached")

    @router.get("/turns/{turn_id}", summary="The ledger record of one turn")
    def get_turn(turn_id: str, who: Caller) -> JSONResponse:
        owner = _tenant_of(who)

        def run(session: Session) -> JSONResponse:
            turn = queries.get_turn(session, turn_id=turn_id, tenant=owner)
            if turn is None:
                return _error(404, "not_found", f"turn {turn_id!r} is not in the ledger")
            return JSONResponse(queries.turn_dict(turn))

        return guarded(run)

    @router.get("/ledger/summary", summary="Cost and latency per group")
    def get_summary(
        who: Caller,
        since: Annotated[
            str | None, Query(description="inclusive: 2024-11-15, ISO time, 7d")
        ] = None,
        until: Annotated[str | None, Query(description="exclusive, same forms as since")] = None,
        group_by: Annotated[
            str | None, Query(description=f"comma-separated: {', '.join(GROUP_BY_CHOICES)}")
        ] = None,
        limit: Annotated[str | None, Query(description="at most this many groups")] = None,
    ) -> JSONResponse:
        owner = _tenant_of(who)

        def run(session: Session) -> JSONResponse:
            now = datetime.now(UTC)
            result = queries.summary(
                session,
                tenant=owner,
                since=parse_time("since", since, now),
                until=parse_time("until", until, now),
                group_by=parse_group_by(group_by),
                limit=parse_limit(limit),
            )
            return JSONResponse(result.as_dict())

        try:
            # parse first: a bad parameter is a 422 even when the database is down
            now = datetime.now(UTC)
            parse_time("since", since, now)
            parse_time("until", until, now)
            parse_group_by(group_by)
            parse_limit(limit)
        except LedgerQueryError as exc:
            return _error(422, "invalid_parameter", str(exc))
        return guarded(run)

    @router.get("/ledger/sessions/{session_id}", summary="The per-call roll-up of a session")
    def get_session(session_id: str, who: Caller) -> JSONResponse:
        owner = _tenant_of(who)

        def run(session: Session) -> JSONResponse:
            report = queries.session_report(session, session_id=session_id, tenant=owner)
            if report is None:
                return _error(
                    404, "not_found", f"session {session_id!r} has no turns in the ledger"
                )
            return JSONResponse(report)

        return guarded(run)

    return router
