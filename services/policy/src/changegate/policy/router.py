"""Routing proposals: evaluate, record the route once in PostgreSQL, emit through the outbox.

A batch of proposals is one transaction: routes already recorded (redelivery, replay, a policy
switch while in flight) are skipped, the new ones are inserted with their decisions or review
requests in the outbox. So every proposal is routed exactly once, under one policy version."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from typing import Any

import asyncpg
from changegate.core import outbox
from changegate.core.contracts import Decision, DecisionOutcome, Proposal, ReviewRequest
from changegate.core.contracts.base import utcnow
from changegate.core.contracts.envelope import Envelope, make_envelope
from changegate.core.kafka import Refusals, handle_one, screen
from changegate.core.logging import get_logger
from changegate.core.signing import SigningKey, Verifier
from changegate.core.topics import Topic, TopicNames
from changegate.policy import shadow
from changegate.policy.engine import Action, Policy, Route
from prometheus_client import Counter as PromCounter
from prometheus_client import Histogram

SERVICE = "policy"
DETECTOR_ONLY = frozenset({"detector"})  # the executor's re-proposals go to review, never here
log = get_logger(__name__)

DECISIONS = PromCounter(
    "changegate_policy_decisions_total",
    "Proposals routed, by route, rule and kind",
    ["route", "rule", "kind"],
)
DUPLICATES = PromCounter(
    "changegate_policy_duplicates_total", "Proposals already routed before (redelivered)"
)
EVALUATION_SECONDS = Histogram(
    "changegate_policy_evaluation_duration_seconds",
    "Time to evaluate one proposal against the policy",
    buckets=(1e-6, 5e-6, 1e-5, 5e-5, 1e-4, 5e-4, 1e-3, 5e-3),
)


def output_for(policy: Policy, proposal: Proposal, route: Route) -> tuple[Topic, Any]:
    """The message a route produces: a decision (auto-apply, reject) or a review request."""
    now = utcnow()
    if route.action is Action.REVIEW:
        return Topic.PROPOSALS_PENDING, ReviewRequest(
            proposal=proposal,
            queue=route.review.queue if route.review else "default",
            priority=route.review.priority if route.review else "normal",
            expires_at=route.expires_at(now),
            routed_by=policy.decider(route.rule_id),
            explanation=route.explanation,
            required_approvals=route.review.approvals if route.review else 1,
        )
    outcome = DecisionOutcome.AUTO_APPROVED if route.action is Action.AUTO_APPLY else DecisionOutcome.REJECTED
    return Topic.DECISIONS, Decision(
        decision_id=Decision.policy_decision_id(proposal.proposal_id, policy.content_hash),
        proposal=proposal,
        outcome=outcome,
        decided_by=policy.decider(route.rule_id),
        decided_at=now,
        explanation=route.explanation,
        final_changes=list(proposal.changes) if outcome.executes else [],
    )


class Router:
    def __init__(
        self,
        pool: asyncpg.Pool,
        policy: Policy,
        names: TopicNames,
        signer: SigningKey,
        verifier: Verifier,
        candidate: shadow.Shadow | None = None,
    ) -> None:
        self.pool, self.policy, self.names = pool, policy, names
        self.candidate = candidate  # a policy in shadow: its routes recorded, never acted on
        self.signer, self.verifier = signer, verifier

    def switch(self, policy: Policy) -> None:
        """Take a new policy; the batch in flight finishes under the old one."""
        log.info(
            "policy switched",
            from_version=self.policy.version,
            from_hash=self.policy.content_hash,
            to_version=policy.version,
            to_hash=policy.content_hash,
            source=policy.source,
        )
        self.policy = policy

    async def handle_batch(self, envelopes: list[Envelope[Any]]) -> None:
        policy = self.policy  # one policy (and one candidate) for the whole batch
        candidate = self.candidate.policy if self.candidate else None
        proposals: dict[uuid.UUID, Proposal] = {}
        alone = len(envelopes) == 1  # a failing batch is retried message by message: count once
        for env in envelopes:
            # Only what the detector signed is routed; anything else is dead-lettered, counted.
            self.verifier.proposal(env.payload, DETECTOR_ONLY, count=alone)
            proposals.setdefault(env.payload.proposal_id, env.payload)
        async with self.pool.acquire() as conn, conn.transaction():
            done = {
                r["proposal_id"]
                for r in await conn.fetch(
                    "SELECT proposal_id FROM policy_routes WHERE proposal_id = ANY($1::uuid[])",
                    list(proposals),
                )
            }
            fresh = [p for pid, p in proposals.items() if pid not in done]
            routes = []
            for proposal in fresh:
                started = time.perf_counter()
                route = policy.evaluate(proposal)
                EVALUATION_SECONDS.observe(time.perf_counter() - started)
                routes.append((proposal, route))
            await conn.copy_records_to_table(
                "policy_routes",
                columns=("proposal_id", "action", "rule_id", "policy_version", "policy_hash", "explanation"),
                records=[
                    (
                        p.proposal_id,
                        r.action.value,
                        r.rule_id,
                        policy.version,
                        policy.content_hash,
                        r.explanation,
                    )
                    for p, r in routes
                ],
            )
            if candidate is not None:
                await shadow.record_routes(conn, candidate, routes)
            messages = []
            for proposal, route in routes:
                topic, payload = output_for(policy, proposal, route)
                payload = self.signer.sign(payload)
                dedup = (
                    payload.decision_id if isinstance(payload, Decision) else f"review|{proposal.proposal_id}"
                )
                env = make_envelope(
                    payload, service=SERVICE, correlation_id=proposal.proposal_id, dedup_key=str(dedup)
                )
                messages.append((self.names(topic), proposal.record_id, env))
            await outbox.enqueue_many(conn, SERVICE, messages)
        DUPLICATES.inc(len(envelopes) - len(fresh))
        counts = Counter((r.action.value, r.rule_id, p.kind.value) for p, r in routes)
        for (action, rule, kind), n in counts.items():
            DECISIONS.labels(route=action, rule=rule, kind=kind).inc(n)
        for proposal, route in routes:  # the audit log keeps decisions; this is for tracing
            log.debug(
                "routed",
                correlation_id=str(proposal.proposal_id),
                action=route.action.value,
                rule=route.rule_id,
                explanation=route.explanation,
            )

    async def handle(self, envelope: Envelope[Any]) -> None:
        await self.handle_batch([envelope])

    async def on_decisions(self, envelopes: list[Envelope[Any]]) -> Refusals:
        """A proposal superseded before it was routed is never routed (nor auto-applied); a human's
        decision is kept as the label shadow routes and suggestions are compared with. The other
        decisions are not verified: nothing is done with them."""
        wanted = [
            (n, e)
            for n, e in enumerate(envelopes)
            if e.payload.outcome is DecisionOutcome.SUPERSEDED
            or (e.payload.outcome in shadow.HUMAN_OUTCOMES and e.payload.decided_by.kind == "human")
        ]
        # A forged supersession must not block routing; a forged label must not teach anything.
        refused, passed = screen([e for _, e in wanted], self.verifier.decision)
        decisions: list[Decision] = [d for _, d in passed]
        superseded = [d for d in decisions if d.outcome is DecisionOutcome.SUPERSEDED]
        if superseded:
            policy = self.policy
            await self.pool.execute(
                "INSERT INTO policy_routes (proposal_id, action, rule_id, policy_version, policy_hash,"
                " explanation) SELECT p, 'superseded', 'superseded', $2, $3, e"
                " FROM unnest($1::uuid[], $4::text[]) AS t(p, e) ON CONFLICT (proposal_id) DO NOTHING",
                [d.proposal.proposal_id for d in superseded],
                policy.version,
                policy.content_hash,
                [d.explanation for d in superseded],
            )
        await shadow.record_human(
            self.pool, [d for d in decisions if d.outcome is not DecisionOutcome.SUPERSEDED]
        )
        return {wanted[n][0]: exc for n, exc in refused.items()}

    async def on_decision(self, envelope: Envelope[Any]) -> None:
        await handle_one(self.on_decisions, envelope)
