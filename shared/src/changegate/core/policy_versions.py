"""The policy versions the policy service loaded: recorded by it before it routes with one, read by
the executor and audit, which refuse a policy decision that names any other.

A stolen policy signing key alone cannot make up a version: only the policy service's database role
may insert into ``changegate_policy_versions`` (and nobody but the owner may change a row)."""

from __future__ import annotations

from changegate.core.contracts import Decision
from changegate.core.db import Queryable
from changegate.core.signing import REFUSED, SignatureRefusedError


async def record(db: Queryable, *, version: str, content_hash: str, source: str, content: str) -> bool:
    """Record a loaded policy (before it routes anything); False if it was recorded before."""
    inserted = await db.fetchval(
        "INSERT INTO changegate_policy_versions (policy_hash, version, source, content)"
        " VALUES ($1, $2, $3, $4) ON CONFLICT (policy_hash) DO NOTHING RETURNING 1",
        content_hash,
        version,
        source,
        content,
    )
    return inserted is not None


class RecordedPolicies:
    """Checks that a policy decision names a version the policy service recorded. Versions found
    are remembered (a row is never removed); an unknown one is asked for every time."""

    def __init__(self, db: Queryable) -> None:
        self.db = db
        self._known: set[tuple[str, str]] = set()

    async def check(self, decision: Decision, event_type: str = "decision") -> None:
        """SignatureRefusedError (counted, dead-lettered) for a policy decision of an unrecorded
        version; nothing for other deciders."""
        by = decision.decided_by
        if by.kind != "policy" or by.policy_hash is None or by.policy_version is None:
            return
        key = (by.policy_hash, by.policy_version)
        if key in self._known:
            return
        version = await self.db.fetchval(
            "SELECT version FROM changegate_policy_versions WHERE policy_hash = $1", by.policy_hash
        )
        if version != by.policy_version:
            REFUSED.labels(event_type=event_type, reason="unknown_policy_version").inc()
            raise SignatureRefusedError(
                "unknown_policy_version",
                f"policy {by.policy_version} ({by.policy_hash[:12]}…) was never loaded by the policy service",
            )
        self._known.add(key)
