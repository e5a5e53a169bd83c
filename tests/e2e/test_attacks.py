"""The eight attacks of issue 16, reproduced against the running services and the real PostgreSQL:
each refused, counted, dead-lettered with its reason where it travels on the bus, nothing written
to the CRM, and every change that was applied on the audit log.

1. an unsigned proposal that auto-applies an owner and an email change;
2. the policy's key signing what executes a human-only change, or other changes than proposed,
   or under a policy version the policy service never loaded;
3. a service's database role taking over an API token (and ingest having a role at all);
4. a service's role claiming another's events (silencing audit) or dropping its outbox;
5. a scoped viewer or reviewer reading beyond their scopes;
6. self-approval under another spelling of one's own identity;
7. a gzip batch that inflates to 256 MiB;
8. a malformed Content-Length answered in plain text by the HTTP server."""

from __future__ import annotations

import asyncio
import gzip
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.structs import RecordMetadata
from changegate.cli.devstack import DevStack
from changegate.core.auth import Role
from changegate.core.auth.tokens import create_token, revoke_token
from changegate.core.contracts import (
    Decider,
    Decision,
    DecisionOutcome,
    Execution,
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
from changegate.core.roles import role_dsn
from changegate.core.serde import encode
from changegate.core.signing import SigningKey
from changegate.core.topics import TOPICS, Topic, TopicNames
from changegate.executor.crm import sandbox
from helpers import CONSUMER_GROUPS, audited, enrichment, eventually, review_items, send_created
from hostile import good_message
from pydantic import BaseModel

C = ObjectType.CONTACT
VICTIM = {
    "hubspot_owner_id": "owner-a",
    "email": "a@victim.example",
    "lifecyclestage": "lead",
    "jobtitle": None,
}
GROUPS_OF_DECISIONS = ("changegate-executor", "changegate-audit")


def _keys(stack: DevStack) -> dict[str, SigningKey]:
    return {s: SigningKey.parse(k, s) for s, k in stack.signing_keys.items()}


async def _victim(db: asyncpg.Pool) -> str:
    rid = f"victim-{uuid.uuid4().hex[:8]}"
    await sandbox.upsert_record(db, C, rid, dict(VICTIM))
    return rid


def _proposal(
    rid: str, kind: ProposalKind, trigger: Trigger, changes: list[FieldChange], detector: str = "mallory"
) -> Proposal:
    return Proposal(
        proposal_id=uuid.uuid4(),
        kind=kind,
        object_type=C,
        record_id=rid,
        changes=changes,
        source=ProposalSource(
            system="forms",
            event_id=f"e-{uuid.uuid4().hex[:6]}",
            detector=detector,
            detector_version="1",
            trigger=trigger,
        ),
        confidence=0.99,
        rationale="a demo request",
        proposed_at=utcnow(),
    )


TAKEOVER = [
    FieldChange(field="hubspot_owner_id", previous="owner-a", proposed="owner-evil"),
    FieldChange(field="email", previous="a@victim.example", proposed="attacker@evil.example"),
]


async def _publish(
    producer: AIOKafkaProducer, stack: DevStack, topic: Topic, key: str, payload: BaseModel
) -> RecordMetadata:
    metadata: RecordMetadata = await producer.send_and_wait(
        TopicNames(stack.topic_prefix)(topic),
        encode(make_envelope(payload, service="mallory")),
        key=key.encode(),
    )
    return metadata


async def _refusals(
    stack: DevStack, topic: Topic, sent: list[RecordMetadata], groups: set[str]
) -> dict[tuple[int, str], str]:
    """(offset, group) -> reason of the dead letters of ``sent``, once every group refused each."""
    wanted = {(m.partition, m.offset) for m in sent}

    async def letters() -> dict[tuple[int, str], str]:
        found: dict[tuple[int, str], str] = {}
        letter: DeadLetter
        async for letter in read_all(stack.settings(), TopicNames(stack.topic_prefix).dlq(topic)):
            source = letter.source
            if source and (source[1], source[2]) in wanted and letter.group in groups:
                found[(source[2], letter.group)] = letter.reason
        return found

    return await eventually(
        letters, lambda f: len(f) == len(wanted) * len(groups), timeout=60, what=f"{topic} refused"
    )


async def _metric(stack: DevStack, service: str, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples on ``service``'s /metrics that carry every one of ``labels``."""
    async with httpx.AsyncClient(timeout=5) as client:
        text = (await client.get(f"http://127.0.0.1:{stack.ports[service]}/metrics")).text
    wanted = {f'{k}="{v}"' for k, v in labels.items()}
    total = 0.0
    for line in text.splitlines():
        sample, _, value = line.rpartition(" ")
        metric, _, label_text = sample.partition("{")
        if metric == name and wanted <= set(label_text.rstrip("}").split(",")):
            total += float(value)
    return total


async def _unchanged(db: asyncpg.Pool, client: httpx.AsyncClient, stack: DevStack, rid: str) -> None:
    assert await sandbox.get_record(db, C, rid) == VICTIM
    assert await audited(client, stack, rid) == []


# 1 -------------------------------------------------------------------------------------------------


async def test_1_an_unsigned_proposal_is_dead_lettered_never_routed(
    stack: DevStack, db: asyncpg.Pool, client: httpx.AsyncClient, producer: AIOKafkaProducer
) -> None:
    rid = await _victim(db)
    unsigned = _proposal(rid, ProposalKind.LIFECYCLE_TRANSITION, Trigger.DEFINED_EVENT, TAKEOVER)
    # Even with the detector's key, a "lifecycle transition" may not carry an owner or an email.
    disguised = _keys(stack)["detector"].sign(
        _proposal(rid, ProposalKind.LIFECYCLE_TRANSITION, Trigger.DEFINED_EVENT, TAKEOVER)
    )
    refusals = "changegate_signature_refusals_total"
    before = await _metric(stack, "policy", refusals, event_type="proposal", reason="unsigned")
    sent = [await _publish(producer, stack, Topic.PROPOSALS, rid, p) for p in (unsigned, disguised)]
    refused = await _refusals(stack, Topic.PROPOSALS, sent, {"changegate-policy"})
    assert sorted(refused.values()) == ["fields_not_of_kind", "unsigned"]
    after = await _metric(stack, "policy", refusals, event_type="proposal", reason="unsigned")
    assert after >= before + 1  # once per delivery (at least once)
    routed = await db.fetchval(
        "SELECT count(*) FROM policy_routes WHERE proposal_id = ANY($1::uuid[])",
        [unsigned.proposal_id, disguised.proposal_id],
    )
    assert routed == 0
    await _unchanged(db, client, stack, rid)


# 2 -------------------------------------------------------------------------------------------------


async def test_2_the_policy_key_cannot_execute_what_a_human_must_decide_nor_other_changes(
    stack: DevStack, db: asyncpg.Pool, client: httpx.AsyncClient, producer: AIOKafkaProducer
) -> None:
    rid = await _victim(db)
    keys = _keys(stack)
    recorded = await db.fetchrow("SELECT version, policy_hash FROM changegate_policy_versions LIMIT 1")
    assert recorded is not None

    def by_policy(hash_: str = recorded["policy_hash"], version: str = recorded["version"]) -> Decider:
        return Decider(
            kind="policy",
            identity=f"policy:{version}",
            policy_version=version,
            policy_hash=hash_,
            rule_id="r",
        )

    def auto(
        proposal: Proposal, final: list[FieldChange] | None = None, decider: Decider | None = None
    ) -> Decision:
        return keys["policy"].sign(
            Decision(
                decision_id=uuid.uuid4(),
                proposal=proposal,
                outcome=DecisionOutcome.AUTO_APPROVED,
                decided_by=decider or by_policy(),
                decided_at=utcnow(),
                explanation="auto-applied",
                final_changes=final if final is not None else list(proposal.changes),
            )
        )

    owner = [TAKEOVER[0]]
    jobtitle = [FieldChange(field="jobtitle", previous=None, proposed="CTO")]
    detector_signed = keys["detector"].sign(
        _proposal(rid, ProposalKind.FIELD_UPDATE, Trigger.ENRICHMENT, jobtitle)
    )
    forged = {
        "fields_not_of_kind": auto(_proposal(rid, ProposalKind.FIELD_UPDATE, Trigger.RULE, owner)),
        "fields_not_of_kind ": auto(
            _proposal(rid, ProposalKind.LIFECYCLE_TRANSITION, Trigger.DEFINED_EVENT, owner)
        ),
        "changes_differ": auto(detector_signed, TAKEOVER),
        "human_required": auto(
            keys["detector"].sign(_proposal(rid, ProposalKind.OWNER_REASSIGNMENT, Trigger.RULE, owner))
        ),
        "proposal_unsigned": auto(_proposal(rid, ProposalKind.FIELD_UPDATE, Trigger.ENRICHMENT, jobtitle)),
        "unknown_policy_version": auto(detector_signed, decider=by_policy("f" * 64, "made-up")),
    }
    sent = [await _publish(producer, stack, Topic.DECISIONS, rid, d) for d in forged.values()]
    refused = await _refusals(stack, Topic.DECISIONS, sent, set(GROUPS_OF_DECISIONS))
    for group in GROUPS_OF_DECISIONS:
        assert [refused[(m.offset, group)] for m in sent] == [r.strip() for r in forged], group
    for reason in ("fields_not_of_kind", "changes_differ", "human_required", "unknown_policy_version"):
        counted = await _metric(
            stack, "executor", "changegate_signature_refusals_total", event_type="decision", reason=reason
        )
        assert counted >= 1, reason
    await _unchanged(db, client, stack, rid)
    decided = await db.fetchval(
        "SELECT count(*) FROM audit_decisions WHERE decision_id = ANY($1::uuid[])",
        [d.decision_id for d in forged.values()],
    )
    assert decided == 0


# 3 -------------------------------------------------------------------------------------------------


async def test_3_no_service_role_can_take_over_an_api_token_and_ingest_has_none(
    stack: DevStack, db: asyncpg.Pool
) -> None:
    owner_dsn = stack.settings().database_url
    token_id, token = await create_token(db, "victim@example.com", Role.REVIEWER, created_by="test")
    assert await revoke_token(db, token_id)
    for service in ("review-api", "audit", "detector", "policy", "executor"):
        conn = await asyncpg.connect(role_dsn(owner_dsn, service, stack.role_passwords[service]))
        try:
            for statement in (
                "UPDATE changegate_api_tokens SET role = 'admin', revoked_at = NULL, expires_at = NULL"
                " WHERE id = $1",
                "UPDATE changegate_api_tokens SET secret_hash = sha256('mine') WHERE id = $1",
            ):
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    await conn.execute(statement, token_id)
        finally:
            await conn.close()
    with pytest.raises((asyncpg.InvalidAuthorizationSpecificationError, asyncpg.InvalidPasswordError)):
        await asyncpg.connect(role_dsn(owner_dsn, "audit").replace("changegate_audit", "changegate_ingest"))
    assert "CHANGEGATE_DATABASE_URL" not in stack.env("ingest")
    row = await db.fetchrow("SELECT role, revoked_at FROM changegate_api_tokens WHERE id = $1", token_id)
    assert row is not None
    assert (row["role"], row["revoked_at"] is not None) == ("reviewer", True)
    async with httpx.AsyncClient(timeout=5) as client:
        response = await client.get(
            f"http://127.0.0.1:{stack.ports['review-api']}/v1/proposals",
            headers={"Authorization": f"Bearer {token}"},
        )
    assert response.status_code == 401


# 4 -------------------------------------------------------------------------------------------------


async def test_4_no_role_can_claim_anothers_events_or_drop_its_messages(
    stack: DevStack, db: asyncpg.Pool, client: httpx.AsyncClient, producer: AIOKafkaProducer
) -> None:
    """The attack: as the policy role, claim ('audit-executions', <execution id>) of a change about
    to be applied, so that audit skips it and verify still says intact."""
    rid = f"claimed-{uuid.uuid4().hex[:8]}"
    await sandbox.upsert_record(db, C, rid, {"jobtitle": "Engineer"})
    await send_created(stack, producer, rid, firstname="Claire", jobtitle="Engineer")
    event = enrichment(rid, confidence=0.95, jobtitle="CTO")
    await producer.send_and_wait(
        TopicNames(stack.topic_prefix)(Topic.CRM_EVENTS),
        encode(make_envelope(event, service="e2e")),
        key=rid.encode(),
    )
    review = f"http://127.0.0.1:{stack.ports['review-api']}"

    async def pending() -> list[dict[str, Any]]:
        return await review_items(client, review, rid)

    [item] = await eventually(pending, lambda q: len(q) == 1, what="the overwrite waiting for review")
    policy = await asyncpg.connect(
        role_dsn(stack.settings().database_url, "policy", stack.role_passwords["policy"])
    )
    try:
        approved = await client.post(f"{review}/v1/proposals/{item['proposal_id']}/approve", json={})
        execution_id = Execution.make_id(uuid.UUID(approved.json()["decision_id"]))
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await policy.execute(
                "INSERT INTO changegate_processed_events (consumer, event_id)"
                " VALUES ('audit-executions', $1)",
                execution_id,
            )
        deleted = await policy.execute("DELETE FROM changegate_outbox WHERE service <> 'policy'")
        assert deleted == "DELETE 0"
        assert (
            await policy.fetchval(
                "SELECT count(*) FROM changegate_processed_events WHERE consumer <> 'policy'"
            )
            == 0
        )
    finally:
        await policy.close()
    rows = await eventually(
        lambda: audited(client, stack, rid), lambda r: len(r) == 1, what="the change on the log"
    )
    assert (rows[0]["field"], rows[0]["new_value"]) == ("jobtitle", "CTO")
    verified = (await client.get(f"http://127.0.0.1:{stack.ports['audit']}/audit/verify")).json()
    assert verified["ok"] is True


# 5 and 6 -------------------------------------------------------------------------------------------


async def test_5_scopes_limit_reading_and_6_no_spelling_of_oneself_approves_ones_own_request(
    stack: DevStack, db: asyncpg.Pool, producer: AIOKafkaProducer
) -> None:
    review = f"http://127.0.0.1:{stack.ports['review-api']}"
    _, dedup_viewer = await create_token(
        db, "dedup-viewer@example.com", Role.VIEWER, created_by="t", queues=["dedup"]
    )
    _, dedup_reviewer = await create_token(
        db, "dedup-rev@example.com", Role.REVIEWER, created_by="t", queues=["dedup"]
    )
    _, self_x = await create_token(db, "Self-x@Example.com", Role.REVIEWER, created_by="t")
    rid = f"self-{uuid.uuid4().hex[:8]}"
    await send_created(stack, producer, rid, firstname="Sam", jobtitle="Engineer")
    event = enrichment(rid, confidence=0.95, jobtitle="Head of Sales").model_copy(
        update={"requested_by": "self-x@example.com"}
    )
    await producer.send_and_wait(
        TopicNames(stack.topic_prefix)(Topic.CRM_EVENTS),
        encode(make_envelope(event, service="e2e")),
        key=rid.encode(),
    )
    admin = {"Authorization": f"Bearer {stack.issued['alice@example.com']}"}
    async with httpx.AsyncClient(timeout=10) as client:

        async def mine() -> list[dict[str, Any]]:
            client.headers.update(admin)
            return await review_items(client, review, rid)

        [item] = await eventually(mine, lambda q: len(q) == 1, what="the requested change waiting for review")
        assert item["queue"] != "dedup"
        for token in (dedup_viewer, dedup_reviewer):
            auth = {"Authorization": f"Bearer {token}"}
            listed = (await client.get(f"{review}/v1/proposals", params={"limit": 200}, headers=auth)).json()[
                "items"
            ]
            assert {i["queue"] for i in listed} <= {"dedup"}
            assert item["proposal_id"] not in {i["proposal_id"] for i in listed}
            assert (
                await client.get(f"{review}/v1/proposals/{item['proposal_id']}", headers=auth)
            ).status_code == 404
            stats = (await client.get(f"{review}/v1/stats", headers=auth)).json()["queues"]
            assert {c["queue"] for c in stats} <= {"dedup"}
            audit = await client.get(f"http://127.0.0.1:{stack.ports['audit']}/audit/entries", headers=auth)
            assert audit.status_code == 403
        denied = await client.post(
            f"{review}/v1/proposals/{item['proposal_id']}/approve",
            headers={"Authorization": f"Bearer {self_x}"},
        )
        assert denied.status_code == 403
        assert denied.json()["detail"] == "you requested this change: another reviewer must approve it"
    failures = "changegate_auth_failures_total"
    assert await _metric(stack, "review-api", failures, reason="self_approval") >= 1
    assert await _metric(stack, "review-api", failures, reason="out_of_scope") >= 2
    async with httpx.AsyncClient(timeout=10) as client:
        assert (await client.get(f"{review}/v1/proposals/{item['proposal_id']}", headers=admin)).json()[
            "status"
        ] == "pending"


# 7 -------------------------------------------------------------------------------------------------


@pytest.fixture
async def bomb_producer(stack: DevStack) -> AsyncIterator[AIOKafkaProducer]:
    producer = AIOKafkaProducer(
        bootstrap_servers=stack.settings().kafka_bootstrap_servers,
        enable_idempotence=False,
        compression_type="gzip",
        max_request_size=300 * 1024 * 1024,  # checked before compression: the batch on the wire is small
        max_batch_size=300 * 1024 * 1024,
    )
    await producer.start()
    yield producer
    await producer.stop()


def _peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="peak memory is read from /proc")
async def test_7_a_gzip_bomb_is_refused_before_any_consumer_inflates_it(
    stack: DevStack, bomb_producer: AIOKafkaProducer, producer: AIOKafkaProducer
) -> None:
    names = TopicNames(stack.topic_prefix)
    bomb = b"\0" * (256 * 1024 * 1024)
    assert len(gzip.compress(bomb, 6)) < 300_000  # about what went over the wire (261 KB in the report)
    peaks = {s: _peak_rss(p.proc.pid) for s, p in stack.services.items()}
    groups = {t: CONSUMER_GROUPS[t] for t in (Topic.CRM_EVENTS, Topic.DECISIONS)}
    for topic, consumers in groups.items():
        sent = await bomb_producer.send_and_wait(names(topic), bomb, key=b"bomb", partition=0)
        good = await producer.send_and_wait(
            names(topic),
            good_message(TOPICS[topic].event_type, keys=stack.signing_keys),
            key=b"bomb",
            partition=0,
        )
        refused = await _refusals(stack, topic, [sent], consumers)
        assert set(refused.values()) == {"decompression_limit"}
        for service in {"detector"} if topic is Topic.CRM_EVENTS else {"executor", "audit", "policy"}:
            dead = await _metric(
                stack,
                service,
                "changegate_dead_letters_total",
                topic=names(topic),
                reason="decompression_limit",
            )
            assert dead >= 1, service
        # … and each group moved past it: the good message after it is not dead-lettered, and the
        # group commits beyond it.
        past = (consumers, names(topic), good.offset)
        await eventually(
            lambda past=past: _committed_all(stack, *past),  # type: ignore[misc]
            bool,
            timeout=60,
            what="past the bomb",
        )
    del bomb
    async with httpx.AsyncClient(timeout=5) as client:
        for service, svc in stack.services.items():
            assert svc.proc.poll() is None, f"{service} exited:\n{svc.tail()}"
            assert (await client.get(f"http://127.0.0.1:{svc.port}/readyz")).status_code == 200, service
    grown = {s: _peak_rss(stack.services[s].proc.pid) - peaks[s] for s in peaks}
    # Inflating it would have taken 256 MiB at least (and its copy): no consumer came near.
    assert all(g < 64 * 1024 * 1024 for g in grown.values()), grown


async def _committed_all(stack: DevStack, groups: set[str], topic: str, offset: int) -> bool:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    for group in groups:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=stack.settings().kafka_bootstrap_servers, group_id=group
        )
        await consumer.start()
        try:
            if (await consumer.committed(TopicPartition(topic, 0)) or 0) <= offset:
                return False
        finally:
            await consumer.stop()
    return True


# 8 -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("service", ["review-api", "audit", "ingest", "executor", "policy", "detector"])
async def test_8_a_malformed_content_length_is_a_problem_from_every_http_server(
    stack: DevStack, service: str
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.ports[service])
    writer.write(b"POST /proposals HTTP/1.1\r\nHost: x\r\nContent-Length: 1x\r\n\r\n{}")
    await writer.drain()
    raw = await reader.read()
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ")
    assert b"content-type: application/problem+json" in head.lower()
    assert json.loads(body)["status"] == 400
