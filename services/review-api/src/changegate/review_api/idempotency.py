"""Idempotency-Key for POSTs: a retried request with the same key (per identity) gets the first
answer again, byte for byte, with ``Idempotent-Replayed: true``; the same key on another request is
refused (422); while the first is still running, a second waits its turn (409, Retry-After).

A decision's answer is stored in the transaction that makes the decision, so a crash can never
leave a decision without its answer (a retry would then decide twice or report a conflict)."""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
from changegate.core.db import Queryable
from fastapi import HTTPException

# A claim without an answer this old belongs to a request that died: it may be taken over.
STALE_CLAIM_SECONDS = 60
RETENTION = "24 hours"


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes
    headers: dict[str, str]


# Stores the answer, given the connection of the transaction that makes the effect.
OnAnswer = Callable[[Any, Answer], Awaitable[None]]


def request_hash(method: str, path: str, body: bytes) -> str:
    return hashlib.sha256(method.encode() + b" " + path.encode() + b"\n" + body).hexdigest()


async def claim(pool: asyncpg.Pool, identity: str, key: str, digest: str) -> Answer | None:
    """Claim ``key`` for this request; the stored answer if the key was used before for it."""
    async with pool.acquire() as conn, conn.transaction():
        inserted = await conn.fetchval(
            "INSERT INTO review_idempotency (identity, key, request_hash) VALUES ($1, $2, $3)"
            " ON CONFLICT (identity, key) DO NOTHING RETURNING 1",
            identity,
            key,
            digest,
        )
        if inserted:
            return None
        row = await conn.fetchrow(
            "SELECT request_hash, status, body, headers,"
            " created_at < now() - make_interval(secs => $3) AS stale"
            " FROM review_idempotency WHERE identity = $1 AND key = $2 FOR UPDATE",
            identity,
            key,
            STALE_CLAIM_SECONDS,
        )
        if row is None:  # removed meanwhile (expired): claim it afresh
            await conn.execute(
                "INSERT INTO review_idempotency (identity, key, request_hash) VALUES ($1, $2, $3)",
                identity,
                key,
                digest,
            )
            return None
        if row["request_hash"] != digest:
            raise HTTPException(422, "this Idempotency-Key was used for another request; use a new key")
        if row["status"] is not None:
            return Answer(row["status"], bytes(row["body"]), dict(row["headers"] or {}))
        if row["stale"]:
            await conn.execute(
                "UPDATE review_idempotency SET created_at = now() WHERE identity = $1 AND key = $2",
                identity,
                key,
            )
            return None
    raise HTTPException(
        409,
        "a request with this Idempotency-Key is still being handled; retry shortly",
        headers={"Retry-After": "1"},
    )


async def store(db: Queryable, identity: str, key: str, answer: Answer) -> None:
    await db.execute(
        "UPDATE review_idempotency SET status = $3, body = $4, headers = $5 WHERE identity = $1 AND key = $2",
        identity,
        key,
        answer.status,
        answer.body,
        answer.headers,
    )


async def release(db: Queryable, identity: str, key: str) -> None:
    """Forget a claim whose request ended without an answer worth repeating (a 429, a failure)."""
    await db.execute(
        "DELETE FROM review_idempotency WHERE identity = $1 AND key = $2 AND status IS NULL", identity, key
    )


async def expire(db: Queryable) -> int:
    deleted: str = await db.execute(
        f"DELETE FROM review_idempotency WHERE created_at < now() - interval '{RETENTION}'"
    )
    return int(deleted.split()[-1])
