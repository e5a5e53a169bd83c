"""OIDC bearer JWTs, verified against the issuer's JWKS with PyJWT: signature by a key of the
issuer (fetched and cached; an unknown key id refetches the set, at most every few seconds, which is
how key rotation reaches us), the algorithm allow-list, iss, aud, exp and nbf."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import jwt
from changegate.core.auth.principal import Grant, Principal, Role
from changegate.core.auth.settings import AuthSettings
from changegate.core.logging import get_logger

log = get_logger(__name__)


class InvalidTokenError(Exception):
    """The JWT is not acceptable; the message is for logs, never for the caller."""


class JwksCache:
    def __init__(self, settings: AuthSettings, client: httpx.AsyncClient | None = None) -> None:
        self.settings = settings
        self.client = client or httpx.AsyncClient(timeout=5.0)
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at = 0.0
        self._lock = asyncio.Lock()

    async def key(self, kid: str) -> jwt.PyJWK:
        fresh = time.monotonic() - self._fetched_at < self.settings.auth_oidc_jwks_cache_seconds
        if kid not in self._keys or not fresh:
            async with self._lock:
                since = time.monotonic() - self._fetched_at
                if since > self.settings.auth_oidc_jwks_min_refetch_seconds or not self._keys:
                    await self._fetch()
        if kid not in self._keys:
            raise InvalidTokenError(f"unknown key id {kid!r}")
        return self._keys[kid]

    async def _fetch(self) -> None:
        url = self.settings.auth_oidc_jwks_url or await self._discover()
        response = await self.client.get(url)
        response.raise_for_status()
        keys: dict[str, jwt.PyJWK] = {}
        for jwk in response.json().get("keys", []):
            if "kid" not in jwk or jwk.get("use", "sig") != "sig":
                continue
            try:
                keys[jwk["kid"]] = jwt.PyJWK(jwk)
            except jwt.PyJWTError as exc:  # a key type we cannot use: skip it, keep the others
                log.warning("JWKS key skipped", kid=jwk.get("kid"), error=str(exc))
        self._keys, self._fetched_at = keys, time.monotonic()
        log.info("JWKS fetched", url=url, keys=len(keys))

    async def _discover(self) -> str:
        issuer = (self.settings.auth_oidc_issuer or "").rstrip("/")
        response = await self.client.get(f"{issuer}/.well-known/openid-configuration")
        response.raise_for_status()
        jwks_uri: str = response.json()["jwks_uri"]
        return jwks_uri


class OidcVerifier:
    def __init__(self, settings: AuthSettings, client: httpx.AsyncClient | None = None) -> None:
        self.settings = settings
        self.jwks = JwksCache(settings, client)

    async def principal(self, token: str) -> Principal:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise InvalidTokenError(f"malformed JWT: {exc}") from exc
        alg, kid = header.get("alg"), header.get("kid")
        if alg not in self.settings.auth_oidc_algorithms:
            raise InvalidTokenError(f"algorithm {alg!r} is not allowed")
        if not isinstance(kid, str):
            raise InvalidTokenError("no key id (kid) in the JWT header")
        try:
            key = await self.jwks.key(kid)
        except httpx.HTTPError as exc:
            raise InvalidTokenError(f"JWKS unavailable: {exc!r}") from exc
        if key.algorithm_name is not None and key.algorithm_name != alg:
            raise InvalidTokenError(f"key {kid!r} is for {key.algorithm_name}, not {alg}")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key=key,
                algorithms=[alg],
                audience=self.settings.auth_oidc_audience,
                issuer=self.settings.auth_oidc_issuer,
                leeway=self.settings.auth_oidc_leeway_seconds,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.PyJWTError as exc:
            raise InvalidTokenError(str(exc)) from exc
        subject = claims.get(self.settings.auth_oidc_identity_claim)
        if not isinstance(subject, str) or not subject:
            raise InvalidTokenError(f"no {self.settings.auth_oidc_identity_claim!r} claim")
        return Principal(subject, self._grants(claims.get(self.settings.auth_oidc_roles_claim)), via="oidc")

    def _grants(self, claim: object) -> tuple[Grant, ...]:
        values = [claim] if isinstance(claim, str) else claim if isinstance(claim, list) else []
        grants = []
        for value in values:
            if not isinstance(value, str):
                continue
            mapped = self.settings.auth_oidc_role_map.get(value)
            if mapped is not None:
                grants.append(
                    Grant(
                        mapped.role,
                        frozenset(mapped.queues) if mapped.queues is not None else None,
                        frozenset(mapped.kinds) if mapped.kinds is not None else None,
                    )
                )
            elif value in Role.__members__.values():
                grants.append(Grant(Role(value)))
        return tuple(grants)
