"""The walking skeleton through every real process: enrichment auto-applied, enrichment reviewed,
replay applies nothing twice, stale proposals never overwrite, poison input is dead-lettered, and
a killed service loses nothing."""

from __future__ import annotations

import asyncio
import re
import signal
import uuid
from typing import Any

import asyncpg
import httpx
from aiokafka import AIOKafkaProducer
from changegate.cli.devstack import DevStack
from changegate.core.contracts import CrmEvent, ObjectType
from changegate.core.contracts.envelope import make_envelope
from changegate.core.kafka import publish
from changegate.core.topics import Topic, TopicNames
from changegate.executor.crm import sandbox
from helpers import created, enrichment, eventually, read_topic, review_items


def _url(stack: DevStack, service: str, path: str) -> str:
    return f"http://127.0.0.1:{stack.ports[service]}{path}"


async def _send(stack: DevStack, producer: AIOKafkaProducer, *events: CrmEvent) -> None:
    topic = TopicNames(stack.topic_prefix)(Topic.CRM_EVENTS)
    for event in events:
        await publish(producer, topic, event.record_id, make_envelope(event, service="e2e"))


async def _audit(client: httpx.AsyncClient, stack: DevStack, record_id: str) -> list[dict[str, Any]]:
    response = await client.get(_url(stack, "audit", "/audit/entries"), params={"record_id": record_id})
    response.raise_for_status()
    rows: list[dict[str, Any]] = response.json()
    return rows


async def _queue(
    client: httpx.AsyncClient, stack: DevStack, record_id: str, status: str = "pending"
) -> list[dict[str, Any]]:
    return await review_items(client, _url(stack, "review-api", ""), record_id, status)


async def _metric(
    client: httpx.AsyncClient, stack: DevStack, service: str, name: str, **labels: str
) -> float:
    text = (await client.get(_url(stack, service, "/metrics"))).text
    total = 0.0
    for line in text.splitlines():
        match = re.match(rf"^{name}(?:\{{(.*)\}})? (\S+)$", line)
        if match and all(f'{k}="{v}"' in (match[1] or "") for k, v in labels.items()):
            total += float(match[2])
    return total


def _rid(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:8]}"


