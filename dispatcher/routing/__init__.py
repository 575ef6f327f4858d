"""Routing: pure functions of (turn, history, state, session snapshot, policy) -> Decision.

Nothing in this package does I/O or imports httpx, redis, sqlalchemy or celery.
"""

from dispatcher.routing.router import Router

__all__ = ["Router"]
