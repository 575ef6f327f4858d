"""Serving the simulator: ``run`` for the command line, ``running_sim`` for tests."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

from dispatcher.serving import serving_in_thread, uvicorn_config
from dispatcher.sim.app import create_sim_app
from dispatcher.sim.state import SimDefaults


def _config(
    defaults: SimDefaults, host: str, port: int, log_level: str, **extra: Any
) -> uvicorn.Config:
    return uvicorn_config(create_sim_app(defaults), host, port, log_level, lifespan="off",
                          **extra)


def run(host: str, port: int, defaults: SimDefaults, log_level: str = "warning") -> None:
    """Serve the simulator on ``host:port`` until interrupted (Ctrl+C or SIGTERM)."""
    uvicorn.Server(_config(defaults, host, port, log_level, timeout_graceful_shutdown=5)).run()


@contextmanager
def running_sim(
    defaults: SimDefaults | None = None,
    port: int = 0,
    host: str = "127.0.0.1",
    log_level: str = "warning",
) -> Iterator[str]:
    """Run the simulator in a background thread; yield its base URL ("http://host:port").

    ``port=0`` picks a free port. The server stops when the block exits; requests still
    open then are cancelled after a second.
    """
    app = create_sim_app(defaults or SimDefaults())
    with serving_in_thread(app, name="dispatcher-sim", host=host, port=port,
                           log_level=log_level, lifespan="off", graceful_s=1) as url:
        yield url
