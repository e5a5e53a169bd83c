"""The API-token cache on the real PostgreSQL: a token found valid is trusted for
CHANGEGATE_AUTH_TOKEN_CACHE_SECONDS without a lookup, so a revoked token stops working within that
time at most (at once with 0); never past the token's own expiry; a refused token is never kept.
The cache's clock is the test's, so no test waits."""

from __future__ import annotations

from datetime import timedelta

import asyncpg
import pytest
from changegate.core.auth import AuthSettings, Role
from changegate.core.auth.dependencies import Authenticator
from changegate.core.auth.tokens import create_token, revoke_token
from changegate.core.db import migrate


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def db(pool: asyncpg.Pool) -> asyncpg.Pool:
    await migrate(pool, "core", "changegate.core.migrations")
    return pool


def authenticator(pool: asyncpg.Pool, clock: Clock, seconds: float) -> Authenticator:
    settings = AuthSettings(auth_api_tokens=True, auth_token_cache_seconds=seconds)
    return Authenticator(settings, pool, clock=clock)


async def lookups(pool: asyncpg.Pool, token_id: str) -> object:
    return await pool.fetchval("SELECT last_used_at FROM changegate_api_tokens WHERE id = $1", token_id)


async def test_a_revoked_token_stops_working_within_the_cache_time(db: asyncpg.Pool) -> None:
    clock = Clock()
    auth = authenticator(db, clock, 5)
    token_id, token = await create_token(db, "bot@example.com", Role.REVIEWER, created_by="test")
    principal = await auth.authenticate(token)
    assert principal is not None
    assert principal.subject == "bot@example.com"
    assert await revoke_token(db, token_id)
    # Within the cache time the process still trusts what it checked...
    clock.now += 4.9
    assert await auth.authenticate(token) == principal
    # ...and not a moment past it: the lookup finds the revocation.
    clock.now += 0.2
    assert await auth.authenticate(token) is None
    assert await auth.authenticate(token) is None  # and a refusal is not kept as a valid entry


async def test_without_a_cache_a_revocation_takes_effect_at_once(db: asyncpg.Pool) -> None:
    clock = Clock()
    auth = authenticator(db, clock, 0)
    token_id, token = await create_token(db, "bot@example.com", Role.VIEWER, created_by="test")
    assert await auth.authenticate(token) is not None
    assert await revoke_token(db, token_id)
    assert await auth.authenticate(token) is None


async def test_a_cached_token_is_never_trusted_past_its_expiry(db: asyncpg.Pool) -> None:
    clock = Clock()
    auth = authenticator(db, clock, 60)
    token_id, token = await create_token(
        db, "short@example.com", Role.VIEWER, created_by="test", expires_in=timedelta(hours=1)
    )
    await db.execute(
        "UPDATE changegate_api_tokens SET expires_at = now() + interval '2 seconds' WHERE id = $1", token_id
    )
    assert await auth.authenticate(token) is not None
    clock.now += 1
    assert await auth.authenticate(token) is not None  # cached, within its expiry
    clock.now += 1.5  # past the token's expiry, well within the cache time: looked up again
    await db.execute(
        "UPDATE changegate_api_tokens SET expires_at = now() - interval '1 second' WHERE id = $1", token_id
    )
    assert await auth.authenticate(token) is None


async def test_a_refused_token_is_looked_up_every_time(db: asyncpg.Pool) -> None:
    clock = Clock()
    auth = authenticator(db, clock, 5)
    token_id, token = await create_token(db, "bot@example.com", Role.VIEWER, created_by="test")
    wrong = token[:-5] + ("AAAAA" if not token.endswith("AAAAA") else "BBBBB")
    assert await auth.authenticate(wrong) is None
    assert await auth.authenticate(token) is not None  # the right secret of the same id still works
    assert await lookups(db, token_id) is not None  # a real lookup recorded its use
    assert await auth.authenticate(wrong) is None  # the valid entry does not vouch for another secret