async def test_enrichment_fill_auto_applies_overwrite_waits_for_a_reviewer_and_replay_changes_nothing(
    stack: DevStack, db: asyncpg.Pool, client: httpx.AsyncClient, producer: AIOKafkaProducer
) -> None:
    a, b = _rid("empty"), _rid("filled")
    await sandbox.upsert_record(db, ObjectType.CONTACT, a, {"email": "ada@acme.example", "jobtitle": ""})
    await sandbox.upsert_record(
        db, ObjectType.CONTACT, b, {"email": "bob@acme.example", "jobtitle": "Engineer"}
    )
    events = [
        created(a, email="ada@acme.example", jobtitle=""),
        created(b, email="bob@acme.example", jobtitle="Engineer"),
        enrichment(a, confidence=0.93, jobtitle="CTO"),
        enrichment(b, confidence=0.95, jobtitle="VP Engineering"),
    ]
    await _send(stack, producer, *events)

    # Path 1: an empty field filled by a confident source applies by itself, and is audited.
    rows = await eventually(lambda: _audit(client, stack, a), lambda r: len(r) == 1, what="audit row of A")
    row = rows[0]
    assert (row["field"], row["previous_value"], row["new_value"]) == ("jobtitle", "", "CTO")
    assert (row["mode"], row["rule_id"], row["source_system"]) == (
        "auto_applied",
        "enrichment-fill-empty",
        "clay",
    )
    assert row["approver"] == f"policy:{row['policy_version']}"
    assert re.fullmatch(r"[0-9a-f]{64}", row["policy_hash"])
    assert row["confidence"] == 0.93
    assert row["proposed_at"] <= row["decided_at"] <= row["executed_at"]
    assert (await sandbox.get_record(db, ObjectType.CONTACT, a) or {})["jobtitle"] == "CTO"

    # Path 2: an overwrite waits in the review queue; nothing is written until a human approves.
    pending = await eventually(lambda: _queue(client, stack, b), lambda q: len(q) == 1, what="B pending")
    proposal_id = pending[0]["proposal_id"]
    assert pending[0]["changes"] == [
        {"field": "jobtitle", "previous": "Engineer", "proposed": "VP Engineering"}
    ]
    assert (await sandbox.get_record(db, ObjectType.CONTACT, b) or {})["jobtitle"] == "Engineer"
    assert await _audit(client, stack, b) == []

    approve = _url(stack, "review-api", f"/v1/proposals/{proposal_id}/approve")
    async with httpx.AsyncClient() as anonymous:
        assert (await anonymous.post(approve)).status_code == 401
        assert (await anonymous.post(approve, headers={"Authorization": "Bearer forged"})).status_code == 401
    # The approver is the token's principal; a self-declared identity in the body is refused.
    spoof = await client.post(approve, json={"comment": "ok", "approver": "mallory"})
    assert spoof.status_code == 422
    response = await client.post(approve, json={"comment": "checked on LinkedIn"})
    assert response.status_code == 200, response.text
    assert response.json()["item"]["decided_by"] == "alice@example.com"
    assert (await client.post(approve)).status_code == 409

    rows = await eventually(lambda: _audit(client, stack, b), lambda r: len(r) == 1, what="audit row of B")
    # The review queue shows what became of the approval, not 'approved' forever.
    item_url = _url(stack, "review-api", f"/v1/proposals/{proposal_id}")

    async def item() -> dict[str, Any]:
        body: dict[str, Any] = (await client.get(item_url)).json()
        return body

    shown = await eventually(
        item, lambda i: i["execution"] is not None, what="execution outcome in the queue"
    )
    assert (shown["status"], shown["execution"]["status"]) == ("approved", "applied")
    assert (rows[0]["mode"], rows[0]["approver"]) == ("approved", "alice@example.com")
    assert (rows[0]["previous_value"], rows[0]["new_value"]) == ("Engineer", "VP Engineering")
    assert rows[0]["policy_hash"] is None
    assert (await sandbox.get_record(db, ObjectType.CONTACT, b) or {})["jobtitle"] == "VP Engineering"

    # Second run of the same events on the same stack: every stage sees them, nothing applies twice.
    versions = await db.fetch(
        "SELECT record_id, version FROM sandbox_crm_records WHERE record_id = ANY($1)", [a, b]
    )
    redetected = await _metric(client, stack, "detector", "changegate_detector_redetected_total")
    routed = await _metric(client, stack, "policy", "changegate_policy_decisions_total")
    await _send(stack, producer, *events)
    # The detector finds the same proposals again, and knows they were decided: none is raised.
    await eventually(
        lambda: _metric(client, stack, "detector", "changegate_detector_redetected_total"),
        lambda n: n >= redetected + 2,
        what="the detector to recognise the decided proposals",
    )
    assert await _metric(client, stack, "policy", "changegate_policy_decisions_total") == routed
    assert len(await _audit(client, stack, a)) == 1
    assert len(await _audit(client, stack, b)) == 1
    assert await _queue(client, stack, b) == []
    assert (
        await db.fetch("SELECT record_id, version FROM sandbox_crm_records WHERE record_id = ANY($1)", [a, b])
        == versions
    )
    verify = (await client.get(_url(stack, "audit", "/audit/verify"))).json()
    assert verify["ok"] is True, verify


async def test_a_stale_proposal_never_overwrites_and_goes_back_to_review(
    stack: DevStack, db: asyncpg.Pool, client: httpx.AsyncClient, producer: AIOKafkaProducer
) -> None:
    c = _rid("stale")
    await sandbox.upsert_record(db, ObjectType.CONTACT, c, {"jobtitle": "Analyst"})
    await _send(stack, producer, created(c, jobtitle="Analyst"), enrichment(c, jobtitle="Head of Data"))
    pending = await eventually(lambda: _queue(client, stack, c), lambda q: len(q) == 1, what="C pending")
    # Sales edits the record in the CRM while the proposal waits.
    await sandbox.upsert_record(db, ObjectType.CONTACT, c, {"jobtitle": "Director"})

    url = _url(stack, "review-api", f"/v1/proposals/{pending[0]['proposal_id']}/approve")
    assert (await client.post(url)).status_code == 200
    refreshed = await eventually(
        lambda: _queue(client, stack, c),
        lambda q: len(q) == 1 and q[0]["proposal_id"] != pending[0]["proposal_id"],
        what="the re-proposal with the new context",
    )
    assert refreshed[0]["changes"] == [
        {"field": "jobtitle", "previous": "Director", "proposed": "Head of Data"}
    ]
    assert refreshed[0]["evidence"]["conflict"]["values_at_execution"] == {"jobtitle": "Director"}
    # Its rationale is about its own values, not the first proposal's.
    assert refreshed[0]["rationale"].startswith(
        "re-proposed because the record changed after the first proposal was approved: "
        "jobtitle now holds 'Director', still proposed 'Head of Data'."
    )
    # The first item's history says it was re-proposed, and as what.
    first = (await client.get(_url(stack, "review-api", f"/v1/proposals/{pending[0]['proposal_id']}"))).json()
    # (two topics: the execution and the re-proposal may arrive in either order)
    events = {e["event"]: e for e in first["history"][-2:]}
    assert set(events) == {"conflicted", "re-proposed"}
    assert events["re-proposed"]["detail"] == {"proposal_id": refreshed[0]["proposal_id"]}
    assert (await sandbox.get_record(db, ObjectType.CONTACT, c) or {})["jobtitle"] == "Director"
    assert await _audit(client, stack, c) == []
    assert await _metric(client, stack, "executor", "changegate_executions_total", status="conflict") >= 1


