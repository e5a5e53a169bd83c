"""The five scenarios of the mission through every real process (enrichment write-back is in
test_walking_skeleton.py): duplicates, lifecycle transitions, owner reassignment, email
verification — each ends where the default policy says, with its evidence — and a newer proposal
retiring an older one."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import httpx
from aiokafka import AIOKafkaProducer
from changegate.cli.devstack import DevStack
from changegate.core.contracts import CrmEvent, CrmEventKind, ObjectType
from changegate.core.contracts.base import PropertyValue
from changegate.core.contracts.envelope import make_envelope
from changegate.core.kafka import publish
from changegate.core.topics import Topic, TopicNames
from changegate.executor.crm import sandbox
from helpers import eventually, review_items


def _rid(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:8]}"


def _event(kind: CrmEventKind, record_id: str, source: str, **props: PropertyValue) -> CrmEvent:
    return CrmEvent(
        source_system=source,
        source_event_id=f"{source}-{uuid.uuid4().hex[:10]}",
        object_type=ObjectType.CONTACT,
        record_id=record_id,
        kind=kind,
        properties=props,
    )


async def _send(stack: DevStack, producer: AIOKafkaProducer, *events: CrmEvent) -> None:
    topic = TopicNames(stack.topic_prefix)(Topic.CRM_EVENTS)
    for e in events:
        await publish(producer, topic, e.record_id, make_envelope(e, service="e2e"))


async def _queue(
    client: httpx.AsyncClient, stack: DevStack, record_id: str, status: str = "pending"
) -> list[Any]:
    return await review_items(client, f"http://127.0.0.1:{stack.ports['review-api']}", record_id, status)


async def _audit(client: httpx.AsyncClient, stack: DevStack, record_id: str) -> list[Any]:
    r = await client.get(
        f"http://127.0.0.1:{stack.ports['audit']}/audit/entries", params={"record_id": record_id}
    )
    r.raise_for_status()
    rows: list[Any] = r.json()
    return rows


async def _created(
    db: asyncpg.Pool, stack: DevStack, producer: AIOKafkaProducer, rid: str, **props: PropertyValue
) -> None:
    await sandbox.upsert_record(db, ObjectType.CONTACT, rid, dict(props))
    await _send(stack, producer, _event(CrmEventKind.RECORD_CREATED, rid, "hubspot", **props))


async def test_duplicates_are_proposed_for_review_with_evidence_and_survivorship(
    stack: DevStack, db: asyncpg.Pool, client: httpx.AsyncClient, producer: AIOKafkaProducer
) -> None:
    tag = uuid.uuid4().hex[:6]
    first, second = _rid("dup-a"), _rid("dup-b")
    await _created(
        db,
        stack,
        producer,
        first,
        firstname="Robert",
        lastname=f"Zed{tag}",
        email=f"robert.zed{tag}@acme.example",
        phone="+1 415 555 0134",
        company="Acme Inc.",
        address="1 Main Street",
        zip="94107",
        city="San Francisco",
        jobtitle="CTO",
    )
    await _created(
        db,
        stack,
        producer,
        second,
        firstname="Bob",
        lastname=f"Zed{tag}",
        email=f"ROBERT.ZED{tag}@acme.example",
        phone="(415) 555-0134",
        company="Acme",
    )
    merges = await eventually(
        lambda: _queue(client, stack, second), lambda q: len(q) == 1, what="merge proposal"
    )
    proposal = merges[0]
    assert proposal["kind"] == "merge"
    assert (proposal["record_id"], proposal["other_record_ids"]) == (
        first,
        [second],
    )  # the more complete survives
    assert proposal["evidence"]["survivorship"]["rule"] == "most_complete"
    assert proposal["evidence"]["fields"]["email"]["level"] == "exact"
    assert proposal["evidence"]["fields"]["phone"]["level"] == "exact_same_name"
    assert proposal["confidence"] >= 0.9
    assert merges[0]["queue"] == "dedup"
    assert merges[0]["rule_id"] == "merge-always-review"


async def test_lifecycle_defined_event_applies_and_ai_score_waits_for_review(
    stack: DevStack, db: asyncpg.Pool, client: httpx.AsyncClient, producer: AIOKafkaProducer
) -> None:
    form, scored = _rid("life-form"), _rid("life-score")
    await _created(db, stack, producer, form, lifecyclestage="lead")
    await _created(db, stack, producer, scored, lifecyclestage="marketingqualifiedlead")
    await _send(
        stack,
        producer,
        _event(
            CrmEventKind.LIFECYCLE_EVENT, form, "forms", event="form_submission", form_type="demo_request"
        ),
        _event(CrmEventKind.SCORE, scored, "scoring", score=0.91, model="fit-v3"),
    )
    rows = await eventually(lambda: _audit(client, stack, form), lambda r: len(r) == 1, what="stage applied")
    assert (rows[0]["field"], rows[0]["previous_value"], rows[0]["new_value"]) == (
        "lifecyclestage",
        "lead",
        "marketingqualifiedlead",
    )
    assert (rows[0]["mode"], rows[0]["rule_id"]) == ("auto_applied", "lifecycle-defined-event")
    pending = await eventually(lambda: _queue(client, stack, scored), lambda q: len(q) == 1, what="AI stage")
    assert pending[0]["trigger"] == "ai_score"
    assert pending[0]["confidence"] == 0.91


async def test_owner_reassignment_and_email_verification_follow_the_policy(
    stack: DevStack, db: asyncpg.Pool, client: httpx.AsyncClient, producer: AIOKafkaProducer
) -> None:
    moved, valid, risky = _rid("owner"), _rid("email-ok"), _rid("email-risky")
    await _created(
        db, stack, producer, moved, country="United States", state="CA", hubspot_owner_id="owner-17"
    )
    await _created(db, stack, producer, valid, email=f"{valid}@acme.example")
    await _created(db, stack, producer, risky, email=f"{risky}@acme.example", email_status="valid")
    await _send(
        stack,
        producer,
        _event(
            CrmEventKind.VERIFICATION_RESULT,
            valid,
            "zerobounce",
            email=f"{valid}@acme.example",
            status="valid",
        ),
        _event(
            CrmEventKind.VERIFICATION_RESULT,
            risky,
            "neverbounce",
            email=f"{risky}@acme.example",
            status="catchall",
        ),
    )
    owned = await eventually(
        lambda: _queue(client, stack, moved), lambda q: len(q) == 1, what="owner proposal"
    )
    assert owned[0]["changes"] == [
        {"field": "hubspot_owner_id", "previous": "owner-17", "proposed": "owner-west"}
    ]
    assert owned[0]["rule_id"] == "owner-always-review"
    rows = await eventually(lambda: _audit(client, stack, valid), lambda r: len(r) == 1, what="valid applied")
    assert (rows[0]["field"], rows[0]["new_value"], rows[0]["rule_id"]) == (
        "email_status",
        "valid",
        "email-valid-auto",
    )
    queued = await eventually(
        lambda: _queue(client, stack, risky), lambda q: len(q) == 1, what="catch-all queued"
    )
    assert queued[0]["changes"][0]["proposed"] == "catch_all"


async def test_a_newer_proposal_retires_the_older_one_from_the_queue(
    stack: DevStack, db: asyncpg.Pool, client: httpx.AsyncClient, producer: AIOKafkaProducer
) -> None:
    rid = _rid("supersede")
    await _created(db, stack, producer, rid, jobtitle="Engineer")
    await _send(
        stack, producer, _event(CrmEventKind.ENRICHMENT_RESULT, rid, "clay", jobtitle="Staff Engineer")
    )
    first = await eventually(
        lambda: _queue(client, stack, rid), lambda q: len(q) == 1, what="first overwrite"
    )
    await _send(
        stack, producer, _event(CrmEventKind.ENRICHMENT_RESULT, rid, "clay", jobtitle="Principal Engineer")
    )
    await eventually(
        lambda: _queue(client, stack, rid),
        lambda q: len(q) == 1 and q[0]["proposal_id"] != first[0]["proposal_id"],
        what="only the newer proposal pending",
    )
    retired = await _queue(client, stack, rid, status="superseded")
    assert [i["proposal_id"] for i in retired] == [first[0]["proposal_id"]]
    assert retired[0]["decided_by"] == "detector"
