"""FastAPI dependencies: the principal of a request's bearer token (an OIDC JWT or an API token),
role checks, and a per-identity rate limit. Answers never tell whether a token exists: a missing,
malformed, unknown, revoked or expired token is the same 401."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Annotated

import asyncpg
import httpx
from changegate.core.auth.oidc import InvalidTokenError, OidcVerifier
from changegate.core.auth.principal import Principal, Role
from changegate.core.auth.settings import AuthSettings
from changegate.core.auth.tokens import authenticate_token
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


class Authenticator:
    """Turns a bearer token into a principal, by whichever method is configured."""

    def __init__(
        self, settings: AuthSettings, pool: asyncpg.Pool | None, client: httpx.AsyncClient | None = None
    ) -> None:
        self.pool = pool if settings.auth_api_tokens else None
        self.oidc = OidcVerifier(settings, client) if settings.auth_oidc_issuer else None

    async def authenticate(self, token: str) -> Principal | None:
        if self.oidc is not None and token.count(".") == 2:
            try:
                return await self.oidc.principal(token)
            except InvalidTokenError as exc:
                log.info("JWT refused", reason=str(exc))
                return None
        if self.pool is not None:
            return await authenticate_token(self.pool, token)
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
