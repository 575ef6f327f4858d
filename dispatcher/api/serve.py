"""Serving the ingress: ``run`` for the command line, ``running_ingress`` for tests."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn

from dispatcher.api.app import create_app
from dispatcher.api.runtime import Tuning
from dispatcher.serving import serving_in_thread, uvicorn_config
from dispatcher.settings import Settings


def run(settings: Settings, host: str = "0.0.0.0", port: int = 8000,
        log_level: str = "info") -> None:
    """Serve the ingress until interrupted (one process; scale with more processes)."""
    uvicorn.Server(
        uvicorn_config(create_app(settings), host, port, log_level, timeout_graceful_shutdown=10)
    ).run()


@contextmanager
def running_ingress(
    settings: Settings,
    *,
    tuning: Tuning | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    log_level: str = "warning",
) -> Iterator[str]:
    """Run the ingress in a background thread; yield its base URL ("http://host:port")."""
    with serving_in_thread(create_app(settings, tuning=tuning), name="dispatcher-ingress",
                           host=host, port=port, log_level=log_level, graceful_s=2) as url:
        yield url
