"""API keys: ``Authorization: Bearer <key>`` names a tenant.

Keys are stored hashed: the Redis hash :data:`KEYS_HASH` maps ``sha256(key)`` (hex) to the
tenant, so a dump of Redis reveals no usable key. A key is shown once, when it is created;
afterwards it is known by its id, the first :data:`KEY_ID_CHARS` hex digits of its hash.

The functions take a ``redis.asyncio.Redis`` and are coroutines; the command line runs
them with ``asyncio.run``.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar, cast

from redis.asyncio import Redis

from dispatcher import resp
from dispatcher.streaming import PREFIX

T = TypeVar("T")

KEYS_HASH = f"{PREFIX}:apikeys"
KEY_PREFIX = "dk_"
KEY_ID_CHARS = 12
_TENANT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}$")


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """A stored key as listing shows it: never the key itself."""

    key_id: str
    tenant: str


def hash_key(key: str) -> str:
    """The stored form of a key: its sha256, hex."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def check_tenant(tenant: str) -> str:
    """Return ``tenant`` if it is a usable tenant name; raise ``ValueError`` naming it if not."""
    if not _TENANT.match(tenant):
        raise ValueError(
            f"tenant {tenant!r} must be 1-128 characters of letters, digits and _ . : @ -, "
            "starting with a letter or digit"
        )
    return tenant


async def create_key(redis: Redis, tenant: str) -> str:
    """Create a key for ``tenant``, store its hash, and return the key (shown only now)."""
    check_tenant(tenant)
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    await _aw(redis.hset(KEYS_HASH, hash_key(key), tenant))
    return key


async def list_keys(redis: Redis, tenant: str | None = None) -> list[KeyInfo]:
    """Every stored key (of ``tenant`` when given), by id, sorted by tenant then id."""
    stored = await _aw(redis.hgetall(KEYS_HASH))
    infos = [
        KeyInfo(_text(h)[:KEY_ID_CHARS], _text(t))
        for h, t in stored.items()
        if tenant is None or _text(t) == tenant
    ]
    return sorted(infos, key=lambda i: (i.tenant, i.key_id))


async def revoke_key(redis: Redis, key_or_id: str) -> bool:
    """Revoke a key given whole or by its id (at least 8 hex digits of its hash).

    Returns whether a key was removed. An id prefix that matches several keys removes
    none and raises ``ValueError``.
    """
    if key_or_id.startswith(KEY_PREFIX):
        return bool(await _aw(redis.hdel(KEYS_HASH, hash_key(key_or_id))))
    prefix = key_or_id.lower()
    if len(prefix) < 8 or not re.fullmatch(r"[0-9a-f]+", prefix):
        raise ValueError(f"key id {key_or_id!r} must be at least 8 hex digits, or a whole key")
    matches = [_text(h) for h in await _aw(redis.hkeys(KEYS_HASH)) if _text(h).startswith(prefix)]
    if len(matches) > 1:
        raise ValueError(f"key id {key_or_id!r} matches {len(matches)} keys; give more digits")
    if not matches:
        return False
    return bool(await _aw(redis.hdel(KEYS_HASH, matches[0])))


async def tenant_for(redis: resp.Pipeline, key: str) -> str | None:
    """The tenant of ``key``, or None when the key is unknown or revoked (the ingress's
    per-request lookup, on its pipelined connection)."""
    if not key:
        return None
    tenant = await redis.call("HGET", KEYS_HASH, hash_key(key))
    return None if tenant is None else _text(tenant)


def _aw(result: Awaitable[T] | T) -> Awaitable[T]:
    # redis-py's stubs type every command for both clients: Awaitable[T] | T.
    return cast(Awaitable[T], result)


def _text(value: bytes | str) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


def with_redis(redis_url: str, fn: Callable[[Redis], Awaitable[T]]) -> T:
    """Run ``fn(redis)`` on a fresh event loop and client (for commands, not the app)."""

    async def go() -> T:
        client = Redis.from_url(redis_url)
        try:
            return await fn(client)
        finally:
            await client.aclose()

    return asyncio.run(go())
