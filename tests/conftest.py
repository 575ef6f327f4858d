"""Fixtures shared by every test suite.

The provider simulator runs once per session in a background thread (a real uvicorn
server on a free loopback port); ``sim`` resets it before the test that asks for it.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from dispatcher.sim.server import running_sim
from dispatcher.sim.state import SimDefaults

#: Fast simulator defaults: 5 ms to the first token, 1 ms between tokens, 12 tokens.
SIM_TEST_DEFAULTS = SimDefaults(ttft_ms=5, itl_ms=1, tokens=12)


@pytest.fixture(scope="session")
def sim_url() -> Iterator[str]:
    """Base URL ("http://127.0.0.1:PORT") of the session's simulator; its state is shared."""
    with running_sim(SIM_TEST_DEFAULTS) as url:
        yield url


@pytest.fixture
def sim(sim_url: str) -> str:
    """Base URL of the simulator, reset (no faults, default latency, zero stats) first."""
    httpx.post(f"{sim_url}/admin/reset", timeout=5).raise_for_status()
    return sim_url
