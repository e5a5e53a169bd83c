"""The audit log through every real process: each outcome a proposal can have lands in the chain
(auto-applied, approved, approved with changes, rejected, expired, superseded, conflict, failed,
noop) with its reason; a real export passes the standalone verifier in docs/ and a tampered one
fails; the checkpoint of the head is published."""

from __future__ import annotations

import asyncio
import functools
import json
import uuid
from pathlib import Path
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
from helpers import (
    audit_public_key,
    created,
    enrichment,
    eventually,
    review_items,
    run_audit_verifier,
)


def _rid(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:8]}"


async def _send(stack: DevStack, producer: AIOKafkaProducer, *events: CrmEvent) -> None:
    topic = TopicNames(stack.topic_prefix)(Topic.CRM_EVENTS)
    for event in events:
        await publish(producer, topic, event.record_id, make_envelope(event, service="e2e"))


async def _history(client: httpx.AsyncClient, stack: DevStack, rid: str) -> list[dict[str, Any]]:
    url = f"http://127.0.0.1:{stack.ports['audit']}/v1/audit/records/contact/{rid}/history"
    response = await client.get(url)
    response.raise_for_status()
    items: list[dict[str, Any]] = response.json()["items"]
    return items


async def test_every_outcome_is_in_the_chain_and_an_export_verifies_standalone(
    stack: DevStack,
    db: asyncpg.Pool,
    client: httpx.AsyncClient,
    producer: AIOKafkaProducer,
    tmp_path: Path,
) -> None:
    review = f"http://127.0.0.1:{stack.ports['review-api']}"
    audit = f"http://127.0.0.1:{stack.ports['audit']}"
    rid = {k: _rid(k) for k in ("auto", "approve", "modify", "reject", "expire", "supersede", "conflict")}
    rid |= {k: _rid(k) for k in ("failed", "noop")}
    for label, record in rid.items():
        title = "" if label == "auto" else "Engineer"
        await sandbox.upsert_record(
            db, ObjectType.CONTACT, record, {"email": f"{label}@x.example", "jobtitle": title}
        )
        await _send(stack, producer, created(record, email=f"{label}@x.example", jobtitle=title))
    await _send(stack, producer, *[enrichment(r, confidence=0.99, jobtitle="CTO") for r in rid.values()])
    await _send(
        stack, producer, enrichment(rid["supersede"], confidence=0.99, jobtitle="Chief Technology Officer")
    )

    async def pending(label: str) -> dict[str, Any]:
        # The record to supersede: only once the second proposal has retired the first.
        last = "Chief Technology Officer" if label == "supersede" else "CTO"
        [item] = await eventually(
            lambda: review_items(client, review, rid[label]),
            lambda q: len(q) == 1 and q[0]["changes"][0]["proposed"] == last,
            what=f"{label} pending",
        )
        return item

    items = {label: await pending(label) for label in rid if label != "auto"}
    pid = {label: item["proposal_id"] for label, item in items.items()}

    async def post(label: str, action: str, body: dict[str, Any]) -> None:
        response = await client.post(f"{review}/v1/proposals/{pid[label]}/{action}", json=body)
        assert response.status_code == 200, response.text

    await post("approve", "approve", {"comment": "checked"})
    await post("modify", "approve-with-changes", {"changes": {"jobtitle": "Chief Technical Officer"}})
    await post("reject", "reject", {"reason": "not the same person"})
    await db.execute(
        "UPDATE review_queue SET expires_at = now() - interval '1 second' WHERE proposal_id = $1",
        uuid.UUID(pid["expire"]),
    )
    # The CRM moves under three approved proposals: changed, gone, already holding the value.
    await sandbox.upsert_record(db, ObjectType.CONTACT, rid["conflict"], {"jobtitle": "Architect"})
    await db.execute("DELETE FROM sandbox_crm_records WHERE record_id = $1", rid["failed"])
    await sandbox.upsert_record(db, ObjectType.CONTACT, rid["noop"], {"jobtitle": "CTO"})
    for label in ("conflict", "failed", "noop"):
        await post(label, "approve", {"comment": "fine"})

    expected = {
        "auto": ["auto_applied"],
        "approve": ["approved"],
        "modify": ["approved_with_changes"],
        "reject": ["rejected"],
        "expire": ["expired"],
        "supersede": ["superseded"],
        "conflict": ["conflict"],
        "failed": ["failed"],
        "noop": ["noop"],
    }
    histories: dict[str, list[dict[str, Any]]] = {}
    for label, modes in expected.items():
        histories[label] = await eventually(
            functools.partial(_history, client, stack, rid[label]),
            functools.partial(_modes_are, modes),
            timeout=60,
            what=f"{label} in the chain",
        )
    auto = histories["auto"][0]
    assert (auto["decider"], auto["approver"].startswith("policy:"), auto["rule_id"] is not None) == (
        "policy",
        True,
        True,
    )
    assert (auto["previous_value"], auto["new_value"], auto["source_system"], auto["confidence"]) == (
        "",
        "CTO",
        "clay",
        0.99,
    )
    modified = histories["modify"][0]
    assert (modified["proposed_value"], modified["new_value"], modified["approver"]) == (
        "CTO",
        "Chief Technical Officer",
        "alice@example.com",
    )
    rejected = histories["reject"][0]
    assert "not the same person" in rejected["reason"]
    assert (rejected["decider"], rejected["executed_at"], rejected["execution_id"]) == ("human", None, None)
    assert histories["expire"][0]["decider"] == "system"
    assert histories["supersede"][0]["new_value"] == "CTO"  # the first proposal, retired by the second
    assert (
        histories["conflict"][0]["previous_value"],
        "changed since proposed" in histories["conflict"][0]["reason"],
    ) == ("Architect", True)
    assert "is not in the sandbox CRM" in histories["failed"][0]["reason"]

    # Filters over the running service: every rejection by alice; an unknown filter is refused.
    mine = (
        await client.get(
            f"{audit}/v1/audit/entries", params={"mode": "rejected", "approver": "alice@example.com"}
        )
    ).json()
    assert rid["reject"] in {e["record_id"] for e in mine["items"]}
    assert (
        await client.get(f"{audit}/v1/audit/entries", params={"approvr": "alice@example.com"})
    ).status_code == 422

    # A real export, checked by the standalone verifier (changegate not importable), then tampered.
    head = await eventually(
        lambda: client.get(f"{audit}/v1/audit/verify", params={"from": "genesis"}),
        lambda r: r.json()["ok"],
        what="chain intact",
    )
    async with client.stream(
        "GET", f"{audit}/v1/audit/export", params={"until_seq": head.json()["head"]["seq"]}
    ) as response:
        assert response.status_code == 200
        data = b"".join([chunk async for chunk in response.aiter_bytes()])
    export = tmp_path / "audit.jsonl"
    await asyncio.to_thread(export.write_bytes, data)
    result = run_audit_verifier(
        export,
        f"--public-key={audit_public_key()}",  # a key may start with "-": one argument, with "="
        "--head",
        f"{head.json()['head']['seq']}:{head.json()['head']['hash']}",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = [json.loads(line) for line in data.decode().splitlines()]
    rows = [line for line in lines if "checkpoint" not in line]
    assert {r["mode"] for r in rows} >= {m for modes in expected.values() for m in modes}
    rows[0]["approver"] = "mallory@example.com"
    await asyncio.to_thread(export.write_text, "".join(json.dumps(r) + "\n" for r in rows))
    result = run_audit_verifier(export)
    assert result.returncode == 1
    assert f"row {rows[0]['seq']}: content does not match its hash (altered)" in result.stdout


def _modes_are(modes: list[str], history: list[dict[str, Any]]) -> bool:
    return [e["mode"] for e in history] == modes


async def test_a_revert_goes_through_review_and_restores_the_value_with_a_link(
    stack: DevStack, db: asyncpg.Pool, client: httpx.AsyncClient, producer: AIOKafkaProducer
) -> None:
    review = f"http://127.0.0.1:{stack.ports['review-api']}"
    audit = f"http://127.0.0.1:{stack.ports['audit']}"
    record = _rid("revert")
    await sandbox.upsert_record(
        db, ObjectType.CONTACT, record, {"email": "r@x.example", "jobtitle": "Engineer"}
    )
    await _send(stack, producer, created(record, email="r@x.example", jobtitle="Engineer"))
    await _send(stack, producer, enrichment(record, confidence=0.95, jobtitle="Intern"))
    [item] = await eventually(
        lambda: review_items(client, review, record), lambda q: len(q) == 1, what="queued"
    )
    approved = await client.post(
        f"{review}/v1/proposals/{item['proposal_id']}/approve", json={"comment": "ok"}
    )
    assert approved.status_code == 200, approved.text
    [entry] = await eventually(
        lambda: _history(client, stack, record), lambda h: len(h) == 1, what="the overwrite audited"
    )
    assert (entry["previous_value"], entry["new_value"]) == ("Engineer", "Intern")

    # A viewer may not ask; a reviewer's revert is a new proposal, queued for another human.
    eve = {"Authorization": f"Bearer {stack.issued['eve@example.com']}"}
    assert (
        await client.post(f"{audit}/v1/audit/entries/{entry['seq']}/revert", headers=eve)
    ).status_code == 403
    asked = await client.post(
        f"{audit}/v1/audit/entries/{entry['seq']}/revert", json={"comment": "wrong title"}
    )
    assert asked.status_code == 202, asked.text
    proposal_id = asked.json()["proposal_id"]
    again = await client.post(f"{audit}/v1/audit/entries/{entry['seq']}/revert")
    assert (again.status_code, again.json()["proposal_id"], again.json()["queued"]) == (
        202,
        proposal_id,
        False,
    )
    [queued] = await eventually(
        lambda: review_items(client, review, record), lambda q: len(q) == 1, what="the revert queued"
    )
    assert queued["proposal_id"] == proposal_id
    assert queued["changes"] == [{"field": "jobtitle", "previous": "Intern", "proposed": "Engineer"}]
    assert "revert of audit entry" in queued["rationale"]
    own = await client.post(f"{review}/v1/proposals/{proposal_id}/approve", json={"comment": "mine"})
    assert own.status_code == 403, own.text  # who asked for the revert may not approve it
    bob = {"Authorization": f"Bearer {stack.issued['bob@example.com']}"}
    approved = await client.post(
        f"{review}/v1/proposals/{proposal_id}/approve", json={"comment": "agreed"}, headers=bob
    )
    assert approved.status_code == 200, approved.text

    history = await eventually(
        lambda: _history(client, stack, record), lambda h: len(h) == 2, what="the revert audited"
    )
    undo = history[1]
    assert (undo["mode"], undo["approver"], undo["reverts_seq"]) == (
        "approved",
        "bob@example.com",
        entry["seq"],
    )
    assert (undo["previous_value"], undo["new_value"]) == ("Intern", "Engineer")
    record_now = await sandbox.get_record(db, ObjectType.CONTACT, record)
    assert record_now is not None
    assert record_now["jobtitle"] == "Engineer"

    assert (await client.post(f"{audit}/v1/audit/entries/999999999/revert")).status_code == 404