async def test_poison_input_is_dead_lettered_and_the_pipeline_keeps_going(
    stack: DevStack, db: asyncpg.Pool, client: httpx.AsyncClient, producer: AIOKafkaProducer
) -> None:
    names = TopicNames(stack.topic_prefix)
    d = _rid("after-poison")
    await producer.send_and_wait(names(Topic.CRM_EVENTS), b'{"event_type": "crm_event"}', key=d.encode())
    await sandbox.upsert_record(db, ObjectType.CONTACT, d, {"jobtitle": None})
    await _send(stack, producer, created(d), enrichment(d, jobtitle="CFO"))
    await eventually(
        lambda: _audit(client, stack, d), lambda r: len(r) == 1, what="the event after the poison"
    )
    dead = await read_topic(stack.settings().kafka_bootstrap_servers, names.dlq(Topic.CRM_EVENTS), 1)
    headers = dict(dead[0].headers)  # type: ignore[attr-defined]
    assert headers["x-changegate-reason"] == b"undecodable"
    assert b"invalid schema_version None" in headers["x-changegate-error"]
    assert headers["x-changegate-consumer-group"] == b"changegate-detector"


async def test_killed_services_lose_nothing_and_apply_nothing_twice(
    stack: DevStack, db: asyncpg.Pool, client: httpx.AsyncClient, producer: AIOKafkaProducer
) -> None:
    ids = [_rid(f"crash{i}") for i in range(40)]
    for rid in ids:
        await sandbox.upsert_record(db, ObjectType.CONTACT, rid, {"jobtitle": ""})

    async def feed() -> None:
        for rid in ids:
            await _send(stack, producer, created(rid), enrichment(rid, jobtitle="COO"))
            await asyncio.sleep(0.02)

    # Kill (SIGKILL: no shutdown, no commit) while events are still arriving and being processed.
    feeding = asyncio.create_task(feed())
    await asyncio.sleep(0.3)
    await asyncio.to_thread(stack.restart, "detector", signal.SIGKILL)
    await asyncio.to_thread(stack.restart, "executor", signal.SIGKILL)
    await asyncio.to_thread(stack.restart, "policy", signal.SIGKILL)
    await feeding

    async def applied() -> int:
        n: int = await db.fetchval(
            "SELECT count(*) FROM sandbox_crm_records"
            " WHERE record_id = ANY($1) AND properties->>'jobtitle' = 'COO'",
            ids,
        )
        return n

    await eventually(applied, lambda n: n == len(ids), timeout=60, what="every change applied")
    await eventually(
        lambda: _audit_count(client, stack, ids),
        lambda n: n == len(ids),
        timeout=30,
        what="every change audited",
    )
    rows = [r for rid in ids for r in await _audit(client, stack, rid)]
    versions = await db.fetch("SELECT version FROM sandbox_crm_records WHERE record_id = ANY($1)", ids)
    assert {v["version"] for v in versions} == {2}, "a record was written more than once"
    assert len({r["execution_id"] for r in rows}) == len(rows)


async def _audit_count(client: httpx.AsyncClient, stack: DevStack, ids: list[str]) -> int:
    return sum([len(await _audit(client, stack, rid)) for rid in ids])


async def test_a_graceful_restart_redelivers_nothing(
    stack: DevStack, db: asyncpg.Pool, client: httpx.AsyncClient, producer: AIOKafkaProducer
) -> None:
    """Offsets are committed for what was processed: after SIGTERM and restart, the detector and the
    executor see only new events (their fresh counters show no duplicate)."""
    before, after = _rid("before-restart"), _rid("after-restart")
    for rid in (before, after):
        await sandbox.upsert_record(db, ObjectType.CONTACT, rid, {"jobtitle": ""})
    await _send(stack, producer, created(before), enrichment(before, jobtitle="CMO"))
    await eventually(lambda: _audit(client, stack, before), lambda r: len(r) == 1, what="first change")
    stack.restart("detector")
    stack.restart("executor")
    await _send(stack, producer, created(after), enrichment(after, jobtitle="CMO"))
    await eventually(lambda: _audit(client, stack, after), lambda r: len(r) == 1, what="second change")
    seen = await _metric(client, stack, "detector", "changegate_detector_events_total")
    duplicates = await _metric(
        client, stack, "detector", "changegate_detector_events_total", outcome="duplicate"
    )
    assert (seen, duplicates) == (2, 0)
    assert await _metric(client, stack, "executor", "changegate_executions_total") == 1
