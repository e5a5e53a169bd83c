"""Shadow mode: a candidate policy routes every proposal beside the policy in force, on live traffic.

Its routes are recorded (``policy_shadow_routes``, in the transaction that records the live route)
and never acted on: nothing is emitted for them. The reviewers' decisions on the same proposals are
kept too (``policy_human_decisions``, from the decisions topic, each verified as signed by
review-api), so :func:`diff` can say per rule where each version routes, which proposals the
candidate would have auto-applied that a human rejected or modified, and how often each version's
own decisions (auto-apply, reject) agree with the human's.

A candidate is started by ``changegate policy shadow FILE`` (or ``CHANGEGATE_SHADOW_POLICY_FILE``)
and recorded in ``policy_candidates``; the service follows the table. Promoting it is explicit
(``changegate policy promote``): the candidate's content becomes the policy file in force and
``policy_promotions`` records who promoted which version, and what it replaced.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any

import asyncpg
from changegate.core.auth import UnscopedViewer
from changegate.core.contracts import Decision, DecisionOutcome, Proposal
from changegate.core.db import DbConn, Queryable
from changegate.core.http import problem_responses, refuse_unknown_query
from changegate.core.logging import get_logger
from changegate.policy.engine import Action, Policy, PolicyError, Route
from fastapi import APIRouter, Depends, Query
from prometheus_client import Counter as PromCounter
from prometheus_client import Info
from pydantic import BaseModel, Field

log = get_logger(__name__)

HUMAN_OUTCOMES = frozenset(
    {DecisionOutcome.APPROVED, DecisionOutcome.APPROVED_WITH_CHANGES, DecisionOutcome.REJECTED}
)
SHADOW_ROUTES = PromCounter(
    "changegate_policy_shadow_routes_total",
    "Proposals the shadow candidate routed (never acted on), by its route and rule and the live route",
    ["version", "route", "rule", "live_route"],
)
SHADOW_VERSUS_HUMAN = PromCounter(
    "changegate_policy_shadow_human_total",
    "Human decisions on proposals the candidate routed: its route beside the human outcome",
    ["version", "route", "outcome"],
)
SHADOW_INFO = Info("changegate_policy_shadow", "The candidate policy running in shadow (none: empty)")


# -- the candidate ---------------------------------------------------------------------------------


async def start(conn: DbConn, policy: Policy, by: str) -> None:
    """Run ``policy`` in shadow from now on (the candidate before it, if any, stops)."""
    async with conn.transaction():
        await conn.execute(
            "UPDATE policy_candidates SET stopped_at = now() WHERE stopped_at IS NULL AND policy_hash <> $1",
            policy.content_hash,
        )
        await conn.execute(
            "INSERT INTO policy_candidates (policy_hash, policy_version, content, source, started_by)"
            " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (policy_hash) DO UPDATE SET stopped_at = NULL,"
            " started_by = EXCLUDED.started_by, started_at = now(), source = EXCLUDED.source"
            " WHERE policy_candidates.stopped_at IS NOT NULL",
            policy.content_hash,
            policy.version,
            policy.content,
            policy.source,
            by,
        )


async def stop(conn: DbConn) -> str | None:
    """Stop the candidate in shadow; its version (None: none ran)."""
    version: str | None = await conn.fetchval(
        "UPDATE policy_candidates SET stopped_at = now() WHERE stopped_at IS NULL RETURNING policy_version"
    )
    return version


async def running(conn: Queryable) -> Policy | None:
    """The candidate in shadow, parsed as it was recorded (None: none runs)."""
    row = await conn.fetchrow("SELECT content, source FROM policy_candidates WHERE stopped_at IS NULL")
    if row is None:
        return None
    return Policy.parse(row["content"].encode(), row["source"])


class Shadow:
    """The candidate the router evaluates beside the live policy; follows ``policy_candidates``."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.policy: Policy | None = None

    async def refresh(self) -> None:
        try:
            candidate = await running(self.pool)
        except PolicyError as exc:  # recorded by an older release whose rules this one refuses
            log.error("shadow candidate refused; none runs", error=str(exc))
            candidate = None
        before = self.policy.content_hash if self.policy else None
        after = candidate.content_hash if candidate else None
        if before != after:
            log.info(
                "shadow candidate switched",
                from_version=self.policy.version if self.policy else None,
                to_version=candidate.version if candidate else None,
                to_hash=after,
            )
            SHADOW_INFO.info({"version": candidate.version, "hash": after} if candidate and after else {})
            self.policy = candidate

    async def run(self, stop_event: asyncio.Event, poll_seconds: float) -> None:
        while not stop_event.is_set():
            try:
                await self.refresh()
            except (OSError, asyncpg.PostgresError) as exc:  # the database away: the candidate stays
                log.warning("shadow candidate not refreshed", error=repr(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop_event.wait(), poll_seconds)


# -- recording -------------------------------------------------------------------------------------


async def record_routes(conn: DbConn, candidate: Policy, routed: list[tuple[Proposal, Route]]) -> None:
    """What ``candidate`` would have done with proposals just routed live (in their transaction)."""
    if not routed:
        return
    shadow = [(p, candidate.evaluate(p), live) for p, live in routed]
    await conn.execute(
        "INSERT INTO policy_shadow_routes (proposal_id, policy_hash, policy_version, kind, confidence,"
        " action, rule_id) SELECT p, $2, $3, k, c, a, r"
        " FROM unnest($1::uuid[], $4::text[], $5::float8[], $6::text[], $7::text[]) AS t(p, k, c, a, r)"
        " ON CONFLICT DO NOTHING",
        [p.proposal_id for p, _, _ in shadow],
        candidate.content_hash,
        candidate.version,
        [p.kind.value for p, _, _ in shadow],
        [p.confidence for p, _, _ in shadow],
        [r.action.value for _, r, _ in shadow],
        [r.rule_id for _, r, _ in shadow],
    )
    counts = Counter((r.action.value, r.rule_id, live.action.value) for _, r, live in shadow)
    for (action, rule, live_action), n in counts.items():
        SHADOW_ROUTES.labels(version=candidate.version, route=action, rule=rule, live_route=live_action).inc(
            n
        )


async def record_human(pool: asyncpg.Pool, decisions: list[Decision]) -> None:
    """Keep human decisions (already verified as review-api's) as labels for shadow routes."""
    human = [d for d in decisions if d.decided_by.kind == "human" and d.outcome in HUMAN_OUTCOMES]
    if not human:
        return
    async with pool.acquire() as conn, conn.transaction():
        fresh = await conn.fetch(
            "INSERT INTO policy_human_decisions (proposal_id, kind, confidence, outcome, decided_by,"
            " proposed_at, decided_at) SELECT * FROM unnest($1::uuid[], $2::text[], $3::float8[],"
            " $4::text[], $5::text[], $6::timestamptz[], $7::timestamptz[])"
            " ON CONFLICT (proposal_id) DO NOTHING RETURNING proposal_id, outcome",
            [d.proposal.proposal_id for d in human],
            [d.proposal.kind.value for d in human],
            [d.proposal.confidence for d in human],
            [d.outcome.value for d in human],
            [d.decided_by.identity for d in human],
            [d.proposal.proposed_at for d in human],
            [d.decided_at for d in human],
        )
        outcome = {r["proposal_id"]: r["outcome"] for r in fresh}
        shadowed = await conn.fetch(
            "SELECT proposal_id, policy_version, action FROM policy_shadow_routes"
            " WHERE proposal_id = ANY($1::uuid[])",
            list(outcome),
        )
    for row in shadowed:
        SHADOW_VERSUS_HUMAN.labels(
            version=row["policy_version"], route=row["action"], outcome=outcome[row["proposal_id"]]
        ).inc()


# -- the diff --------------------------------------------------------------------------------------


class RuleRow(BaseModel):
    """One rule of one version over the proposals the candidate routed."""

    version: str = Field(description="'live' rows: the policy in force; else the candidate's version")
    side: str = Field(description="live or candidate")
    rule: str
    auto_apply: int = 0
    review: int = 0
    reject: int = 0
    human_decided: int = Field(0, description="of these, proposals a human decided")
    agreed: int = Field(
        0,
        description="auto-applied what a human approved unchanged, or rejected what a human rejected",
    )
    disagreed: int = Field(
        0,
        description="auto-applied what a human rejected or modified, or rejected what a human approved",
    )
    left_to_human: int = Field(0, description="the rule sent to review what a human decided")

    @property
    def agreement(self) -> float | None:
        decided = self.agreed + self.disagreed
        return self.agreed / decided if decided else None


class Overruled(BaseModel):
    """A proposal the candidate would have auto-applied that a human rejected or modified."""

    proposal_id: str
    kind: str
    confidence: float
    rule: str
    live_rule: str
    outcome: str
    decided_by: str


class ShadowDiff(BaseModel):
    candidate_version: str | None = Field(description="the candidate compared (None: none ever ran)")
    candidate_hash: str | None = None
    running: bool = False
    started_by: str | None = None
    started_at: datetime | None = None
    proposals: int = Field(0, description="proposals routed by both since the candidate started")
    changed_routes: int = Field(0, description="of these, routed differently by the candidate")
    rules: list[RuleRow] = Field(default_factory=list)
    transitions: dict[str, int] = Field(
        default_factory=dict, description="'live route -> candidate route': proposals"
    )
    would_auto_apply_overruled: int = Field(
        0, description="proposals the candidate would have auto-applied that a human rejected or modified"
    )
    overruled: list[Overruled] = Field(
        default_factory=list, description="up to `limit` of them, newest first"
    )


def _verdict(action: str, outcome: str | None) -> str | None:
    """agreed / disagreed / left (a human decides) for a route beside a human outcome."""
    if outcome is None:
        return None
    if action == Action.REVIEW.value:
        return "left"
    if action == Action.AUTO_APPLY.value:
        return "agreed" if outcome == DecisionOutcome.APPROVED.value else "disagreed"
    return "agreed" if outcome == DecisionOutcome.REJECTED.value else "disagreed"


async def diff(conn: Queryable, policy_hash: str | None = None, limit: int = 20) -> ShadowDiff:
    """The candidate (``policy_hash``; default: the one running, else the last that ran) against the
    policy in force on the same proposals, and both against the humans' decisions."""
    candidate = await conn.fetchrow(
        "SELECT policy_hash, policy_version, started_by, started_at, stopped_at FROM policy_candidates"
        " WHERE ($1::text IS NULL OR policy_hash = $1)"
        " ORDER BY stopped_at IS NULL DESC, started_at DESC LIMIT 1",
        policy_hash,
    )
    if candidate is None:
        return ShadowDiff(candidate_version=None)
    rows = await conn.fetch(
        "SELECT s.proposal_id, s.kind, s.confidence, s.action, s.rule_id, l.action AS live_action,"
        " l.rule_id AS live_rule, h.outcome, h.decided_by, h.decided_at"
        " FROM policy_shadow_routes s JOIN policy_routes l USING (proposal_id)"
        " LEFT JOIN policy_human_decisions h USING (proposal_id) WHERE s.policy_hash = $1",
        candidate["policy_hash"],
    )
    version = candidate["policy_version"]
    table: dict[tuple[str, str], RuleRow] = {}
    transitions: Counter[str] = Counter()
    overruled: list[tuple[datetime, Overruled]] = []
    for r in rows:
        sides = (
            ("candidate", version, r["action"], r["rule_id"]),
            ("live", "live", r["live_action"], r["live_rule"]),
        )
        for side, name, action, rule in sides:
            row = table.setdefault((side, rule), RuleRow(version=name, side=side, rule=rule))
            setattr(row, action, getattr(row, action) + 1)
            verdict = _verdict(action, r["outcome"])
            if verdict is not None:
                row.human_decided += 1
                field = "left_to_human" if verdict == "left" else verdict
                setattr(row, field, getattr(row, field) + 1)
        transitions[f"{r['live_action']} -> {r['action']}"] += 1
        if r["action"] == Action.AUTO_APPLY.value and r["outcome"] not in (
            None,
            DecisionOutcome.APPROVED.value,
        ):
            overruled.append(
                (
                    r["decided_at"],
                    Overruled(
                        proposal_id=str(r["proposal_id"]),
                        kind=r["kind"],
                        confidence=r["confidence"],
                        rule=r["rule_id"],
                        live_rule=r["live_rule"],
                        outcome=r["outcome"],
                        decided_by=r["decided_by"],
                    ),
                )
            )
    overruled.sort(key=lambda pair: pair[0], reverse=True)
    return ShadowDiff(
        candidate_version=version,
        candidate_hash=candidate["policy_hash"],
        running=candidate["stopped_at"] is None,
        started_by=candidate["started_by"],
        started_at=candidate["started_at"],
        proposals=len(rows),
        changed_routes=sum(n for t, n in transitions.items() if len(set(t.split(" -> "))) == 2),
        rules=sorted(table.values(), key=lambda row: (row.side, row.rule)),
        transitions=dict(sorted(transitions.items())),
        would_auto_apply_overruled=len(overruled),
        overruled=[o for _, o in overruled[:limit]],
    )


# -- promotion -------------------------------------------------------------------------------------


async def promote(
    conn: DbConn,
    by: str,
    live: Policy,
    written_to: str,
    write: Callable[[Policy], None],
    version: str | None = None,
) -> Policy:
    """Make the running candidate the policy in force: ``write`` puts its content where the service
    reads its policy, in the transaction that records who promoted which version (and what it
    replaced) and stops its shadow — a failed write records nothing. ``version``: refuse unless the
    candidate is that version (the one the promoter saw in the diff)."""
    async with conn.transaction():
        candidate = await running(conn)
        if candidate is None:
            raise PromotionError(
                "no candidate policy runs in shadow: start one with `changegate policy shadow FILE`"
            )
        if version is not None and candidate.version != version:
            raise PromotionError(f"the candidate in shadow is version {candidate.version}, not {version}")
        await conn.execute(
            "INSERT INTO policy_promotions (policy_hash, policy_version, promoted_by, replaced_version,"
            " replaced_hash, written_to) VALUES ($1, $2, $3, $4, $5, $6)",
            candidate.content_hash,
            candidate.version,
            by,
            live.version,
            live.content_hash,
            written_to,
        )
        await conn.execute(
            "UPDATE policy_candidates SET stopped_at = now() WHERE policy_hash = $1", candidate.content_hash
        )
        write(candidate)
    return candidate


class PromotionError(Exception):
    """Nothing to promote, or not the version the promoter named."""


async def promotions(conn: Queryable) -> list[dict[str, Any]]:
    rows = await conn.fetch("SELECT * FROM policy_promotions ORDER BY promotion_id")
    return [dict(r) for r in rows]


def api(pool: asyncpg.Pool) -> APIRouter:
    """``GET /v1/shadow``: the diff as JSON, on the policy service's port beside its metrics, for a
    viewer without scopes (it counts every queue's items). It carries counts only (no proposal
    ids): the list of overruled proposals is the CLI's."""
    router = APIRouter(prefix="/v1", tags=["shadow"])

    @router.get(
        "/shadow",
        summary="The candidate policy in shadow against the policy in force and human decisions",
        response_model=ShadowDiff,
        responses=problem_responses(401, 403, 422),
        dependencies=[Depends(refuse_unknown_query)],
    )
    async def shadow_diff(
        _: UnscopedViewer,
        policy_hash: Annotated[
            str | None,
            Query(
                pattern="^[0-9a-f]{64}$",
                description="a candidate's sha256 (default: the one running, else the last)",
            ),
        ] = None,
    ) -> ShadowDiff:
        return await diff(pool, policy_hash, limit=0)

    return router
