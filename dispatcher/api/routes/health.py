"""Probes and metrics: ``/healthz`` (process up), ``/readyz`` (Redis reachable), ``/metrics``."""

from __future__ import annotations

import asyncio

import orjson
from fastapi import APIRouter
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.responses import Response

from dispatcher.api.deps import RuntimeDep
from dispatcher.api.errors import error_response

router = APIRouter()

READY_TIMEOUT_S = 1.0


@router.get("/healthz")
async def healthz() -> Response:
    return Response(b'{"status":"ok"}', media_type="application/json")


@router.get("/readyz")
async def readyz(rt: RuntimeDep) -> Response:
    try:
        async with asyncio.timeout(READY_TIMEOUT_S):
            await rt.redis.ping()
    except Exception as exc:
        return error_response(503, "redis_unreachable", f"Redis is not reachable: {exc}")
    body = {
        "status": "ready",
        "redis": "ok",
        "policy_version": rt.policies.current.policy.version,
        "policy_error": rt.policies.last_error,
        "relay_channels": rt.hub.channels,
    }
    return Response(orjson.dumps(body), media_type="application/json")


@router.get("/metrics")
async def metrics(rt: RuntimeDep) -> Response:
    return Response(rt.metrics.render(), media_type=CONTENT_TYPE_LATEST)
