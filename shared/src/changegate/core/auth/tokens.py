"""Opaque API tokens for automation and small teams: ``cg_<id>_<secret>``, shown once at creation,
kept as a SHA-256 of the secret (the secret is 256 random bits, so a fast hash suffices), compared in
constant time, with expiry, revocation and last use."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from changegate.core.auth.principal import Grant, Principal, Role
from changegate.core.db import Queryable

_TOKEN = re.compile(r"^cg_([a-z2-7]{16})_([A-Za-z0-9_-]{43})$")
_DURATION = re.compile(r"^(\d{1,5})([hdw])$")


@dataclass(frozen=True)
class TokenInfo:
    id: str
    name: str
    role: Role
    queues: list[str] | None
    kinds: list[str] | None
    created_at: datetime
    created_by: str
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None


def parse_duration(text: str) -> timedelta:
    """``12h``, ``90d``, ``2w``."""
    match = _DURATION.fullmatch(text)
    if not match:
        raise ValueError(f"{text!r}: expected a number and h, d or w (e.g. 90d)")
    unit = {"h": "hours", "d": "days", "w": "weeks"}[match[2]]
    return timedelta(**{unit: int(match[1])})


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


async def create_token(
    db: Queryable,
    name: str,
    role: Role,
    *,
    created_by: str,
    expires_in: timedelta | None = None,
    queues: list[str] | None = None,
    kinds: list[str] | None = None,
) -> tuple[str, str]:
    """A new token: (its id, the token itself — shown once, never stored)."""
    token_id = base64.b32encode(secrets.token_bytes(10)).decode().lower()
    secret = secrets.token_urlsafe(32)
    await db.execute(
        "INSERT INTO changegate_api_tokens"
        " (id, name, role, queues, kinds, secret_hash, created_by, expires_at)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, now() + $8::interval)",
        token_id,
        name,
        role.value,
        queues,
        kinds,
        _digest(secret),
        created_by,
        expires_in,
    )
    return token_id, f"cg_{token_id}_{secret}"


async def authenticate_token(db: Queryable, token: str) -> Principal | None:
    """The token's principal; None for anything else (malformed, unknown, revoked, expired) — the
    caller must not tell these apart."""
    found = await lookup_token(db, token)
    return found[0] if found is not None else None


async def lookup_token(db: Queryable, token: str) -> tuple[Principal, float | None] | None:
    """As ``authenticate_token``, with the seconds the token has left (None: no expiry)."""
    match = _TOKEN.fullmatch(token)
    if match is None:
        return None
    token_id, secret = match[1], match[2]
    row = await db.fetchrow(
        "SELECT name, role, queues, kinds, secret_hash, revoked_at IS NULL AND"
        " (expires_at IS NULL OR expires_at > now()) AS live,"
        " extract(epoch FROM expires_at - now())::float8 AS seconds_left"
        " FROM changegate_api_tokens WHERE id = $1",
        token_id,
    )
    # Compare even when there is no such token, so the answer takes as long either way.
    stored = bytes(row["secret_hash"]) if row is not None else b"\0" * 32
    if not hmac.compare_digest(_digest(secret), stored) or row is None or not row["live"]:
        return None
    # The services' roles may not write tokens; this function records the last use and nothing else.
    await db.execute("SELECT changegate_token_used($1)", token_id)
    grant = Grant(
        Role(row["role"]),
        frozenset(row["queues"]) if row["queues"] is not None else None,
        frozenset(row["kinds"]) if row["kinds"] is not None else None,
    )
    return Principal(row["name"], (grant,), via="token"), row["seconds_left"]


async def list_tokens(db: Queryable) -> list[TokenInfo]:
    rows = await db.fetch(
        "SELECT id, name, role, queues, kinds, created_at, created_by, expires_at, revoked_at, last_used_at"
        " FROM changegate_api_tokens ORDER BY created_at, id"
    )
    return [TokenInfo(**{**dict(r), "role": Role(r["role"])}) for r in rows]


async def revoke_token(db: Queryable, token_id: str) -> bool:
    revoked = await db.fetchval(
        "UPDATE changegate_api_tokens SET revoked_at = now()"
        " WHERE id = $1 AND revoked_at IS NULL RETURNING 1",
        token_id,
    )
    return revoked is not None
