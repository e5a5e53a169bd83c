"""The bus is a trust boundary: decisions and executions that are unsigned, forged, tampered with, or
signed by a service that may not make them are dead-lettered by the running executor and audit,
never executed or logged."""

from __future__ import annotations

import uuid
from collections import Counter

import asyncpg
import httpx
from aiokafka import AIOKafkaProducer
from changegate.cli.devstack import DevStack
from changegate.core.contracts import (
    Decider,
    Decision,
    DecisionOutcome,
    FieldChange,
    ObjectType,
    Proposal,
    ProposalKind,
    ProposalSource,
    Trigger,
)
from changegate.core.contracts.base import utcnow
from changegate.core.contracts.envelope import make_envelope
from changegate.core.dlq import DeadLetter, read_all
from changegate.core.kafka import publish
from changegate.core.signing import SigningKey
from changegate.core.topics import Topic, TopicNames
from changegate.executor.crm import sandbox
from helpers import eventually
from hostile import good_payload
from pydantic import BaseModel


def _decision(record_id: str, kind: ProposalKind, outcome: DecisionOutcome, decided_by: Decider) -> Decision:
    field = {"merge": "merged_into", "owner_reassignment": "hubspot_owner_id"}.get(kind.value, "jobtitle")
    changes = [FieldChange(field=field, previous="Engineer", proposed="FORGED")]
    proposal = Proposal(
        proposal_id=uuid.uuid4(),
        kind=kind,
        object_type=ObjectType.CONTACT,
        record_id=record_id,
        other_record_ids=["other-1"] if kind is ProposalKind.MERGE else [],
        changes=changes,
        source=ProposalSource(
            system="x", event_id="x", detector="x", detector_version="1", trigger=Trigger.RULE
        ),
        confidence=0.99,
        rationale="forged",
        proposed_at=utcnow(),
    )
    return Decision(
        decision_id=uuid.uuid4(),
        proposal=proposal,
        outcome=outcome,
        decided_by=decided_by,
        decided_at=utcnow(),
        explanation="forged",
        final_changes=changes if outcome.executes else [],
    )


async def test_forged_decisions_and_executions_are_refused_and_dead_lettered(
    stack: DevStack, db: asyncpg.Pool, client: httpx.AsyncClient, producer: AIOKafkaProducer
) -> None:
    names = TopicNames(stack.topic_prefix)
    rid = f"victim-{uuid.uuid4().hex[:8]}"
    await sandbox.upsert_record(db, ObjectType.CONTACT, rid, {"jobtitle": "Engineer"})
    human = Decider(kind="human", identity="made-up-person@example.com")
    policy = Decider(
        kind="policy", identity="policy:x", policy_version="x", policy_hash="a" * 64, rule_id="r"
    )
    keys = {s: SigningKey.parse(k, s) for s, k in stack.signing_keys.items()}
    review_key_id = next(k for k, t in stack.trusted_keys.items() if t.signer == "review-api")
    impostor = SigningKey.generate(review_key_id, "review-api")  # a trusted key id, not its private key

    approved = _decision(rid, ProposalKind.FIELD_UPDATE, DecisionOutcome.APPROVED, human)
    tampered = (
        keys["review-api"]
        .sign(approved)
        .model_copy(
            update={"final_changes": [FieldChange(field="jobtitle", previous="Engineer", proposed="EVIL")]}
        )
    )
    forged: dict[str, BaseModel] = {
        "unsigned": approved,
        "unknown_key": SigningKey.generate("review-api-stolen", "review-api").sign(approved),
        "bad_signature": tampered,
        "impostor": impostor.sign(approved),
        # policy may never approve a merge, nor sign what a human decides
        "policy_merge": keys["policy"].sign(
            _decision(rid, ProposalKind.MERGE, DecisionOutcome.AUTO_APPROVED, policy)
        ),
        "policy_as_human": keys["policy"].sign(approved),
        "detector_approval": keys["detector"].sign(approved),
    }
    expected_reason = {
        "unsigned": "unsigned",
        "unknown_key": "unknown_key",
        "bad_signature": "bad_signature",
        "impostor": "bad_signature",
        "policy_merge": "human_required",
        "policy_as_human": "signer_not_allowed",
        "detector_approval": "signer_not_allowed",
    }
    before = Counter((x.group, x.reason) for x in await _letters(stack, names.dlq(Topic.DECISIONS)))
    for decision in forged.values():
        await publish(producer, names(Topic.DECISIONS), rid, make_envelope(decision, service="mallory"))
    # An execution nobody signed (or of an unsigned decision) never reaches the log either.
    execution = good_payload("execution", rid, keys=stack.signing_keys)
    unsigned_execution = execution.model_copy(update={"signature": None})
    await publish(
        producer, names(Topic.EXECUTIONS), rid, make_envelope(unsigned_execution, service="mallory")
    )

    expected = Counter(
        (group, reason)
        for reason in expected_reason.values()
        for group in ("changegate-executor", "changegate-audit", "changegate-detector-lifecycle")
    )
    # review-api keeps the decisions made elsewhere (to show them): the one forged as a policy
    # decision is refused there too; human decisions are its own and it takes none from the bus.
    expected[("changegate-review-api", expected_reason["policy_merge"])] += 1
    await eventually(
        lambda: _letters(stack, names.dlq(Topic.DECISIONS)),
        lambda ls: Counter((x.group, x.reason) for x in ls) - before == expected,
        what="every forged decision dead-lettered by executor, audit and the detector",
    )
    refused = await eventually(
        lambda: _letters(stack, names.dlq(Topic.EXECUTIONS)), lambda ls: len(ls) == 2, what="execution"
    )
    assert sorted((x.group, x.reason) for x in refused) == [
        ("changegate-audit", "unsigned"),
        ("changegate-review-api", "unsigned"),
    ]

    # Nothing executed, nothing logged, and the refusals are counted.
    assert (await sandbox.get_record(db, ObjectType.CONTACT, rid) or {})["jobtitle"] == "Engineer"
    entries = await client.get(
        f"http://127.0.0.1:{stack.ports['audit']}/audit/entries", params={"record_id": rid}
    )
    assert entries.json() == []
    decided = await db.fetchval(
        "SELECT count(*) FROM audit_decisions WHERE proposal_id = $1", approved.proposal.proposal_id
    )
    assert decided == 0
    metrics = (await client.get(f"http://127.0.0.1:{stack.ports['executor']}/metrics")).text
    assert 'changegate_signature_refusals_total{event_type="decision",reason="unsigned"}' in metrics


async def _letters(stack: DevStack, topic: str) -> list[DeadLetter]:
    return [x async for x in read_all(stack.settings(), topic)]
