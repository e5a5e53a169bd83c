"""FastAPI dependencies: the principal of a request's bearer token (an OIDC JWT or an API token),
role checks, and a per-identity rate limit. Answers never tell whether a token exists: a missing,
malformed, unknown, revoked or expired token is the same 401."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Awaitable, Callable
from typing import Annotated

import asyncpg
import httpx
from changegate.core.auth.oidc import InvalidTokenError, OidcVerifier
from changegate.core.auth.principal import Principal, Role
from changegate.core.auth.settings import AuthSettings
from changegate.core.auth.tokens import lookup_token
from changegate.core.logging import get_logger
from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from limits import RateLimitItem, parse
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import MovingWindowRateLimiter
from prometheus_client import Counter

log = get_logger(__name__)
REALM = 'Bearer realm="changegate"'
AUTH_FAILURES = Counter(
    "changegate_auth_failures_total", "Requests refused by authentication or authorisation", ["reason"]
)
RATE_LIMITED = Counter("changegate_rate_limited_total", "Requests refused by a rate limit", ["limit"])

_bearer = HTTPBearer(auto_error=False, description="an OIDC access token (JWT) or a changegate API token")


class TokenCache:
    """API tokens recently found valid, each kept ``seconds`` (never past its expiry): a revoked
    token stops working within ``seconds``. Only valid tokens are kept, by their SHA-256; an
    unknown or refused token is looked up every time."""

    def __init__(
        self, seconds: float, clock: Callable[[], float] = time.monotonic, size: int = 10_000
    ) -> None:
        self.seconds, self.clock, self.size = seconds, clock, size
        self.entries: dict[bytes, tuple[Principal, float]] = {}

    def get(self, token: str) -> Principal | None:
        key = hashlib.sha256(token.encode()).digest()
        entry = self.entries.get(key)
        if entry is None:
            return None
        if entry[1] <= self.clock():
            del self.entries[key]
            return None
        return entry[0]

    def put(self, token: str, principal: Principal, seconds_left: float | None) -> None:
        if self.seconds <= 0:
            return
        now = self.clock()
        if len(self.entries) >= self.size:  # full: drop what expired, else everything (rare)
            self.entries = {k: v for k, v in self.entries.items() if v[1] > now}
            if len(self.entries) >= self.size:
                self.entries.clear()
        keep = self.seconds if seconds_left is None else min(self.seconds, seconds_left)
        self.entries[hashlib.sha256(token.encode()).digest()] = (principal, now + keep)


class Authenticator:
    """Turns a bearer token into a principal, by whichever method is configured."""

    def __init__(
        self,
        settings: AuthSettings,
        pool: asyncpg.Pool | None,
        client: httpx.AsyncClient | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.pool = pool if settings.auth_api_tokens else None
        self.oidc = OidcVerifier(settings, client) if settings.auth_oidc_issuer else None
        self.tokens = TokenCache(settings.auth_token_cache_seconds, clock)

    async def authenticate(self, token: str) -> Principal | None:
        if self.oidc is not None and token.count(".") == 2:
            try:
                return await self.oidc.principal(token)
            except InvalidTokenError as exc:
                log.info("JWT refused", reason=str(exc))
                return None
        if self.pool is not None:
            cached = self.tokens.get(token)
            if cached is not None:
                return cached
            found = await lookup_token(self.pool, token)
            if found is None:
                return None
            self.tokens.put(token, *found)
            return found[0]
        return None


async def authenticated(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Principal:
    if credentials is None:
        AUTH_FAILURES.labels(reason="missing").inc()
        raise HTTPException(401, "send 'Authorization: Bearer <token>'", headers={"WWW-Authenticate": REALM})
    authenticator: Authenticator = request.app.state.authenticator
    principal = await authenticator.authenticate(credentials.credentials)
    if principal is None:
        AUTH_FAILURES.labels(reason="invalid").inc()
        raise HTTPException(
            401, "invalid or expired token", headers={"WWW-Authenticate": f'{REALM}, error="invalid_token"'}
        )
    return principal


def require(role: Role) -> Callable[[Principal], Awaitable[Principal]]:
    """A dependency: the principal, if some grant of theirs includes ``role`` (in any scope)."""

    async def check(principal: Annotated[Principal, Depends(authenticated)]) -> Principal:
        if not principal.may(role):
            AUTH_FAILURES.labels(reason="forbidden").inc()
            raise HTTPException(403, f"this needs the {role.value} role")
        return principal

    return check


def require_unscoped(role: Role) -> Callable[[Principal], Awaitable[Principal]]:
    """A dependency for what no queue or kind scope can narrow (the audit log is not split by
    queue): the principal, if a grant of theirs includes ``role`` without scopes."""

    async def check(principal: Annotated[Principal, Depends(authenticated)]) -> Principal:
        if not principal.may(role):
            AUTH_FAILURES.labels(reason="forbidden").inc()
            raise HTTPException(403, f"this needs the {role.value} role")
        if principal.reads(role) is not None:
            AUTH_FAILURES.labels(reason="forbidden").inc()
            raise HTTPException(
                403, f"this needs the {role.value} role without queue or kind scopes: it spans every queue"
            )
        return principal

    return check


Viewer = Annotated[Principal, Depends(require(Role.VIEWER))]
UnscopedViewer = Annotated[Principal, Depends(require_unscoped(Role.VIEWER))]
Reviewer = Annotated[Principal, Depends(require(Role.REVIEWER))]
Admin = Annotated[Principal, Depends(require(Role.ADMIN))]


class RateLimit:
    """At most ``limit`` (e.g. ``30/minute``) per identity, in this process (each replica counts
    its own); over it, 429 with Retry-After."""

    def __init__(self, name: str, limit: str) -> None:
        self.name = name
        self.item: RateLimitItem = parse(limit)
        self.limiter = MovingWindowRateLimiter(MemoryStorage())

    async def check(self, identity: str) -> None:
        if await self.limiter.hit(self.item, self.name, identity):
            return
        reset, _ = await self.limiter.get_window_stats(self.item, self.name, identity)
        retry_after = max(1, int(reset - time.time()) + 1)
        RATE_LIMITED.labels(limit=self.name).inc()
        raise HTTPException(
            429, f"over {self.item} for {self.name}; retry later", headers={"Retry-After": str(retry_after)}
        )
