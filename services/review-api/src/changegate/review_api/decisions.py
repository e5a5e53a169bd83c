"""Deciding an item of the queue: approvals (N distinct reviewers, four-eyes), rejection, expiry.

Each action locks the item's row, checks it is still pending (and at the version the caller saw,
with If-Match), and either records a partial approval or closes the item and emits its signed
decision through the outbox — in one transaction, so of many concurrent actions on one item
exactly one decides it and the others see what it became.

Approvals count per set of final values: a reviewer who edits the values approves the edited set,
and the decision is made when ``required`` distinct identities (compared without case or
surrounding spaces) approved the same set. Any rejection ends it; nobody approves what they asked
for."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import asyncpg
import rfc8785
from changegate.core import outbox
from changegate.core.auth.principal import normalize_identity
from changegate.core.contracts import Decider, Decision, DecisionOutcome, FieldChange, Proposal
from changegate.core.contracts.base import utcnow
from changegate.core.contracts.envelope import make_envelope
from changegate.core.db import DbConn
from changegate.core.signing import SigningKey
from changegate.core.topics import Topic, TopicNames
from changegate.review_api import metrics
from changegate.review_api.queue import SERVICE


class Action(StrEnum):
    APPROVE = "approve"
    REJECT = "reject"
    EXPIRE = "expire"


class ItemMissingError(Exception):
    """No such proposal."""


class ActionRefusedError(Exception):
    """The item cannot take this action now; ``row`` is its current state.

    ``reason``: ``decided`` (no longer pending), ``expired`` (overdue, the sweeper will close it),
    ``version`` (If-Match does not match), ``already_approved`` (this identity approved it),
    ``own`` (the identity requested the change)."""

    def __init__(self, reason: str, row: asyncpg.Record, message: str) -> None:
        super().__init__(message)
        self.reason, self.row = reason, row


@dataclass(frozen=True)
class Outcome:
    row: asyncpg.Record  # the item after the action
    decision: Decision | None  # None: a partial approval
    approvals: int  # distinct approvals of the values decided (or approved so far)
    required: int


def identity_key(identity: str) -> str:
    """How identities compare: as core.auth normalises them (NFKC, trimmed, case-folded), so an
    identity recorded before that normalisation (an approval, a requester) compares equally."""
    return normalize_identity(identity)


def changes_digest(changes: list[FieldChange]) -> str:
    """Which values an approval approves (RFC 8785, so equal values digest equally)."""
    canonical = rfc8785.dumps([c.model_dump(mode="json") for c in changes])
    return hashlib.sha256(canonical).hexdigest()[:32]


OnCommit = Callable[[DbConn, Outcome], Awaitable[None]]
Admit = Callable[[asyncpg.Record], list[FieldChange] | None]


async def act(
    pool: asyncpg.Pool,
    names: TopicNames,
    proposal_id: uuid.UUID,
    action: Action,
    identity: str,
    comment: str | None = None,
    final_changes: list[FieldChange] | None = None,
    *,
    signer: SigningKey,
    min_approvals: Mapping[str, int] | None = None,
    if_match: int | None = None,
    before_commit: OnCommit | None = None,
    admit: Admit | None = None,
) -> Outcome:
    """Approve (``final_changes``: the reviewer's edited values), reject or expire one item.
    ``min_approvals`` (kind -> count, from settings) raises the route's required count; ``before_commit``
    runs in the transaction (e.g. to store an idempotent answer with the effect); ``admit`` sees the
    locked row first and raises to refuse (the caller's own checks: scopes, edited values), or
    returns the final changes to use instead of ``final_changes``."""
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            "SELECT *, expires_at <= now() AS overdue FROM review_queue WHERE proposal_id = $1 FOR UPDATE",
            proposal_id,
        )
        if row is None:
            raise ItemMissingError(str(proposal_id))
        if admit is not None:
            final_changes = admit(row) or final_changes
        if row["status"] != "pending":
            raise ActionRefusedError("decided", row, f"proposal {proposal_id} is already {row['status']}")
        if row["overdue"] and action is not Action.EXPIRE:
            raise ActionRefusedError("expired", row, f"proposal {proposal_id} expired before this decision")
        if if_match is not None and row["version"] != if_match:
            raise ActionRefusedError(
                "version",
                row,
                f"proposal {proposal_id} changed: it is at version {row['version']}, not {if_match}",
            )
        proposal = Proposal.model_validate(row["proposal"])
        required = max(row["required_approvals"], (min_approvals or {}).get(row["kind"], 1))
        approvals: list[dict[str, Any]] = list(row["approvals"])
        now = utcnow()
        final: list[FieldChange] = []
        agreeing: list[dict[str, Any]] = []
        if action is Action.APPROVE:
            key = identity_key(identity)
            if proposal.requested_by is not None and identity_key(proposal.requested_by) == key:
                raise ActionRefusedError(
                    "own", row, "you requested this change: another reviewer must approve it"
                )
            if any(identity_key(a["identity"]) == key for a in approvals):
                raise ActionRefusedError(
                    "already_approved",
                    row,
                    f"you already approved proposal {proposal_id}; it needs {required} distinct approvers",
                )
            final = final_changes or list(proposal.changes)
            digest = changes_digest(final)
            as_proposed = digest == changes_digest(list(proposal.changes))
            approvals.append(
                {
                    "identity": identity,
                    "at": now.isoformat(),
                    "comment": comment,
                    "changes": None if as_proposed else [c.model_dump(mode="json") for c in final],
                    "digest": digest,
                }
            )
            agreeing = [a for a in approvals if a["digest"] == digest]
            if len(agreeing) < required:
                after = await conn.fetchrow(
                    "UPDATE review_queue SET approvals = $2 WHERE proposal_id = $1 RETURNING *",
                    proposal_id,
                    approvals,
                )
                assert after is not None
                result = Outcome(after, None, len(agreeing), required)
                if before_commit is not None:
                    await before_commit(conn, result)
                metrics.APPROVALS.labels(kind=proposal.kind.value).inc()
                return result
            outcome = DecisionOutcome.APPROVED if as_proposed else DecisionOutcome.APPROVED_WITH_CHANGES
        else:
            outcome = DecisionOutcome.REJECTED if action is Action.REJECT else DecisionOutcome.EXPIRED
        by_system = action is Action.EXPIRE
        who = ", ".join(a["identity"] for a in agreeing) or identity
        counted = f" ({len(agreeing)} of {required} approvals)" if required > 1 else ""
        decision = signer.sign(
            Decision(
                decision_id=uuid.uuid4(),
                proposal=proposal,
                outcome=outcome,
                decided_by=Decider(kind="system" if by_system else "human", identity=identity),
                decided_at=now,
                explanation=f"{outcome.value.replace('_', ' ')} by {who}{counted}",
                comment=comment,
                final_changes=final,
            )
        )
        after = await conn.fetchrow(
            "UPDATE review_queue SET status = $2, decision_id = $3, decided_by = $4, decided_at = $5,"
            " comment = $6, decider = $7, decision_explanation = $8, final_changes = $9, approvals = $10"
            " WHERE proposal_id = $1 RETURNING *",
            proposal_id,
            outcome.value,
            decision.decision_id,
            identity,
            decision.decided_at,
            comment,
            decision.decided_by.model_dump(mode="json"),
            decision.explanation,
            [c.model_dump(mode="json") for c in final] if final else None,
            approvals,
        )
        assert after is not None
        envelope = make_envelope(
            decision,
            service=SERVICE,
            correlation_id=proposal.proposal_id,
            dedup_key=str(decision.decision_id),
        )
        await outbox.enqueue(conn, SERVICE, names(Topic.DECISIONS), proposal.record_id, envelope)
        result = Outcome(after, decision, len(agreeing), required)
        if before_commit is not None:
            await before_commit(conn, result)
    metrics.DECISIONS.labels(outcome=outcome.value).inc()
    metrics.REVIEW_LATENCY.labels(kind=proposal.kind.value).observe(
        (decision.decided_at - row["enqueued_at"]).total_seconds()
    )
    return result
