"""The ingress application: ``uvicorn --factory dispatcher.api.app:create_app``.

:func:`create_app` declares everything; the lifespan opens what the process holds (the
Redis pool, the relay hub's pub/sub connection, the Celery producer, the policy), hands
it to requests as ``request.state.runtime``, and closes it on shutdown. SIGHUP reloads the
policy; a bad file is logged and the last good policy stays in force.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator

from fastapi import FastAPI
from redis.asyncio import Redis
from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import Response

from dispatcher import gctune, resp
from dispatcher.api import deps, errors
from dispatcher.api.limits import BodyLimit
from dispatcher.api.metrics import Metrics
from dispatcher.api.relay import RelayHub
from dispatcher.api.routes import chat, health, models, turns
from dispatcher.api.runtime import Enqueuer, PolicyHolder, Runtime, Tuning
from dispatcher.ledger.db import make_engine, session_factory
from dispatcher.ledger.http import create_ledger_router
from dispatcher.settings import Settings, get_settings

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, *, tuning: Tuning | None = None) -> FastAPI:
    """Build the ingress app; settings are read now (at process start) when not given."""
    settings = settings or get_settings()
    tuning = tuning or Tuning()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Runtime]]:
        metrics = Metrics()
        policies = PolicyHolder(settings.policy, metrics)  # a bad policy stops the start
        redis = Redis.from_url(settings.redis_url, socket_keepalive=True,
                               health_check_interval=30)
        hub = RelayHub(settings.redis_url)
        enqueuer = Enqueuer()
        rt = Runtime(settings, redis, hub, enqueuer, policies, metrics, tuning)
        await hub.start()
        reload_on_sighup = _watch_sighup(policies)
        gctune.tune()
        log.info("ingress ready: policy %s version %s", settings.policy,
                 policies.current.policy.version)
        try:
            yield {"runtime": rt}
        finally:
            if reload_on_sighup:
                _unwatch_sighup()
            await rt.drain()
            await hub.stop()
            await rt.fast.aclose()
            await redis.aclose()

    app = FastAPI(
        title="dispatcher",
        summary="Routes each voice-bot turn to the right LLM tier and streams the answer.",
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
    )
    errors.install(app)

    for redis_error in (RedisError, resp.Unavailable, resp.RespError):
        app.add_exception_handler(redis_error, _redis_error)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    for module in (turns, chat, models, health):
        app.include_router(module.router)
    # The ledger's read endpoints; the engine connects lazily, on the first query.
    ledger_engine = make_engine(settings.database_url)
    app.include_router(create_ledger_router(session_factory(ledger_engine), deps.tenant))
    return app


async def _redis_error(request: Request, exc: Exception) -> Response:
    return errors.error_response(
        503, "redis_unavailable", f"Redis is not reachable: {type(exc).__name__}",
        openai=errors.is_openai(request),
    )


def _watch_sighup(policies: PolicyHolder) -> bool:
    try:
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, policies.reload)
    except (RuntimeError, ValueError, NotImplementedError, AttributeError):
        # Not the main thread (an app served in a test thread) or no SIGHUP (Windows).
        log.debug("SIGHUP policy reload not available in this process")
        return False
    return True


def _unwatch_sighup() -> None:
    with contextlib.suppress(RuntimeError, ValueError):
        asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
