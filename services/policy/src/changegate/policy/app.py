"""Policy service entrypoint: consume proposals, route each by the policy, produce the result.

Stateless: a redelivered proposal yields the same decision id and event id (deterministic from the
proposal and the policy hash), so downstream deduplication makes routing effectively once."""

from __future__ import annotations

from typing import Any

from aiokafka import AIOKafkaProducer
from changegate.core.contracts import Decider, Decision, DecisionOutcome, Proposal
from changegate.core.contracts.base import utcnow
from changegate.core.contracts.envelope import Envelope, make_envelope
from changegate.core.kafka import ConsumerLoop, Subscription, publish
from changegate.core.logging import configure_logging, get_logger
from changegate.core.service import ServiceRuntime
from changegate.core.topics import Topic, TopicNames
from changegate.policy.engine import Action, Policy
from changegate.policy.settings import PolicySettings
from prometheus_client import Counter, Histogram, Info

SERVICE = "policy"
log = get_logger(__name__)

DECISIONS = Counter(
    "changegate_policy_decisions_total",
    "Proposals routed, by route, rule and kind",
    ["route", "rule", "kind"],
)
EVALUATION_SECONDS = Histogram(
    "changegate_policy_evaluation_duration_seconds",
    "Time to evaluate one proposal",
    buckets=(1e-5, 5e-5, 1e-4, 5e-4, 1e-3, 5e-3),
)
POLICY_INFO = Info("changegate_policy", "The policy in force")


class Router:
    def __init__(self, policy: Policy, producer: AIOKafkaProducer, names: TopicNames) -> None:
        self.policy, self.producer, self.names = policy, producer, names

    def decide(self, proposal: Proposal) -> tuple[Action, Decision | None]:
        with EVALUATION_SECONDS.time():
            route = self.policy.evaluate(proposal)
        DECISIONS.labels(route=route.action.value, rule=route.rule_id, kind=proposal.kind.value).inc()
        if route.action is Action.REVIEW:
            return route.action, None
        outcome = (
            DecisionOutcome.AUTO_APPROVED if route.action is Action.AUTO_APPLY else DecisionOutcome.REJECTED
        )
        decision = Decision(
            decision_id=Decision.policy_decision_id(proposal.proposal_id, self.policy.content_hash),
            proposal=proposal,
            outcome=outcome,
            decided_by=Decider(
                kind="policy",
                identity=f"policy:{self.policy.version}",
                policy_version=self.policy.version,
                policy_hash=self.policy.content_hash,
                rule_id=route.rule_id,
            ),
            decided_at=utcnow(),
            explanation=route.explanation,
            final_changes=list(proposal.changes) if outcome.executes else [],
        )
        return route.action, decision

    async def handle(self, envelope: Envelope[Any]) -> None:
        proposal: Proposal = envelope.payload
        action, decision = self.decide(proposal)
        if decision is None:
            out = make_envelope(
                proposal,
                service=SERVICE,
                correlation_id=proposal.proposal_id,
                dedup_key=f"pending|{proposal.proposal_id}",
            )
            await publish(self.producer, self.names(Topic.PROPOSALS_PENDING), proposal.record_id, out)
        else:
            out = make_envelope(
                decision,
                service=SERVICE,
                correlation_id=proposal.proposal_id,
                dedup_key=str(decision.decision_id),
            )
            await publish(self.producer, self.names(Topic.DECISIONS), proposal.record_id, out)
        log.info("routed", action=action.value, kind=proposal.kind.value)


async def main() -> None:
    settings = PolicySettings()
    configure_logging(SERVICE, settings.log_level, settings.log_format)
    policy = Policy.load(settings.policy_file)
    POLICY_INFO.info({"version": policy.version, "hash": policy.content_hash, "source": policy.source})
    log.info("policy loaded", version=policy.version, hash=policy.content_hash, source=policy.source)
    runtime = ServiceRuntime(SERVICE, settings)
    producer = await runtime.open_producer()
    router = Router(policy, producer, TopicNames(settings.topic_prefix))
    loop = ConsumerLoop(
        settings,
        "changegate-policy",
        [Subscription(Topic.PROPOSALS, router.handle, frozenset({"proposal"}))],
        producer,
        runtime.stop,
    )
    runtime.checks["consumer"] = loop.ready.is_set
    try:
        await runtime.run(runtime.app(), [loop.run])
    finally:
        await producer.stop()
